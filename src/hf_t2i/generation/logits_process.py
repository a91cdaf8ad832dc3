"""Sampling processors: argument checks, the transformers logits warpers, and classifier-free guidance."""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


GUIDANCE_SCHEDULES = ("constant", "linear")


def validate_sampling_args(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    guidance_scale: float = 1.0,
    guidance_schedule: str = "constant",
) -> None:
    """Raise a `ValueError` naming the argument, its value and the accepted range."""
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"`temperature` must be a number > 0, got {temperature!r}. Use `do_sample=False` for greedy.")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"`top_k` must be a positive integer or None, got {top_k!r}.")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"`top_p` must be in (0, 1] or None, got {top_p!r}.")
    if min_p is not None and not (isinstance(min_p, (int, float)) and 0 <= min_p <= 1):
        raise ValueError(f"`min_p` must be in [0, 1] or None, got {min_p!r}.")
    if not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
        raise ValueError(f"`guidance_scale` must be a number >= 0, got {guidance_scale!r}.")
    if guidance_schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"`guidance_schedule` must be one of {GUIDANCE_SCHEDULES}, got {guidance_schedule!r}.")


def build_logits_processor(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> LogitsProcessorList:
    """The transformers warpers for the given settings, in `generate()`'s order (temperature, top-k, top-p, min-p),
    so the package loop and `model.generate()` filter logits identically."""
    validate_sampling_args(temperature, top_k, top_p, min_p)
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(float(temperature)))
    if top_k is not None:
        processors.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        processors.append(TopPLogitsWarper(float(top_p)))
    if min_p is not None and min_p > 0:
        processors.append(MinPLogitsWarper(float(min_p)))
    return processors


def guidance_scale_at(guidance_scale: float, step: int, num_steps: int, schedule: str = "constant") -> float:
    """Scale at `step` of `num_steps`: constant, or rising linearly from 1 to `guidance_scale` (MUSE / Fluid)."""
    if schedule == "constant" or num_steps <= 1:
        return guidance_scale
    return 1.0 + (guidance_scale - 1.0) * step / (num_steps - 1)


def apply_guidance(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on a doubled batch: rows `[:B]` are conditional, `[B:]` unconditional.

    Returns `uncond + scale * (cond - uncond)`, shaped (B, ...). This is also min-dalle's
    `uncond * (1 - scale) + cond * scale`.
    """
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)
