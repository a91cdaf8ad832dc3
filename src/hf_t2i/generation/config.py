"""`SamplingConfig`: the settings of one image generation in one object, validated once, instead of keyword bundles
passed through the pipeline, the model and the loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..configuration_utils import is_finite_number
from .guidance import ClassifierFreeGuidance
from .sampling import sample_tokens


#: the token-sampling settings of a call, which a checkpoint's generation_config may also hold (the rest of
#: `SamplingConfig` is guidance)
SAMPLING_SETTINGS = ("temperature", "top_k", "top_p", "min_p", "do_sample")


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn (transformers semantics) and how guidance is applied.

    Args:
        temperature: softmax temperature (> 0); `do_sample=False` for greedy.
        top_k: keep the `top_k` most likely tokens (a positive int) or all (None).
        top_p: nucleus filtering in (0, 1], or None.
        min_p: drop tokens below `min_p` times the top probability, in [0, 1], or None.
        do_sample: draw from the filtered distribution (True) or take the argmax.
        guidance_scale: classifier-free guidance scale; 1.0 turns it off.
        guidance_schedule: "constant" or "linear" (see [`ClassifierFreeGuidance`]).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    do_sample: bool = True
    guidance_scale: float = 1.0
    guidance_schedule: str = "constant"

    def __post_init__(self):
        if not is_finite_number(self.temperature) or self.temperature <= 0:
            raise ValueError(
                f"`temperature` must be a finite number > 0, got {self.temperature!r}. Use `do_sample=False` for greedy."
            )
        if self.top_k is not None and (
            not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1
        ):
            raise ValueError(f"`top_k` must be a positive integer or None, got {self.top_k!r}.")
        if self.top_p is not None and not (is_finite_number(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"`top_p` must be in (0, 1] or None, got {self.top_p!r}.")
        if self.min_p is not None and not (is_finite_number(self.min_p) and 0 <= self.min_p <= 1):
            raise ValueError(f"`min_p` must be in [0, 1] or None, got {self.min_p!r}.")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"`do_sample` must be True or False, got {self.do_sample!r}.")
        ClassifierFreeGuidance(self.guidance_scale, self.guidance_schedule)  # raises on bad guidance settings

    @property
    def guidance(self) -> ClassifierFreeGuidance:
        return ClassifierFreeGuidance(self.guidance_scale, self.guidance_schedule)

    @property
    def filters_tokens(self) -> bool:
        """Whether any of temperature / top-k / top-p / min-p changes the logits."""
        return self.temperature != 1.0 or any(v is not None for v in (self.top_k, self.top_p, self.min_p))

    def logits_processor(self) -> LogitsProcessorList:
        """The transformers warpers for these settings, in `generate()`'s order (temperature, top-k, top-p, min-p), so
        the package loops and `model.generate()` filter logits identically."""
        processors = LogitsProcessorList()
        if self.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(float(self.temperature)))
        if self.top_k is not None:
            processors.append(TopKLogitsWarper(self.top_k))
        if self.top_p is not None and self.top_p < 1.0:
            processors.append(TopPLogitsWarper(float(self.top_p)))
        if self.min_p is not None and self.min_p > 0:
            processors.append(MinPLogitsWarper(float(self.min_p)))
        return processors


class TokenSampler:
    """Draws tokens from (guided) logits with one `SamplingConfig`'s warpers and an explicit generator."""

    def __init__(self, sampling: SamplingConfig, generator: torch.Generator | None = None):
        self.sampling = sampling
        self.generator = generator
        self.processors = sampling.logits_processor()

    def warp(self, logits: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """(R, V) logits after temperature, top-k, top-p and min-p; `history` (R, i) is what transformers' processors
        see as `input_ids`."""
        # each warper called directly: `LogitsProcessorList.__call__` runs `inspect.signature` on every processor at every
        # call (~40 µs per decode step); these warpers take (input_ids, scores) only
        for processor in self.processors:
            logits = processor(history, logits)
        return logits

    def __call__(self, logits: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """(R, V) logits -> (R,) ids drawn from the warped distribution (greedy without `do_sample`)."""
        return sample_tokens(self.warp(logits, history), self.generator, self.sampling.do_sample)

    def sample_with_log_probs(
        self, logits: torch.Tensor, history: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, V) logits -> (R,) ids and (R,) their log-probabilities under the warped distribution (the confidence of
        MaskGIT's reveal rule)."""
        logits = self.warp(logits, history)
        ids = sample_tokens(logits, self.generator, self.sampling.do_sample)
        return ids, torch.log_softmax(logits, dim=-1).gather(1, ids[:, None]).squeeze(1)


__all__ = ["SAMPLING_SETTINGS", "SamplingConfig", "TokenSampler"]
