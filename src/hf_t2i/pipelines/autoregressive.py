"""Shared machinery of the token-by-token pipelines (DALL-E, Parti): the KV-cached sampling call with progress bar
and step callback, decoding and reranking (prompt encoding and output live in [`T2IPipeline`])."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..processing_utils import as_prompt_list
from .pipeline_output import T2IPipelineOutput
from .pipeline_utils import T2IPipeline
from .reranking import rerank


class AutoregressiveT2IPipeline(T2IPipeline):
    """Base of pipelines whose `model` has `sample_image_tokens(input_ids, [attention_mask], negative_input_ids=,
    [negative_attention_mask=], ...)` and `decode_image_tokens(ids)`, a `processor`, and optional `scorer` /
    `scorer_processor` for reranking."""

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

    def _generate(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        height: int | None,
        width: int | None,
        num_images_per_prompt: int,
        guidance_scale: float,
        guidance_schedule: str,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        min_p: float | None,
        do_sample: bool,
        num_candidates: int | None,
        generator: torch.Generator | None,
        output_type: str,
        return_dict: bool,
        truncation: bool,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
        image_size: int,
        decode: Callable[[torch.Tensor], torch.Tensor],
    ) -> T2IPipelineOutput | tuple:
        """The body of every `__call__` (see `DallePipeline.__call__` for the arguments); `decode` maps image codes
        to pixels in [-1, 1], `image_size` is what `height` / `width` must match."""
        prompts = as_prompt_list(prompt)
        self.check_common_inputs(
            num_images_per_prompt, temperature, top_k, top_p, min_p, guidance_scale, guidance_schedule
        )
        self.check_rerank_inputs(num_images_per_prompt, num_candidates)
        self.check_image_size(height, width, image_size)
        self.check_output_inputs(output_type, callback_on_step_end_tensor_inputs, "image_token_ids")
        device = self._execution_device
        samples = num_candidates or num_images_per_prompt
        guided = guidance_scale != 1.0
        inputs = self.encode_prompts(prompts, negative_prompt, samples, guided, truncation, device)

        callback = None
        if callback_on_step_end is not None:

            def callback(i: int, tokens: torch.Tensor) -> None:
                callback_on_step_end(self, i, i, {"image_token_ids": tokens})

        with self.progress_bar(total=self.model.config.num_image_tokens) as progress_bar:
            tokens = self.model.sample_image_tokens(
                **inputs,
                guidance_scale=guidance_scale,
                guidance_schedule=guidance_schedule,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                min_p=min_p,
                do_sample=do_sample,
                generator=generator,
                callback=callback,
                progress_bar=progress_bar,
            )
        pixels = decode(tokens)  # (B * n, 3, H, W) in [-1, 1]

        scores = None
        if num_candidates is not None:
            pixels, scores = rerank(self.scorer, self.scorer_processor, prompts, pixels, num_images_per_prompt)
        return self.output(pixels, output_type, return_dict, scores=scores)
