"""`DallePipeline`: caption -> image tokens (KV-cached sampling, optional guidance) -> dVAE decoder -> images,
with optional reranking of N candidates by a contrastive image-text scorer (DALL-E section 2.6)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...image_processing import T2IImageProcessor
from ...models.dalle.modeling_dalle import DalleForConditionalGeneration
from ...models.dalle.processing_dalle import DalleProcessor
from ...processing_utils import as_prompt_list
from ..pipeline_output import T2IPipelineOutput
from ..pipeline_utils import T2IPipeline
from ..reranking import rerank


class DallePipeline(T2IPipeline):
    """Text-to-image with DALL-E.

    Components:
        model: [`DalleForConditionalGeneration`] (the prior, with its dVAE as `model.vqmodel`).
        processor: [`DalleProcessor`].
        scorer (optional): a contrastive image-text model with `get_text_features` / `get_image_features`
            (e.g. a transformers `CLIPModel`) used to rerank `num_candidates` samples per prompt.
        scorer_processor (optional): the scorer's processor (text + images -> model inputs).

    Example:

    ```python
    >>> from hf_t2i import DallePipeline
    >>> pipe = DallePipeline.from_pretrained(path)
    >>> image = pipe("a red circle", generator=torch.Generator().manual_seed(0)).images[0]
    ```
    """

    model_cpu_offload_seq = "model"
    _optional_components = ["scorer", "scorer_processor"]

    def __init__(
        self,
        model: DalleForConditionalGeneration,
        processor: DalleProcessor,
        scorer=None,
        scorer_processor=None,
    ):
        super().__init__()
        self.register_modules(model=model, processor=processor, scorer=scorer, scorer_processor=scorer_processor)

    def check_inputs(self, num_images_per_prompt: int, num_candidates: int | None) -> None:
        if num_candidates is None:
            return
        if not isinstance(num_candidates, int) or num_candidates < num_images_per_prompt:
            raise ValueError(
                f"`num_candidates` must be an integer >= `num_images_per_prompt` ({num_images_per_prompt}), "
                f"got {num_candidates!r}."
            )
        if self.scorer is None or self.scorer_processor is None:
            raise ValueError(
                "`num_candidates` reranks samples with a scorer, but this pipeline has none. Pass `scorer=` and "
                "`scorer_processor=` when building it, or leave `num_candidates=None`."
            )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool = True,
        num_candidates: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        truncation: bool = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> T2IPipelineOutput | tuple:
        """Generate images.

        Args:
            prompt: caption(s).
            negative_prompt: caption(s) of the unconditional branch of guidance (default: the empty caption).
            height, width: must be unset or equal to the dVAE's `image_size` (DALL-E draws one size).
            num_images_per_prompt: images returned per prompt.
            guidance_scale: classifier-free guidance on the token logits; 1.0 disables it.
            guidance_schedule: "constant", or "linear" from 1 to `guidance_scale` over the image tokens.
            temperature, top_k, top_p, min_p: sampling filters (transformers semantics).
            do_sample: sample (True) or decode greedily.
            num_candidates: sample this many images per prompt and keep the `num_images_per_prompt` the scorer
                ranks highest (needs `scorer`).
            generator: the only source of randomness; the same seed gives the same images.
            output_type: "pil", "np" or "pt".
            return_dict: return a [`T2IPipelineOutput`] instead of a tuple.
            truncation: cut prompts longer than the text context instead of raising.
            callback_on_step_end: `callback(pipe, step, step, {"image_token_ids": tokens_so_far})` after each image
                token (it observes; returned values are not used: changing drawn tokens would invalidate the cache).
            callback_on_step_end_tensor_inputs: must be None or `["image_token_ids"]`.

        Returns:
            [`T2IPipelineOutput`] with `images` (and `scores` when reranked), or `(images,)`.
        """
        prompts = as_prompt_list(prompt)
        self.check_common_inputs(
            num_images_per_prompt, temperature, top_k, top_p, min_p, guidance_scale, guidance_schedule
        )
        self.check_inputs(num_images_per_prompt, num_candidates)
        self.check_image_size(height, width, self.model.config.vq_config.image_size)
        if callback_on_step_end_tensor_inputs not in (None, ["image_token_ids"]):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be None or ['image_token_ids'], got "
                f"{callback_on_step_end_tensor_inputs!r}."
            )
        device = self._execution_device
        samples = num_candidates or num_images_per_prompt
        input_ids = self.processor(text=prompts, truncation=truncation, text_argument="prompt").input_ids
        input_ids = input_ids.to(device).repeat_interleave(samples, dim=0)  # (B * n, L)

        negative_ids = None
        if guidance_scale != 1.0:
            negatives = as_prompt_list(negative_prompt if negative_prompt is not None else "", "negative_prompt")
            if len(negatives) not in (1, len(prompts)):
                raise ValueError(
                    f"`negative_prompt` has {len(negatives)} entries for {len(prompts)} prompts; pass one or as many."
                )
            negative_ids = self.processor(text=negatives, truncation=truncation, text_argument="negative_prompt")
            negative_ids = negative_ids.input_ids.to(device)
            if len(negatives) > 1:
                negative_ids = negative_ids.repeat_interleave(samples, dim=0)

        callback = None
        if callback_on_step_end is not None:

            def callback(i: int, tokens: torch.Tensor) -> None:
                callback_on_step_end(self, i, i, {"image_token_ids": tokens})

        with self.progress_bar(total=self.model.config.num_image_tokens) as progress_bar:
            tokens = self.model.sample_image_tokens(
                input_ids,
                negative_input_ids=negative_ids,
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
        pixels = self.model.decode_image_tokens(tokens)  # (B * n, 3, H, W) in [-1, 1]

        scores = None
        if num_candidates is not None:
            pixels, scores = rerank(self.scorer, self.scorer_processor, prompts, pixels, num_images_per_prompt)
        images = T2IImageProcessor.postprocess(pixels, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return T2IPipelineOutput(images=images, scores=scores)


__all__ = ["DallePipeline"]
