"""How good an image tokenizer is on held-out images (or, with `split="validation"`, shapes' in-distribution ones):
reconstruction error; on `shapes`, the compositional accuracy of its reconstructions; and, when asked, the FID of its
reconstructions against the originals -- the ceilings that any prior over its codes or latents can reach on those
metrics (the FID one is the floor of a prior's FID, up to the bias of small sets).

Discrete tokenizers (DalleDVAE, ViTVQGAN, any model with `encode -> ids` / `decode(ids) -> pixels`) reconstruct
through hard codes and also report codebook usage; a continuous diffusers `AutoencoderKL` (Fluid's and Transfusion's)
reconstructs through the mode of its latent distribution, as their priors' latents are decoded."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..models.image_tokenizers import image_tokenizer_size, is_continuous_tokenizer, load_image_tokenizer


@torch.no_grad()
def reconstruction_metrics(tokenizer, pixel_values, batch_size: int = 64) -> tuple[dict[str, float], torch.Tensor]:
    """Encode -> hard codes -> decode, as a prior's samples will be decoded.

    Args:
        tokenizer: a model with `encode(pixels) -> ids`, `decode(ids) -> pixels` and `config.vocab_size`, or a
            diffusers `AutoencoderKL`.
        pixel_values: (N, 3, H, W) in [-1, 1], or an iterable of such batches.

    Returns:
        (`{"mse", "psnr", "perplexity", "codebook_usage"}`, the (N, 3, H, W) reconstructions in [-1, 1]). `mse` is over
        pixels in [0, 1]; `perplexity` is exp(entropy of code usage); `codebook_usage` the fraction of codes used (both
        only for discrete tokenizers: an `AutoencoderKL` has no codebook).
    """
    if isinstance(pixel_values, torch.Tensor):
        pixel_values = pixel_values.split(batch_size)
    device = next(tokenizer.parameters()).device
    dtype = next(tokenizer.parameters()).dtype
    continuous = is_continuous_tokenizer(tokenizer)
    squared, pixels_seen = 0.0, 0
    counts = None if continuous else torch.zeros(tokenizer.config.vocab_size, dtype=torch.float64)
    reconstructions = []
    for pixels in pixel_values:
        pixels = pixels.to(device=device, dtype=dtype)
        if continuous:
            latents = tokenizer.encode(pixels).latent_dist.mode()  # (B, C_latent, h, w)
            reconstruction = tokenizer.decode(latents).sample
        else:
            ids = tokenizer.encode(pixels)
            reconstruction = tokenizer.decode(ids)
            counts += torch.bincount(ids.flatten().cpu(), minlength=tokenizer.config.vocab_size).double()
        reconstruction = reconstruction.float().clamp(-1, 1)
        squared += (((reconstruction - pixels.float()) / 2) ** 2).sum().item()
        pixels_seen += pixels.numel()
        reconstructions.append(reconstruction.cpu())
    if not pixels_seen:
        raise ValueError("`pixel_values` is empty: pass at least one image.")
    mse = squared / pixels_seen
    metrics = {"mse": mse, "psnr": 10 * math.log10(1.0 / max(mse, 1e-12))}
    if counts is not None:
        probs = counts[counts > 0] / counts.sum()
        metrics["perplexity"] = math.exp(-(probs * probs.log()).sum().item())
        metrics["codebook_usage"] = (counts > 0).double().mean().item()
    return metrics, torch.cat(reconstructions)


def evaluate_image_tokenizer(
    tokenizer,
    dataset_name: str = "shapes",
    num_images: int = 256,
    data_dir: str | None = None,
    data_seed: int = 0,
    split: str = "test",
    fid: bool = False,
    fid_cache_dir: str | None = None,
    fid_feature_extractor: torch.nn.Module | None = None,
) -> dict:
    """Reconstruction metrics of `tokenizer` on the first `num_images` images of `dataset_name`'s `split`
    (default "test": for shapes the held-out attribute combinations), plus, on shapes, `compositional_ceiling`:
    the compositional accuracy of the reconstructions scored against the captions' specs.

    Args:
        tokenizer: an image tokenizer model, or the folder of a trained one (see `load_image_tokenizer`).
        split: "test" or "validation" (shapes only: in-distribution images); see `runner.load_eval_split`.
        fid: also report `fid_reconstructions`, the FID of the reconstructions against the same real images (the
            reference statistics are shared with `hf-t2i eval --metrics fid` of a pipeline on that split).
        fid_cache_dir: where the reference statistics are cached (default `$HF_T2I_CACHE/fid`).
        fid_feature_extractor: FID feature network (default the standard Inception-v3).
    """
    from ..image_processing import T2IImageProcessor
    from .compositional import compositional_accuracy
    from .runner import _dataset_tag, _fid, _resized, check_eval_split, load_eval_split

    check_eval_split(split, dataset_name)
    if fid and num_images < 2:
        raise ValueError(f"`num_images` must be >= 2 for FID (got {num_images}); or pass `fid=False`.")
    if isinstance(tokenizer, str):
        tokenizer = load_image_tokenizer(tokenizer)
    image_size = image_tokenizer_size(tokenizer)
    rows = load_eval_split(dataset_name, num_images, image_size, data_dir=data_dir, data_seed=data_seed, split=split)
    pixels = T2IImageProcessor(image_size=image_size)(list(rows["image"]), return_tensors="pt")["pixel_values"]
    metrics, reconstructions = reconstruction_metrics(tokenizer, pixels)
    metrics["num_images"] = len(rows)
    images = list(((reconstructions + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    if fid:
        metrics["fid_reconstructions"], _ = _fid(
            _resized(list(rows["image"]), image_size),
            [Image.fromarray(image) for image in images],
            _dataset_tag(dataset_name, data_dir),
            split,
            data_seed,
            16,
            fid_cache_dir,
            fid_feature_extractor,
            "cpu",
            False,
        )
    if dataset_name == "shapes":
        ceiling = compositional_accuracy(images, rows["spec"])
        ceiling.pop("correct", None)
        metrics["compositional_ceiling"] = ceiling
        originals = [np.asarray(image.convert("RGB")) for image in rows["image"]]
        metrics["compositional_originals"] = compositional_accuracy(originals, rows["spec"])["overall"]
    return metrics
