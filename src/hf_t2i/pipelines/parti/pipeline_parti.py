"""`PartiPipeline`: caption -> text encoder (once) -> image tokens (KV-cached decoder, guidance as one doubled
batch) -> ViT-VQGAN decoder, or the learned 2x upsampler (Parti's super-resolution stage) -> images."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...generation import AutoregressiveDecoder
from ...models.parti.modeling_parti import PartiForConditionalGeneration
from ...models.parti.processing_parti import PartiProcessor
from ...processing_utils import as_prompt_list
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
        default_guidance_scale: float | None = None,
    ):
        super().__init__()
        self.register_modules(
            model=model, processor=processor, upsampler=upsampler, scorer=scorer, scorer_processor=scorer_processor
        )
        self.register_default_guidance_scale(default_guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float | None = None,
        guidance_schedule: str = "constant",
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool | None = None,
        num_candidates: int | None = None,
        super_resolution: bool = False,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        truncation: bool = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
    ) -> T2IPipelineOutput | tuple:
        """Generate images.

        Args:
            super_resolution: decode the tokens with the `upsampler` at twice the tokenizer's resolution.
            prompt_embeds: (B, S, hidden) the text encoder's states of B prompts, from `encode_prompt`, instead of
                `prompt` (not with `num_candidates`: reranking scores the prompt text).
            negative_prompt_embeds: (B or 1, S, hidden) the unconditional branch's states under guidance, instead of
                `negative_prompt` (default: the empty caption's).
            prompt_attention_mask, negative_prompt_attention_mask: (B, S) their padding masks (default: all ones);
                `encode_prompt` returns them.
            output_type: "pil", "np", "pt", or "latent": the (B, N) image codes the ViT-VQGAN (or the upsampler)
                would decode.
            (every other argument as in [`DallePipeline.__call__`]; `height` / `width` must be unset or match the
            output size: the tokenizer's `image_size`, doubled with `super_resolution`)

        Returns:
            [`T2IPipelineOutput`] with `images` (and `scores` when reranked), or `(images,)`.
        """
        # 0. The decoder: the tokenizer's, or the upsampler's at twice the size (Parti's super-resolution stage)
        image_size = self.model.config.vq_config.image_size
        decode = self.model.decode_image_tokens
        if super_resolution:
            if self.upsampler is None:
                raise ValueError("`super_resolution=True` needs an `upsampler` component; this pipeline has none.")
            image_size, decode = image_size * self.upsampler.config.scale_factor, self.upsampler.decode

        # 1. Check inputs
        guidance_scale = self.guidance_scale_or_default(guidance_scale)
        num_prompts = self.check_prompt_inputs(
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            prompt_attention_mask,
            negative_prompt_attention_mask,
        )
        prompts = None if prompt is None else as_prompt_list(prompt)
        self.check_num_images(num_images_per_prompt)
        sampling = self.model.image_sampling_config(
            temperature, top_k, top_p, min_p, do_sample, guidance_scale, guidance_schedule
        )
        samples, per_prompt = self.check_rerank_inputs(num_images_per_prompt, num_candidates, prompts is not None)
        self.check_image_size(height, width, image_size)
        self.check_output_inputs(output_type, callback_on_step_end_tensor_inputs, "latents")
        self.check_batch_size(num_prompts, samples, per_prompt)
        generator = self.check_generator(generator, num_prompts * samples, f"prompts x `{per_prompt}`")

        # 2. Encode the prompts (and, under guidance, the negative prompts), or take their precomputed states
        device = self._execution_device
        inputs = self.text_inputs(
            prompt,
            negative_prompt,
            samples,
            sampling.guidance.enabled,
            truncation,
            device,
            prompt_embeds,
            negative_prompt_embeds,
            prompt_attention_mask,
            negative_prompt_attention_mask,
        )

        # 3. Prepare the decoding state and the sampler
        state = self.model.prepare_image_generation(**inputs, guidance=sampling.guidance)
        batch = num_prompts * samples
        decoder = AutoregressiveDecoder(batch, self.model.config.num_image_tokens, sampling, generator)

        # 4. Decoding loop
        tokens = self.raster_decode(state, decoder, callback_on_step_end)

        # 5. Decode to pixels, rerank, output
        return self.decode_and_rerank(
            tokens, decode, prompts, num_images_per_prompt, num_candidates, output_type, return_dict
        )


__all__ = ["PartiPipeline"]
