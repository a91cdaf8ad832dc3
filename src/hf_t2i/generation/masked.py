"""Iterative decoding of an image's tokens with a pluggable reveal rule (Fluid / MAR, raster Fluid).

Every iteration the model predicts the tokens at some positions; the reveal rule says which positions, how many,
and how far decoding has progressed (for the guidance schedule):
- [`RandomOrder`]: a random permutation per image, revealed on MaskGIT's cosine schedule (MAR, Fluid): `K` iterations,
  `floor(N * cos(pi/2 * (k+1) / K))` tokens still unknown after iteration `k`;
- [`RasterOrder`]: one token per iteration, left to right, top to bottom (raster Fluid with its KV cache);
- [`ConfidenceOrder`]: MaskGIT / Muse: the model draws every unknown token, the rule keeps the most confident ones
  (same cosine schedule), with MaskGIT's annealed Gumbel noise on the confidence.

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


def cosine_training_mask(batch: int, length: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(B, N) bool training mask, True = masked: per row `ceil(N * cos(pi / 2 * r))` positions, `r ~ U(0, 1)`, at least
    one, chosen uniformly at random (MaskGIT section 3.1; MAR and Fluid train the same way), all drawn from
    `generator`."""
    ratio = cosine_mask_ratio(rand_like_on((batch,), generator, device))  # (B,)
    count = (ratio * length).ceil().clamp(1, length).long()  # (B,)
    ranks = random_orders(batch, length, generator, device).argsort(dim=1)  # (B, N): rank of each position
    return ranks < count[:, None]


def masked_after(step: int, num_steps: int, length: int, revealed: int) -> int:
    """Tokens kept masked after iteration `step` of `num_steps` when `revealed` of `length` are known before it (MAR's
    `mask_len`): `floor(N * cos(pi/2 * (step+1) / K))`, at least 1 and at most all but one of the unknown tokens, so
    every iteration reveals at least one. (The last iteration reveals the rest whatever this says.)"""
    return max(1, min(length - revealed - 1, math.floor(length * cosine_mask_ratio((step + 1) / num_steps))))


@dataclass
class StepPlan:
    """One iteration: reveal `positions` (B, M) (M may be 0), with guidance progress `progress` in [0, 1].

    For a rule that chooses after drawing, `positions` are the candidates (every unknown position) and `count` of
    them are revealed.
    """

    positions: torch.Tensor
    progress: float
    count: int | None = None

    def __post_init__(self):
        if self.count is None:
            self.count = self.positions.shape[1]


class RevealRule:
    """Which positions each iteration reveals. Subclasses implement `start` (per-generation state) and `plan`; a rule
    that sets `chooses_after_drawing` also implements `select`."""

    #: the model draws every unknown position and `select` keeps `count` of them by confidence
    chooses_after_drawing = False

    def start(self, batch: int, length: int, generator: torch.Generator | None, device) -> None:
        """Called once before the first iteration."""

    def plan(self, step: int, num_steps: int, length: int, revealed: int) -> StepPlan:
        raise NotImplementedError

    def select(self, confidence: torch.Tensor, count: int) -> torch.Tensor:
        """(B, U) confidence of the drawn candidates -> (B, count) indices of the candidates to keep."""
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


