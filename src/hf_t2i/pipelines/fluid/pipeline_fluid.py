"""`FluidPipeline`: caption -> text encoder (once) -> image tokens (random order: `num_inference_steps` masked
iterations on a cosine schedule; raster order: one token per step with the KV cache; each continuous token drawn by
the diffusion head in `num_diffusion_steps` DDPM steps) -> VAE / VQ decoder -> images."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...layers.diffusion_head import DiffusionHeadScheduler
from ...models.fluid.modeling_fluid import FluidForConditionalGeneration
from ...models.fluid.processing_fluid import FluidProcessor
from ...processing_utils import as_prompt_list
from ..autoregressive import AutoregressiveT2IPipeline
from ..pipeline_output import T2IPipelineOutput


class FluidPipeline(AutoregressiveT2IPipeline):
    """Text-to-image with Fluid (any of the four cells: continuous / discrete tokens x random / raster order).

    Components:
        model: [`FluidForConditionalGeneration`] (with its `AutoencoderKL` as `model.vae`, or its VQ tokenizer as
            `model.vqmodel`).
        processor: [`FluidProcessor`].
        scheduler (optional): the diffusion head's [`DiffusionHeadScheduler`] (a `DDPMScheduler` with a sampling
            temperature); default: the schedule of the model's config. Saved in `scheduler/`.

    Example:

    ```python
    >>> pipe = FluidPipeline.from_pretrained(path)
    >>> image = pipe("a red circle", guidance_scale=3.0, generator=torch.Generator().manual_seed(0)).images[0]
    ```
    """

    model_cpu_offload_seq = "model"
    _optional_components = ["scheduler"]
    text_input_names = ("input_ids", "attention_mask")

    def __init__(
        self,
        model: FluidForConditionalGeneration,
        processor: FluidProcessor,
        scheduler: DiffusionHeadScheduler | None = None,
    ):
        super().__init__()
        self.register_modules(model=model, processor=processor, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        temperature: float = 1.0,
        num_diffusion_steps: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool = True,
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
            negative_prompt: caption(s) of the unconditional branch of guidance (default '').
            height, width: must be unset or the image tokenizer's size.
            num_images_per_prompt: images per caption.
            num_inference_steps: random order: generation iterations (default 64, or the number of image tokens when
                smaller); raster order: None (one step per token).
            guidance_scale: classifier-free guidance scale (1 = off).
            guidance_schedule: "constant", or "linear" from 1 at the first iteration to `guidance_scale` at the last.
            temperature: continuous: the diffusion head's noise temperature (>= 0); discrete: softmax temperature.
            num_diffusion_steps: DDPM reverse steps of the head per token (default: the model config's, 100).
            top_k, top_p, min_p, do_sample: discrete tokens only.
            generator: the only source of randomness.
            output_type: "pil", "np" or "pt".
            truncation: cut prompts longer than the text context instead of raising.
            callback_on_step_end: `callback(pipe, i, i, {"image_tokens": tokens})` after each iteration.
            callback_on_step_end_tensor_inputs: None or ["image_tokens"].

        Returns:
            [`T2IPipelineOutput`] with `images`, or `(images,)`.
        """
        prompts = as_prompt_list(prompt)
        model = self.model
        self.check_common_inputs(
            num_images_per_prompt, guidance_scale=guidance_scale, guidance_schedule=guidance_schedule
        )
        self.check_image_size(height, width, model.config.image_size)
        self.check_output_inputs(output_type, callback_on_step_end_tensor_inputs, "image_tokens")
        device = self._execution_device
        inputs = self.encode_prompts(
            prompts, negative_prompt, num_images_per_prompt, guidance_scale != 1.0, truncation, device
        )
        callback = None
        if callback_on_step_end is not None:

            def callback(i: int, tokens: torch.Tensor) -> None:
                callback_on_step_end(self, i, i, {"image_tokens": tokens})

        n = model.config.num_image_tokens
        total = n if model.config.is_causal else (num_inference_steps or min(64, n))
        scheduler = self.scheduler if getattr(self, "scheduler", None) is not None else None
        with self.progress_bar(total=total) as progress_bar:
            tokens = model.sample_image_tokens(
                **inputs,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                guidance_schedule=guidance_schedule,
                temperature=temperature,
                num_diffusion_steps=num_diffusion_steps,
                top_k=top_k,
                top_p=top_p,
                min_p=min_p,
                do_sample=do_sample,
                generator=generator,
                scheduler=scheduler,
                callback=callback,
                progress_bar=progress_bar,
            )
        pixels = model.decode_image_tokens(tokens)  # (B * n, 3, H, W) in [-1, 1]
        return self.output(pixels, output_type, return_dict)


__all__ = ["FluidPipeline"]
