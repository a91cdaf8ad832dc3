"""Raster-order decoding with a KV cache (DALL-E, Parti, raster Fluid): one image token per step.

The loop is split the way diffusers splits a pipeline from its scheduler:
- the model computes one step: `model.image_generation_step(state, previous)` runs the prefix (prefill) when
  `previous` is None, else the last drawn tokens, and returns the logits of the next image token;
- [`AutoregressiveDecoder`] turns those logits into the next token (guidance, warpers, the draw) and keeps the tokens;
- the pipeline runs the loop, with the progress bar and the step callbacks.

Under classifier-free guidance the model sees ONE doubled batch (conditional rows first); the decoder combines the two
halves and feeds the same drawn token to both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import SamplingConfig, TokenSampler
from .guidance import step_progress


class AutoregressiveDecoder:
    """The sampling side of raster decoding: logits of token `i` in, token `i` out.

    Args:
        batch_size: B, the rows of the result (the model sees 2B under guidance).
        num_tokens: N, tokens to draw per row.
        sampling: warpers, greedy or sampled, guidance scale and schedule (linear: progress `i / (N - 1)`).
        generator: the only source of randomness.
    """

    def __init__(
        self,
        batch_size: int,
        num_tokens: int,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
    ):
        self.batch_size = batch_size
        self.num_tokens = num_tokens
        self.sampling = sampling or SamplingConfig()
        self.guidance = self.sampling.guidance
        self.sample = TokenSampler(self.sampling, generator)
        self.tokens: torch.Tensor | None = None  # (B, N) once the first logits arrive

    @property
    def num_steps(self) -> int:
        return self.num_tokens

    def progress(self, i: int) -> float:
        return step_progress(i, self.num_tokens)

    def step(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        """Draw token `i` from `logits` (B', V) and return the (B', 1) ids the model reads at the next step."""
        if self.guidance.enabled:
            logits = self.guidance.combine(logits, self.guidance.scale_at(self.progress(i)))  # (B, V)
        if self.tokens is None:
            self.tokens = torch.zeros(self.batch_size, self.num_tokens, dtype=torch.long, device=logits.device)
        next_tokens = self.sample(logits, self.tokens[:, :i])  # (B,)
        self.tokens[:, i] = next_tokens
        return self.guidance.double(next_tokens[:, None])  # (B', 1)


@torch.no_grad()
def decode_autoregressive(
    step: Callable[[torch.Tensor | None], torch.Tensor], decoder: AutoregressiveDecoder
) -> torch.Tensor:
    """The loop without a pipeline around it (models' `sample_image_tokens`, benchmarks): `step(previous) -> logits`.

    Returns:
        (B, N) int64 ids in the logits' vocabulary.
    """
    previous = None
    for i in range(decoder.num_steps):
        previous = decoder.step(i, step(previous))
    return decoder.tokens


__all__ = ["AutoregressiveDecoder", "decode_autoregressive"]
