"""The one KV-cached autoregressive sampling loop shared by the AR models (DALL-E, Parti, raster Fluid).

The model-specific part is a `step` function that owns the cache: called with `None` it runs the prefix (prefill)
and returns the logits for the first new token; called with the last drawn tokens it runs one position.
Classifier-free guidance runs as ONE doubled batch: `step` returns `2B` rows (conditional first), the loop combines
them and feeds the same drawn token to both halves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.generation.logits_process import LogitsProcessorList

from .logits_process import apply_guidance, guidance_scale_at
from .sampling import sample_tokens


StepFn = Callable[[torch.Tensor | None], torch.Tensor]


@torch.no_grad()
def autoregressive_sample(
    step: StepFn,
    batch_size: int,
    num_tokens: int,
    *,
    logits_processor: LogitsProcessorList | None = None,
    guidance_scale: float = 1.0,
    guidance_schedule: str = "constant",
    do_sample: bool = True,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    progress_bar=None,
) -> torch.Tensor:
    """Draw `num_tokens` tokens per row.

    Args:
        step: `step(None) -> logits` for the prefix, then `step(tokens) -> logits` with `tokens` (B', 1);
            logits are (B', V) with B' = 2B under guidance, else B.
        batch_size: B.
        num_tokens: tokens to draw.
        logits_processor: transformers warpers applied after guidance (see `build_logits_processor`).
        guidance_scale: classifier-free guidance scale; `1.0` disables guidance (and the doubled batch).
        guidance_schedule: "constant" or "linear" (from 1 up to `guidance_scale`).
        do_sample: draw from the distribution; `False` takes the argmax.
        generator: the only source of randomness.
        callback: `callback(i, tokens_so_far)` after each token.
        progress_bar: an object with `update()` (e.g. tqdm), advanced once per token.

    Returns:
        (B, num_tokens) int64 token ids in the logits' vocabulary.
    """
    guided = guidance_scale != 1.0
    tokens = None
    previous = None
    for i in range(num_tokens):
        logits = step(previous)
        if guided:
            logits = apply_guidance(logits, guidance_scale_at(guidance_scale, i, num_tokens, guidance_schedule))
        if tokens is None:
            tokens = torch.zeros(batch_size, num_tokens, dtype=torch.long, device=logits.device)
        if logits_processor:
            logits = logits_processor(tokens[:, :i], logits)
        next_tokens = sample_tokens(logits, generator, do_sample)  # (B,)
        tokens[:, i] = next_tokens
        previous = (torch.cat([next_tokens, next_tokens]) if guided else next_tokens)[:, None]  # (B', 1)
        if callback is not None:
            callback(i, tokens[:, : i + 1])
        if progress_bar is not None:
            progress_bar.update()
    return tokens
