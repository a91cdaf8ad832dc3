"""In-domain CLIP score and retrieval recall with a small contrastive image-text scorer trained on our own data.

No CLIP weights exist offline, so the scorer is a transformers `CLIPModel` with a small config trained by the
`clip_scorer` recipe (`hf_t2i.training.recipes.clip`) and saved with its `T2IProcessor` in one folder:

    hf-t2i train clip_scorer --dataset shapes --output-dir runs/clip --max-steps 2000
    scorer, processor = load_scorer("runs/clip/final")

Any model with `get_text_features` / `get_image_features` and a processor callable as
`processor(text=..., return_tensors="pt", padding=True, truncation=True)` / `processor(images=..., return_tensors=
"pt")` works (a transformers `CLIPModel` + `CLIPProcessor` too), the same contract as
`hf_t2i.pipelines.reranking.clip_scores`, which DALL-E reranking uses.

Conventions:
- `clip_score`: 100 x the cosine similarity of each image with its caption, averaged over pairs and clipped at 0
  (torchmetrics' `CLIPScore`; Hessel et al. 2021 use 2.5 x cosine instead). Only comparable between runs scored by
  the same scorer.
- `retrieval_recall`: text -> image and image -> text recall@k over the whole set. Captions repeat in `shapes`
  ("a red circle"), so by default every item with the identical caption counts as a correct match.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _pooled(output) -> torch.Tensor:
    """transformers >= 5 returns an output whose `pooler_output` is the projected feature; older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_scorer(path: str | os.PathLike, device: str | torch.device | None = None, argument: str = "scorer_path"):
    """Load a scorer folder written by the `clip_scorer` recipe: `(CLIPModel, T2IProcessor)`, model in eval mode.

    Raises `ValueError` naming `argument` (the caller's name for `path`) when the folder is missing or holds no CLIP
    model.
    """
    from transformers import CLIPModel

    from ..processing_utils import T2IProcessor

    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(
            f"`{argument}` {path!r} is not a scorer folder (no config.json). Train one with "
            "`hf-t2i train clip_scorer --output-dir DIR` and pass DIR/final."
        )
    scorer = CLIPModel.from_pretrained(path).eval()
    if device is not None:
        scorer = scorer.to(device)
    return scorer, T2IProcessor.from_pretrained(path)


def _to_pil(images) -> list:
    """PIL images, (H, W, 3) arrays (uint8, or float in [0, 1]) or an (N, 3, H, W) tensor in [0, 1] -> PIL images
    (what every processor understands)."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"an image tensor must be (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}.")
        images = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
    pil = []
    for image in images:
        if not isinstance(image, Image.Image):
            array = np.asarray(image)
            if array.dtype != np.uint8:
                array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
            image = Image.fromarray(array)
        pil.append(image.convert("RGB"))
    return pil


def _caption_ids(texts: Sequence[str]) -> torch.Tensor:
    """(N,) id of each caption string (equal strings share an id)."""
    ids = {text: i for i, text in enumerate(dict.fromkeys(texts))}
    return torch.tensor([ids[text] for text in texts])


@torch.no_grad()
def encode_texts(scorer, processor, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """(N, D) L2-normalised text embeddings (float32, on CPU). Captions longer than the context are truncated."""
    device = next(scorer.parameters()).device
    features = []
    for start in range(0, len(texts), batch_size):
        inputs = processor(
            text=list(texts[start : start + batch_size]), return_tensors="pt", padding=True, truncation=True
        )
        output = scorer.get_text_features(
            input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)
        )
        features.append(F.normalize(_pooled(output).float(), dim=-1).cpu())
    return torch.cat(features)


@torch.no_grad()
def encode_images(scorer, processor, images, batch_size: int = 64) -> torch.Tensor:
    """(N, D) L2-normalised image embeddings (float32, on CPU) of PIL images / arrays / (N, 3, H, W) in [0, 1]."""
    device = next(scorer.parameters()).device
    images = _to_pil(images)
    features = []
    for start in range(0, len(images), batch_size):
        pixel_values = processor(images=images[start : start + batch_size], return_tensors="pt")["pixel_values"]
        output = scorer.get_image_features(pixel_values=pixel_values.to(device, scorer.dtype))
        features.append(F.normalize(_pooled(output).float(), dim=-1).cpu())
    return torch.cat(features)


def _check_pairs(texts, images) -> int:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError("`prompts` / `texts` must be a non-empty list of strings, one per image.")
    count = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
    if count != len(texts):
        raise ValueError(f"got {len(texts)} captions but {count} images; pass one caption per image.")
    return count


def _encode_pairs(scorer, processor, texts, images, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(text (N, D), image (N, D)) unit-norm embeddings of N caption-image pairs, checked to pair up first."""
    _check_pairs(texts, images)
    return encode_texts(scorer, processor, texts, batch_size), encode_images(scorer, processor, images, batch_size)


