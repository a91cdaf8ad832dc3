"""Sampling: processors, the KV-cached autoregressive loop, token draws through a `torch.Generator`."""

from .autoregressive import autoregressive_sample
from .logits_process import (
    GUIDANCE_SCHEDULES,
    apply_guidance,
    build_logits_processor,
    guidance_scale_at,
    validate_sampling_args,
)
from .sampling import rand_like_on, sample_tokens


__all__ = [
    "GUIDANCE_SCHEDULES",
    "apply_guidance",
    "autoregressive_sample",
    "build_logits_processor",
    "guidance_scale_at",
    "rand_like_on",
    "sample_tokens",
    "validate_sampling_args",
]
