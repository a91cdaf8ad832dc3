"""Shared machinery of the token-by-token pipelines (DALL-E, Parti): the raster decoding loop with its progress bar
and step callback, and reranking of candidates (prompt encoding and output live in [`T2IPipeline`])."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..generation import AutoregressiveDecoder
from .pipeline_output import T2IPipelineOutput
from .pipeline_utils import T2IPipeline
from .reranking import rerank


class AutoregressiveT2IPipeline(T2IPipeline):
    """Base of pipelines whose `model` implements raster decoding: `prepare_image_generation(**text_inputs,
    guidance=) -> state`, `image_generation_step(state, previous) -> logits` and `decode_image_tokens(ids)`; with a
    `processor`, and optional `scorer` / `scorer_processor` for reranking."""

    def check_rerank_inputs(self, num_images_per_prompt: int, num_candidates: int | None) -> None:
        if num_candidates is None:
            return
        if not isinstance(num_candidates, int) or num_candidates < num_images_per_prompt:
            raise ValueError(
                f"`num_candidates` must be an integer >= `num_images_per_prompt` ({num_images_per_prompt}), "
                f"got {num_candidates!r}."
            )
        if getattr(self, "scorer", None) is None or getattr(self, "scorer_processor", None) is None:
            raise ValueError(
                "`num_candidates` reranks samples with a scorer, but this pipeline has none. Pass `scorer=` and "
                "`scorer_processor=` when building it, or leave `num_candidates=None`."
            )

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

    def decode_and_rerank(
        self,
        tokens: torch.Tensor,
        decode: Callable[[torch.Tensor], torch.Tensor],
        prompts: list[str] | None,
        num_images_per_prompt: int,
        num_candidates: int | None,
        output_type: str,
        return_dict: bool,
    ) -> T2IPipelineOutput | tuple:
        """Codes -> pixels with `decode`; with `num_candidates`, keep the `num_images_per_prompt` best-scored of each
        prompt's candidates; then the requested output (with "latent": the (B, N) codes of the kept images, not
        decoded unless reranking needs the pixels)."""
        if num_candidates is None and output_type == "latent":
            return self.output(tokens, output_type, return_dict)
        pixels = decode(tokens)  # (B * n, 3, H, W) in [-1, 1]
        scores = None
        if num_candidates is not None:
            index, scores = rerank(self.scorer, self.scorer_processor, prompts, pixels, num_images_per_prompt)
            pixels, tokens = pixels[index.to(pixels.device)], tokens[index.to(tokens.device)]
        return self.output(tokens if output_type == "latent" else pixels, output_type, return_dict, scores=scores)
