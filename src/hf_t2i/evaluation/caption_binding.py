"""Does a continuous-token Fluid prior's diffusion head use the caption? A probe that answers long before sample grids
or compositional accuracy move.

On single-object `shapes` validation images, the tokens that hold the shape (far from the white background's token)
are masked and the rest kept; the backbone reads the caption and the known tokens, and the diffusion head predicts
the clean masked tokens from noisy ones at several diffusion steps. The x0 error of that prediction is measured with
the true captions, with each image given another image's caption, and with the empty caption. A head that binds the
caption has a clearly lower error with the true caption at high noise, where the caption is the only source of the
shape's colour; equal errors mean the caption is ignored.

    python -m hf_t2i.evaluation.caption_binding runs/fluid/final [--num-images 24]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch

from .context_probe import check_probe_model, head_x0_error


DEFAULT_TIMESTEPS = (300, 500, 700, 850)


@torch.no_grad()
def caption_binding_probe(
    pipe,
    num_images: int = 24,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    num_noise_draws: int = 4,
    content_threshold: float = 0.3,
    data_seed: int = 0,
) -> dict[str, float | dict[int, float]]:
    """x0 errors of the masked content tokens per caption variant ("true", "swapped", "empty") and diffusion step.

    Args:
        pipe: a `FluidPipeline` with a text-conditional, continuous-token, random-order model.
        num_images: single-object validation images probed.
        timesteps: diffusion steps at which the head's x0 prediction is scored.
        num_noise_draws: noise draws averaged per step.
        content_threshold: a token is content (masked) when its distance to the white token exceeds this fraction of
            the image's largest distance.
        data_seed: seed of the shapes validation split.

    Returns:
        {"true" | "swapped" | "empty": {timestep: mean squared error of x0 over the masked tokens' values}}, and for
        scale `"zero_predictor"`: the error of predicting 0.
    """
    from ..data import build_shapes_dataset
    from ..image_processing import T2IImageProcessor

    model, processor = pipe.model.eval(), pipe.processor
    check_probe_model(model, "The caption-binding probe")
    config = model.config
    if num_images < 2:
        raise ValueError(f"`num_images` must be >= 2 (captions are swapped between images), got {num_images}.")
    rows = build_shapes_dataset(num_images * 20, "validation", config.image_size, seed=data_seed)
    rows = rows.filter(lambda task: task == "single_object", input_columns="task").select(range(num_images))
    image_processor = T2IImageProcessor(image_size=config.image_size)
    pixels = image_processor(list(rows["image"]), return_tensors="pt")["pixel_values"].to(model.device)
    tokens = model.encode_images(pixels)  # (B, N, D)
    white = model.encode_images(torch.ones_like(pixels[:1]))[0]  # (N, D): a blank canvas
    distance = (tokens - white).norm(dim=-1)  # (B, N)
    mask = distance > content_threshold * distance.max(dim=1, keepdim=True).values
    captions = list(rows["text"])
    variants = {"true": captions, "swapped": captions[1:] + captions[:1], "empty": [""] * len(captions)}
    targets = tokens[mask]  # (M, D): the masked content tokens
    noises = [
        torch.randn(targets.shape, generator=torch.Generator().manual_seed(draw)).to(targets)
        for draw in range(num_noise_draws)
    ]
    report: dict[str, float | dict[int, float]] = {"zero_predictor": targets.pow(2).mean().item()}
    for name, texts in variants.items():
        text = processor(text=texts, return_tensors="pt", padding="max_length", truncation=True)
        text = {k: v.to(model.device) for k, v in text.items() if k in ("input_ids", "attention_mask")}
        hidden = model.model(**text, image_tokens=tokens, mask=mask, return_dict=True).last_hidden_state
        condition = hidden[mask]  # (M, C)
        report[name] = {
            t: sum(head_x0_error(model, targets, condition, t, noise) for noise in noises) / num_noise_draws
            for t in timesteps
        }
    return report


def main(argv: list[str] | None = None) -> int:
    from ..checkpoints import resolve_checkpoint
    from ..pipelines import T2IPipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a Fluid pipeline folder or shipped checkpoint name")
    parser.add_argument("--num-images", type=int, default=24)
    args = parser.parse_args(argv)
    pipe = T2IPipeline.from_pretrained(resolve_checkpoint(args.model), dtype=torch.float32)
    print(json.dumps(caption_binding_probe(pipe, num_images=args.num_images), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
