"""Classifier-free guidance (Ho & Salimans 2022), written once for every family and every kind of prediction.

Guidance runs the conditional and the unconditional branch as ONE doubled batch: rows `[:B]` are conditional, rows
`[B:]` unconditional. The guided prediction is `uncond + s * (cond - uncond)`, for token logits (DALL-E, Parti,
discrete Fluid; also min-dalle's `uncond * (1 - s) + cond * s`) and for predicted noise (Fluid's diffusion head,
Transfusion).

The scale may follow a schedule over the decoding progress `p` in [0, 1]:
- "constant": `s` at every step;
- "linear": `1 + (s - 1) * p`, rising from no guidance to `s` (MUSE section 2.7, MAR's `cfg_schedule="linear"`).

and may be limited to an interval `[start, stop]` of the progress, outside which the step is unguided (scale 1):
guidance in a limited interval (Kynkäänniemi et al. 2024) leaves the first, high-noise steps of a diffusion sampler
unguided, where guidance pulls every sample of a caption toward the same layout, and keeps it where it binds the
caption. diffusers' guiders (`ClassifierFreeGuidance(start=, stop=)`) take the same two fractions.

Each decoding loop defines its progress: the raster loop `i / (N - 1)` at token `i` of `N`; the masked loop the share of
tokens known after the iteration; the diffusion loops (Transfusion's sampler, Fluid's diffusion head) `i / (N - 1)`
at step `i` of `N`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..configuration_utils import check_choice, is_finite_number


GUIDANCE_SCHEDULES = ("constant", "linear")
#: `interval` that guides every step
FULL_INTERVAL = (0.0, 1.0)
#: The largest accepted guidance scale. Useful scales are ~1-20; at 1e30 the guided float32 prediction overflows and
#: Fluid / Transfusion return NaN images (Muse flat ones), so anything above this bound is refused, not drawn.
MAX_GUIDANCE_SCALE = 1e4


def step_progress(step: int, num_steps: int) -> float:
    """Decoding progress of step `step` of `num_steps`: `step / (num_steps - 1)`, from 0 at the first step to 1 at the
    last (1.0 when there is one step), as the raster and diffusion loops count it."""
    return step / (num_steps - 1) if num_steps > 1 else 1.0


def check_guidance_interval(interval, argument: str = "guidance_interval") -> tuple[float, float]:
    """`interval` as a `(start, stop)` pair of floats, or a `ValueError` naming `argument` unless it is two finite
    numbers with 0 <= start < stop <= 1 (fractions of the decoding progress)."""
    if (
        isinstance(interval, (str, bytes))
        or not hasattr(interval, "__len__")
        or len(interval) != 2
        or not all(is_finite_number(value) for value in interval)
        or not 0 <= interval[0] < interval[1] <= 1
    ):
        raise ValueError(
            f"`{argument}` must be a pair (start, stop) of fractions of the decoding steps with 0 <= start < stop <= 1 "
            f"(guidance on where start <= progress <= stop; (0, 1) guides every step), got {interval!r}."
        )
    return float(interval[0]), float(interval[1])


def guidance_interval_argument(text: str) -> tuple[float, float]:
    """A command line's `START,STOP` (e.g. `0.2,1`) as a checked `(start, stop)`; an `argparse.ArgumentTypeError`
    saying what is expected otherwise."""
    try:
        return check_guidance_interval(tuple(float(part) for part in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected START,STOP with 0 <= START < STOP <= 1 (e.g. 0.2,1), got {text!r}"
        ) from None


def check_guidance_scale(scale, argument: str = "guidance_scale") -> None:
    """A `ValueError` naming `argument` unless `scale` is a finite number in [0, `MAX_GUIDANCE_SCALE`]."""
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not math.isfinite(scale)
        or not 0 <= scale <= MAX_GUIDANCE_SCALE
    ):
        raise ValueError(
            f"`{argument}` must be a finite number in [0, {MAX_GUIDANCE_SCALE:g}] (1.0 = off), got {scale!r}."
        )


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    """Guidance settings and the operations every decoding loop needs: batch doubling, the scale at a step, the
    combine.

    Args:
        scale: guidance scale `s`, a finite number in [0, `MAX_GUIDANCE_SCALE`] (1e4); 1.0 turns guidance off (and
            the doubled batch with it).
        schedule: "constant" or "linear" (see the module docstring).
        interval: `(start, stop)`, the decoding progress in which the steps are guided (closed at both ends); the
            others take scale 1. Default `(0.0, 1.0)`: every step.
    """

    scale: float = 1.0
    schedule: str = "constant"
    interval: tuple[float, float] = FULL_INTERVAL

    def __post_init__(self):
        check_guidance_scale(self.scale)
        check_choice("guidance_schedule", self.schedule, GUIDANCE_SCHEDULES)
        object.__setattr__(self, "interval", check_guidance_interval(self.interval))

    @property
    def enabled(self) -> bool:
        """Whether the model runs a doubled (conditional + unconditional) batch."""
        return self.scale != 1.0

    def scale_at(self, progress: float) -> float:
        """The scale at decoding progress `progress` in [0, 1]: 1.0 outside `interval`, else the schedule's."""
        start, stop = self.interval
        if not start <= progress <= stop:
            return 1.0
        if self.schedule == "constant":
            return self.scale
        return 1.0 + (self.scale - 1.0) * progress

    def double(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (2B, ...) when guidance is on: the same rows feed both branches."""
        return torch.cat([tensor, tensor]) if self.enabled else tensor

    @staticmethod
    def conditioned(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """The doubled batch of a condition: (B, ...) conditional rows, then the unconditional rows `negative`
        ((B, ...) or (1, ...), broadcast to B)."""
        negative = negative.to(positive.device)
        return torch.cat([positive, negative.expand(positive.shape[0], *negative.shape[1:])])

    def double_inputs(
        self, positive: torch.Tensor, negative: torch.Tensor | None, argument: str = "input_ids"
    ) -> torch.Tensor:
        """The doubled batch of a text input under guidance (unchanged without it), with the checks every family
        needs: the negative input is given and as long as the positive one.

        Args:
            positive: (B, S) the prompts' `argument` (ids or their mask).
            negative: (B or 1, S) the unconditional branch's (the processor's encoding of '' or a negative prompt).
            argument: the positive argument's name, for error messages (`negative_<argument>` is the other).
        """
        if not self.enabled:
            return positive
        if negative is None:
            raise ValueError(
                f"Guidance needs `negative_{argument}`: the processor's encoding of the negative prompt ('' for plain "
                "classifier-free guidance)."
            )
        if negative.ndim != positive.ndim or negative.shape[1:] != positive.shape[1:]:
            raise ValueError(
                f"`negative_{argument}` must have the prompts' length {positive.shape[1]}, got "
                f"{tuple(negative.shape)}."
            )
        return self.conditioned(positive, negative)

    def guided_prediction(
        self, predict: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, progress: float, **combine_kwargs
    ) -> torch.Tensor:
        """One step's guided prediction at decoding progress `progress`: `predict` on the doubled `inputs` (B, ...)
        combined at `scale_at(progress)`, or, at scale 1 (guidance off, or a step outside `interval`), on the B
        conditional rows alone: `uncond + 1 * (cond - uncond)` is `cond`, so the unconditional rows are not run.
        `predict` sees 2B or B rows, conditional first; `combine_kwargs` go to `combine` (e.g. `channels`)."""
        scale = self.scale_at(progress)
        if scale == 1.0:
            return predict(inputs)
        return self.combine(predict(self.double(inputs)), scale, **combine_kwargs)

    def combine(
        self, prediction: torch.Tensor, scale: float | None = None, channels: int | None = None
    ) -> torch.Tensor:
        """(2B, ...) doubled-batch prediction -> (B, ...) guided prediction.

        Args:
            prediction: conditional rows first.
            scale: the scale of this step (default: `self.scale`).
            channels: guide only the first `channels` entries of dim 1 and keep the conditional rows' others (a
                learned-variance denoiser's variance values, as MAR's `forward_with_cfg`).
        """
        scale = self.scale if scale is None else scale
        cond, uncond = prediction.chunk(2, dim=0)
        if channels is None or channels == prediction.shape[1]:
            return uncond + scale * (cond - uncond)
        guided = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
        return torch.cat([guided, cond[:, channels:]], dim=1)


__all__ = [
    "FULL_INTERVAL",
    "GUIDANCE_SCHEDULES",
    "MAX_GUIDANCE_SCALE",
    "ClassifierFreeGuidance",
    "check_guidance_interval",
    "check_guidance_scale",
    "guidance_interval_argument",
    "step_progress",
]