def pair_cosines(scorer, processor, prompts: Sequence[str], images, batch_size: int = 64) -> torch.Tensor:
    """(N,) cosine similarity of each image with its own prompt."""
    text, image = _encode_pairs(scorer, processor, prompts, images, batch_size)
    return (text * image).sum(-1)


def clip_score(scorer, processor, prompts: Sequence[str], images, batch_size: int = 64) -> float:
    """Mean CLIP score of image-caption pairs: 100 x mean cosine, clipped at 0 (torchmetrics' convention).

    Args:
        scorer: e.g. the `CLIPModel` from `load_scorer`.
        processor: its processor.
        prompts: one caption per image.
        images: PIL images, arrays or an (N, 3, H, W) tensor in [0, 1].
        batch_size: pairs per forward pass.
    """
    return max(0.0, 100 * pair_cosines(scorer, processor, prompts, images, batch_size).mean().item())


def retrieval_recall(
    scorer,
    processor,
    texts: Sequence[str],
    images,
    k: Sequence[int] = (1, 5),
    batch_size: int = 64,
    identical_captions_match: bool = True,
) -> dict[str, float]:
    """Recall@k of retrieving each pair's image from its caption among all N images, and the reverse.

    Args:
        texts: one caption per image (pair i is `texts[i]`, `images[i]`).
        images: PIL images, arrays or an (N, 3, H, W) tensor in [0, 1].
        k: cut-offs.
        identical_captions_match: count an image as correct for a caption when its own caption is the same string
            (captions repeat in `shapes`); False counts only the paired index.

    Returns:
        {"text_to_image_recall@k": ..., "image_to_text_recall@k": ... for each k, "num_pairs": N}.
    """
    if not k or any(not isinstance(c, int) or c < 1 for c in k):
        raise ValueError(f"`k` must be a non-empty sequence of positive integers, got {k!r}.")
    text, image = _encode_pairs(scorer, processor, texts, images, batch_size)
    return _retrieval(text, image, texts, k, identical_captions_match)


def _retrieval(text, image, texts, k=(1, 5), identical_captions_match: bool = True) -> dict[str, float]:
    """`retrieval_recall` from the unit-norm embeddings of N pairs: text (N, D) of `texts`, image (N, D)."""
    count = len(texts)
    similarity = text @ image.T  # (N texts, N images)
    if identical_captions_match:
        caption_id = _caption_ids(texts)
        correct = caption_id[:, None] == caption_id[None, :]  # (N texts, N images)
    else:
        correct = torch.eye(count, dtype=torch.bool)
    results: dict[str, float] = {}
    for cutoff in k:
        top = min(cutoff, count)
        images_for_text = similarity.topk(top, dim=1).indices  # (N, top) image ids per text
        texts_for_image = similarity.topk(top, dim=0).indices.T  # (N, top) text ids per image
        hit_t2i = correct.gather(1, images_for_text).any(1)
        hit_i2t = correct.T.gather(1, texts_for_image).any(1)
        results[f"text_to_image_recall@{cutoff}"] = hit_t2i.float().mean().item()
        results[f"image_to_text_recall@{cutoff}"] = hit_i2t.float().mean().item()
    results["num_pairs"] = count
    return results


def matched_vs_shuffled(
    scorer, processor, texts: Sequence[str], images, seed: int = 0, batch_size: int = 64
) -> dict[str, float]:
    """Does the scorer prefer each image's own caption to a random caption of another pair?

    Each image is compared with its caption and with one caption drawn (seeded) among the pairs whose caption differs.

    Returns:
        {"matched_cosine", "shuffled_cosine" (means), "matched_above_shuffled" (fraction of images whose own caption
        scores higher), "num_pairs"}.
    """
    _check_pairs(texts, images)
    if len(set(texts)) < 2:
        raise ValueError("matched_vs_shuffled needs at least two different captions.")
    text, image = _encode_pairs(scorer, processor, texts, images, batch_size)
    return _shuffled(text, image, texts, seed)


