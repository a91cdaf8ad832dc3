"""Shared machinery of the token-by-token pipelines (DALL-E, Parti): the raster decoding loop with its progress bar
and step callback (prompt encoding, reranking of candidates and output live in [`T2IPipeline`])."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..generation import AutoregressiveDecoder
from .pipeline_utils import T2IPipeline


class AutoregressiveT2IPipeline(T2IPipeline):
    """Base of pipelines whose `model` implements raster decoding: `prepare_image_generation(**text_inputs,
    guidance=) -> state`, `image_generation_step(state, previous) -> logits` and `decode_image_tokens(ids)`; with a
    `processor`, and optional `scorer` / `scorer_processor` for reranking ([`T2IPipeline.decode_and_rerank`])."""

    def raster_decode(
        self, state, decoder: AutoregressiveDecoder, callback_on_step_end: Callable | None = None
    ) -> torch.Tensor:
        """The decoding loop: one model step and one draw per image token, the progress bar advanced and
        `callback_on_step_end(pipe, i, i, {"latents": tokens_so_far})` called after each. The callback observes; what
        it returns is not used (changing drawn tokens would invalidate the cache).

        Returns:
            (B, N) drawn image codes.
        """
        previous = None
        with self.progress_bar(total=decoder.num_steps) as progress_bar:
            for i in range(decoder.num_steps):
                logits = self.model.image_generation_step(state, previous)  # (B', V)
                previous = decoder.step(i, logits)  # (B', 1)
                if callback_on_step_end is not None:
                    callback_on_step_end(self, i, i, {"latents": decoder.tokens[:, : i + 1]})
                progress_bar.update()
        return decoder.tokens
