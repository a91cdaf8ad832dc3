"""`PartiPipeline`: caption -> text encoder (once) -> image tokens (KV-cached decoder, guidance as one doubled
batch) -> ViT-VQGAN decoder, or the learned 2x upsampler (Parti's super-resolution stage) -> images."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...models.parti.modeling_parti import PartiForConditionalGeneration
from ...models.parti.processing_parti import PartiProcessor
from ..autoregressive import AutoregressiveT2IPipeline
from ..pipeline_output import T2IPipelineOutput


class PartiPipeline(AutoregressiveT2IPipeline):
    """Text-to-image with Parti.

    Components:
        model: [`PartiForConditionalGeneration`] (encoder-decoder prior, with its ViT-VQGAN as `model.vqmodel`).
        processor: [`PartiProcessor`].
        upsampler (optional): a [`ViTVQGANUpsampler`] decoding the same tokens at twice the resolution.
        scorer, scorer_processor (optional): a contrastive image-text model to rerank `num_candidates` samples.

    Example:

    ```python
    >>> pipe = PartiPipeline.from_pretrained(path)
    >>> image = pipe("a red circle", guidance_scale=3.0, generator=torch.Generator().manual_seed(0)).images[0]
    ```
    """

    model_cpu_offload_seq = "model->upsampler"
    _optional_components = ["upsampler", "scorer", "scorer_processor"]
    text_input_names = ("input_ids", "attention_mask")

    def __init__(
        self,
        model: PartiForConditionalGeneration,
        processor: PartiProcessor,
        upsampler=None,
        scorer=None,
        scorer_processor=None,
    ):
        super().__init__()
        self.register_modules(
            model=model, processor=processor, upsampler=upsampler, scorer=scorer, scorer_processor=scorer_processor
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
        super_resolution: bool = False,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        truncation: bool = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> T2IPipelineOutput | tuple:
        """Generate images.

        Args:
            super_resolution: decode the tokens with the `upsampler` at twice the tokenizer's resolution.
            (every other argument as in [`DallePipeline.__call__`]; `height` / `width` must be unset or match the
            output size: the tokenizer's `image_size`, doubled with `super_resolution`)

        Returns:
            [`T2IPipelineOutput`] with `images` (and `scores` when reranked), or `(images,)`.
        """
        image_size = self.model.config.vq_config.image_size
        decode = self.model.decode_image_tokens
        if super_resolution:
            if self.upsampler is None:
                raise ValueError("`super_resolution=True` needs an `upsampler` component; this pipeline has none.")
            image_size, decode = image_size * self.upsampler.config.scale_factor, self.upsampler.decode
        return self._generate(
            prompt,
            negative_prompt,
            height,
            width,
            num_images_per_prompt,
            guidance_scale,
            guidance_schedule,
            temperature,
            top_k,
            top_p,
            min_p,
            do_sample,
            num_candidates,
            generator,
            output_type,
            return_dict,
            truncation,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            image_size=image_size,
            decode=decode,
        )


__all__ = ["PartiPipeline"]
