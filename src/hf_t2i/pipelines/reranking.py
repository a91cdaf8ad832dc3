"""Reranking of candidate images by a contrastive image-text scorer (CLIP-style), as DALL-E does (section 2.6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..image_processing import T2IImageProcessor


def _features(output) -> torch.Tensor:
    """transformers >= 5 returns a model output whose `pooler_output` is the projected feature; older versions a
    tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def clip_scores(scorer, scorer_processor, prompts: list[str], pixel_values: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each image with its prompt.

    Args:
        scorer: a model with `get_text_features(input_ids, attention_mask)` and `get_image_features(pixel_values)`.
        scorer_processor: callable as `scorer_processor(text=..., images=..., return_tensors="pt")`.
        prompts: one prompt per image, or one prompt per group of `len(pixel_values) // len(prompts)` images.
        pixel_values: (N, 3, H, W) generated images in [-1, 1].

    Returns:
        (N,) float32 scores.
    """
    per_prompt = pixel_values.shape[0] // len(prompts)
    images = T2IImageProcessor.postprocess(pixel_values, "pil")
    device = next(scorer.parameters()).device
    text_inputs = scorer_processor(text=prompts, return_tensors="pt", padding=True, truncation=True)
    image_inputs = scorer_processor(images=images, return_tensors="pt")
    text = _features(
        scorer.get_text_features(
            input_ids=text_inputs["input_ids"].to(device), attention_mask=text_inputs["attention_mask"].to(device)
        )
    )
    image = _features(scorer.get_image_features(pixel_values=image_inputs["pixel_values"].to(device, scorer.dtype)))
    text = F.normalize(text.float(), dim=-1).repeat_interleave(per_prompt, dim=0)  # (N, D)
    image = F.normalize(image.float(), dim=-1)  # (N, D)
    return (text * image).sum(-1)


def rerank(
    scorer, scorer_processor, prompts: list[str], pixel_values: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the `keep` best of each prompt's candidates (grouped contiguously), best first.

    Returns:
        the (len(prompts) * keep,) indices of the kept candidates (to select their pixels, or their tokens) and their
        scores.
    """
    scores = clip_scores(scorer, scorer_processor, prompts, pixel_values)
    per_prompt = pixel_values.shape[0] // len(prompts)
    order = scores.view(len(prompts), per_prompt).argsort(dim=1, descending=True)[:, :keep]  # (P, keep)
    index = (order + torch.arange(len(prompts), device=order.device)[:, None] * per_prompt).flatten()
    return index, scores[index]
