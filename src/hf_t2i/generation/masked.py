"""Iterative decoding of an image's tokens with a pluggable reveal rule (Fluid / MAR, raster Fluid).

Every iteration the model predicts the tokens at some positions; the reveal rule says which positions, how many,
and how far decoding has progressed (for the guidance schedule):
- [`RandomOrder`]: a random permutation per image, revealed on MaskGIT's cosine schedule (MAR, Fluid): `K` iterations,
  `floor(N * cos(pi/2 * (k+1) / K))` tokens still unknown after iteration `k`;
- [`RasterOrder`]: one token per iteration, left to right, top to bottom (raster Fluid with its KV cache).

The loop is split the way diffusers splits a pipeline from its scheduler: [`MaskedDecoder.plan`] gives an
iteration's positions and guidance scale, the model computes the new tokens there
(`model.image_generation_step(state, tokens, known, positions, scale)`), [`MaskedDecoder.reveal`] writes them, and
the pipeline runs the loop with the progress bar and callbacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .guidance import ClassifierFreeGuidance
from .sampling import rand_like_on


def cosine_mask_ratio(progress: torch.Tensor | float) -> torch.Tensor | float:
    """Fraction of tokens still masked at `progress` in [0, 1]: `cos(pi / 2 * progress)` (MaskGIT / MUSE / Fluid)."""
    if isinstance(progress, torch.Tensor):
        return torch.cos(math.pi / 2 * progress)
    return math.cos(math.pi / 2 * progress)


def random_orders(batch: int, length: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(B, N) independent random permutations of `range(N)` drawn from `generator`."""
    return rand_like_on((batch, length), generator, device).argsort(dim=1)


def masked_after(step: int, num_steps: int, length: int, revealed: int) -> int:
    """Tokens kept masked after iteration `step` of `num_steps` when `revealed` of `length` are known before it (MAR's
    `mask_len`): `floor(N * cos(pi/2 * (step+1) / K))`, at least 1 and at most all but one of the unknown tokens, so
    every iteration reveals at least one. (The last iteration reveals the rest whatever this says.)"""
    return max(1, min(length - revealed - 1, math.floor(length * cosine_mask_ratio((step + 1) / num_steps))))


@dataclass
class StepPlan:
    """One iteration: reveal `positions` (B, M) (M may be 0), with guidance progress `progress` in [0, 1]."""

    positions: torch.Tensor
    progress: float

    @property
    def count(self) -> int:
        return self.positions.shape[1]


class RevealRule:
    """Which positions each iteration reveals. Subclasses implement `start` (per-generation state) and `plan`."""

    def start(self, batch: int, length: int, generator: torch.Generator | None, device) -> None:
        """Called once before the first iteration."""

    def plan(self, step: int, num_steps: int, length: int, revealed: int) -> StepPlan:
        raise NotImplementedError


class RandomOrder(RevealRule):
    """MAR / Fluid: a random permutation per image, revealed on the cosine schedule; guidance progress is the share of
    tokens known after the iteration (MAR's linear `cfg_schedule`)."""

    def start(self, batch, length, generator, device) -> None:
        self.orders = random_orders(batch, length, generator, device)  # (B, N): position revealed k-th

    def plan(self, step, num_steps, length, revealed) -> StepPlan:
        kept = masked_after(step, num_steps, length, revealed)
        count = length - revealed - (0 if step == num_steps - 1 else kept)
        positions = self.orders[:, revealed : revealed + max(count, 0)]  # (B, M)
        return StepPlan(positions, (length - kept) / length)


class RasterOrder(RevealRule):
    """One token per iteration in raster order; guidance progress `i / (N - 1)`."""

    def start(self, batch, length, generator, device) -> None:
        self.batch, self.device = batch, device

    def plan(self, step, num_steps, length, revealed) -> StepPlan:
        positions = torch.full((self.batch, 1), step, dtype=torch.long, device=self.device)
        return StepPlan(positions, step / (length - 1) if length > 1 else 1.0)


class MaskedDecoder:
    """The bookkeeping side of iterative decoding: the tokens so far, which are known, and each iteration's plan.

    Args:
        batch_size: B.
        num_tokens: N, image tokens per image.
        num_steps: iterations (RasterOrder: N).
        reveal: the reveal rule.
        guidance: classifier-free guidance (its schedule runs over the rule's progress).
        generator: the only source of randomness (the rule's orders; the model draws the tokens with it too).
        token_shape: () for ids, (D,) for continuous tokens.
        dtype, device: of the token tensor.
    """

    def __init__(
        self,
        batch_size: int,
        num_tokens: int,
        num_steps: int,
        reveal: RevealRule,
        guidance: ClassifierFreeGuidance | None = None,
        generator: torch.Generator | None = None,
        token_shape: tuple[int, ...] = (),
        dtype: torch.dtype = torch.long,
        device: torch.device | str = "cpu",
    ):
        self.num_tokens, self.num_steps = num_tokens, num_steps
        self.reveal_rule = reveal
        self.guidance = guidance or ClassifierFreeGuidance()
        self.tokens = torch.zeros(batch_size, num_tokens, *token_shape, dtype=dtype, device=device)
        self.known = torch.zeros(batch_size, num_tokens, dtype=torch.bool, device=device)
        self.revealed = 0
        reveal.start(batch_size, num_tokens, generator, device)

    def plan(self, step: int) -> tuple[torch.Tensor, float]:
        """Iteration `step`'s positions (B, M) and guidance scale."""
        plan = self.reveal_rule.plan(step, self.num_steps, self.num_tokens, self.revealed)
        return plan.positions, self.guidance.scale_at(plan.progress)

    def reveal(self, positions: torch.Tensor, values: torch.Tensor) -> None:
        """Write `values` (B, M, *token_shape) at `positions` (B, M) and mark them known."""
        if self.tokens.ndim == 3:
            index = positions[..., None].expand(-1, -1, self.tokens.shape[-1])
            self.tokens.scatter_(1, index, values.to(self.tokens.dtype))
        else:
            self.tokens.scatter_(1, positions, values)
        self.known.scatter_(1, positions, True)
        self.revealed += positions.shape[1]


__all__ = [
    "MaskedDecoder",
    "RandomOrder",
    "RasterOrder",
    "RevealRule",
    "StepPlan",
    "cosine_mask_ratio",
    "masked_after",
    "random_orders",
]