def _shuffled(text, image, texts, seed: int = 0) -> dict[str, float]:
    """`matched_vs_shuffled` from unit-norm embeddings of the pairs."""
    caption_id = _caption_ids(texts)
    differs = caption_id[:, None] != caption_id[None, :]  # (N, N)
    rows = differs.any(1).nonzero().squeeze(1)  # images that have some other caption to compare with
    generator = torch.Generator().manual_seed(seed)
    other = torch.multinomial(differs[rows].float(), 1, generator=generator).squeeze(1)  # (R,)
    matched = (text[rows] * image[rows]).sum(-1)
    shuffled = (text[other] * image[rows]).sum(-1)
    return {
        "matched_cosine": matched.mean().item(),
        "shuffled_cosine": shuffled.mean().item(),
        "matched_above_shuffled": (matched > shuffled).float().mean().item(),
        "num_pairs": len(texts),
    }


def matched_vs_contradicting(
    scorer,
    processor,
    texts: Sequence[str],
    images,
    twin_texts: Sequence[str],
    twin_images,
    tasks: Sequence[str] | None = None,
    batch_size: int = 64,
) -> dict:
    """Does the scorer tell each pair from its contradicting twin (`hf_t2i.data.build_contradicting_twins`: the
    relation flipped, the colours swapped, another count...)?

    Such twins use the same words, so a contrastive model trained on in-batch negatives alone, which can read
    captions as bags of words, may score them at chance; best-of-N reranking with it cannot then pick the picture
    with the objects the right way round.

    Returns:
        {"caption_above_contradicting": fraction of images that score their own caption above the twin's caption,
        "image_above_contradicting": fraction of captions that score their own image above the twin's image,
        "num_pairs"}; with `tasks` (one name per pair, e.g. the shapes `task` column) also both fractions per task,
        as "caption_above_contradicting_per_task" / "image_above_contradicting_per_task" {task: fraction}.
    """
    count = _check_pairs(texts, images)
    if _check_pairs(twin_texts, twin_images) != count:
        raise ValueError(f"got {len(twin_texts)} twins for {count} pairs; pass one twin per pair.")
    if tasks is not None and len(tasks) != count:
        raise ValueError(f"got {len(tasks)} tasks for {count} pairs; pass one task name per pair.")
    text, image = _encode_pairs(scorer, processor, texts, images, batch_size)
    twin_text, twin_image = _encode_pairs(scorer, processor, twin_texts, twin_images, batch_size)
    return _contradicting(text, image, twin_text, twin_image, tasks)


def _contradicting(text, image, twin_text, twin_image, tasks=None) -> dict:
    """`matched_vs_contradicting` from unit-norm embeddings of the pairs and of their twins."""
    matched = (text * image).sum(-1)
    wins = {
        "caption_above_contradicting": matched > (twin_text * image).sum(-1),
        "image_above_contradicting": matched > (text * twin_image).sum(-1),
    }
    results: dict = {name: won.float().mean().item() for name, won in wins.items()}
    results["num_pairs"] = len(matched)
    if tasks is not None:
        tasks = list(tasks)
        for name, won in wins.items():
            results[f"{name}_per_task"] = {
                task: won[[t == task for t in tasks]].float().mean().item() for task in dict.fromkeys(tasks)
            }
    return results


def scorer_metrics(scorer, processor, texts: Sequence[str], images, twins=None, tasks=None) -> dict:
    """What `hf-t2i eval --scorer` and the `clip_scorer` recipe's evaluation report: `retrieval_recall`,
    `matched_vs_shuffled` and, given `twins` (`(twin_texts, twin_images)`, e.g. from
    `hf_t2i.data.build_contradicting_twins`), `matched_vs_contradicting` (per task too with `tasks`)."""
    texts, images = list(texts), list(images)
    _check_pairs(texts, images)
    if len(set(texts)) < 2:
        raise ValueError("scorer_metrics needs at least two different captions (for matched_vs_shuffled).")
    if twins is not None:
        twin_texts, twin_images = list(twins[0]), list(twins[1])
        if _check_pairs(twin_texts, twin_images) != len(texts):
            raise ValueError(f"got {len(twin_texts)} twins for {len(texts)} pairs; pass one twin per pair.")
    if tasks is not None and len(tasks) != len(texts):
        raise ValueError(f"got {len(tasks)} tasks for {len(texts)} pairs; pass one task name per pair.")
    # Each set of pairs is encoded once, and every metric reads the same embeddings.
    text, image = _encode_pairs(scorer, processor, texts, images)
    results = _retrieval(text, image, texts)
    results.update(_shuffled(text, image, texts))
    if twins is not None:
        twin_text, twin_image = _encode_pairs(scorer, processor, twin_texts, twin_images)
        results.update(_contradicting(text, image, twin_text, twin_image, tasks))
    return results


__all__ = [
    "clip_score",
    "encode_images",
    "encode_texts",
    "load_scorer",
    "matched_vs_contradicting",
    "matched_vs_shuffled",
    "pair_cosines",
    "retrieval_recall",
    "scorer_metrics",
]