class ConfidenceOrder(RevealRule):
    """MaskGIT (Chang et al. 2022, section 3.2) / Muse: draw every unknown token, keep the `count` the model is most
    sure of (the cosine schedule's count, as `RandomOrder`), re-mask the rest. The confidence is the drawn token's
    log-probability plus Gumbel noise scaled by `choice_temperature * (1 - (k + 1) / K)`, annealed to zero at the last
    iteration (MaskGIT's `mask_by_random_topk`).

    Args:
        choice_temperature: scale of the Gumbel noise at the first iteration (MaskGIT: 4.5); 0 keeps the strictly most
            confident tokens.
    """

    chooses_after_drawing = True

    def __init__(self, choice_temperature: float = 4.5):
        if isinstance(choice_temperature, bool) or not isinstance(choice_temperature, (int, float)):
            raise ValueError(f"`choice_temperature` must be a number >= 0, got {choice_temperature!r}.")
        if not math.isfinite(choice_temperature) or choice_temperature < 0:
            raise ValueError(f"`choice_temperature` must be a finite number >= 0, got {choice_temperature!r}.")
        self.choice_temperature = float(choice_temperature)

    def start(self, batch, length, generator, device) -> None:
        self.generator, self.device = generator, device
        self.noise_scale = 0.0

    def plan(self, step, num_steps, length, revealed) -> StepPlan:
        kept = masked_after(step, num_steps, length, revealed)
        count = length - revealed - (0 if step == num_steps - 1 else kept)
        self.noise_scale = self.choice_temperature * (1 - (step + 1) / num_steps)
        empty = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # the decoder fills in the unknown positions
        return StepPlan(empty, (length - kept) / length, max(count, 0))

    def select(self, confidence: torch.Tensor, count: int) -> torch.Tensor:
        if self.noise_scale > 0:
            uniform = rand_like_on(tuple(confidence.shape), self.generator, confidence.device)
            gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1.0 - 1e-7)))
            confidence = confidence.float() + self.noise_scale * gumbel
        return confidence.topk(count, dim=1).indices  # (B, count)


class MaskedDecodingMixin:
    """Base of the per-step generation mixins of the models `MaskedDecoder` drives (Fluid, Muse)."""

    @classmethod
    def can_generate(cls) -> bool:
        """False: transformers' `generate()` decodes one token after another and these models reveal tokens by
        iterations of their own (`sample_image_tokens`, or the pipeline). transformers would otherwise say True,
        because a mixin's class name (`FluidGenerationMixin`) contains "GenerationMixin", and give the model a
        `generation_config` nothing reads."""
        return False


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
        """Iteration `step`'s positions (B, M) to draw and its guidance scale. For a rule that chooses after drawing,
        the positions are every unknown one, and `reveal` keeps `self.count` of them."""
        plan = self.reveal_rule.plan(step, self.num_steps, self.num_tokens, self.revealed)
        self.count = plan.count
        positions = plan.positions
        if self.reveal_rule.chooses_after_drawing:
            batch = self.known.shape[0]
            unknown = self.num_tokens - self.revealed
            positions = (~self.known).nonzero()[:, 1].view(batch, unknown) if plan.count else positions
        return positions, self.guidance.scale_at(plan.progress)

    def reveal(self, positions: torch.Tensor, values: torch.Tensor, confidence: torch.Tensor | None = None) -> None:
        """Write `values` (B, M, *token_shape) at `positions` (B, M) and mark them known. A rule that chooses after
        drawing needs `confidence` (B, M) and keeps the `count` it selects."""
        if self.reveal_rule.chooses_after_drawing:
            if confidence is None:
                raise ValueError(f"{type(self.reveal_rule).__name__} reveals by confidence: pass `confidence`.")
            keep = self.reveal_rule.select(confidence, self.count)  # (B, count)
            positions = positions.gather(1, keep)
            index = keep if values.ndim == 2 else keep[..., None].expand(-1, -1, values.shape[-1])
            values = values.gather(1, index)
        if self.tokens.ndim == 3:
            index = positions[..., None].expand(-1, -1, self.tokens.shape[-1])
            self.tokens.scatter_(1, index, values.to(self.tokens.dtype))
        else:
            self.tokens.scatter_(1, positions, values)
        self.known.scatter_(1, positions, True)
        self.revealed += positions.shape[1]


__all__ = [
    "ConfidenceOrder",
    "MaskedDecoder",
    "MaskedDecodingMixin",
    "RandomOrder",
    "RasterOrder",
    "RevealRule",
    "StepPlan",
    "cosine_mask_ratio",
    "cosine_training_mask",
    "masked_after",
    "random_orders",
]
