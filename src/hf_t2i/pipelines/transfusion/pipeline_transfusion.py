"""`TransfusionPipeline`: caption -> `<s> caption </s> <boi>` -> diffusion mode with a diffusers scheduler (cached
prefix, classifier-free guidance as one doubled batch) -> VAE decoder -> images; and `caption(images)` for the
image -> text direction of the same model."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ...generation import ClassifierFreeGuidance
from ...models.transfusion.modeling_transfusion import TransfusionForConditionalGeneration
from ...models.transfusion.processing_transfusion import TransfusionProcessor
from ...processing_utils import as_prompt_list
from ..pipeline_output import T2IPipelineOutput
from ..pipeline_utils import T2IPipeline


def saved_scheduler(model: TransfusionForConditionalGeneration) -> SchedulerMixin | None:
    """The scheduler saved next to the model (`<folder>/scheduler/`), so `pipeline("text-to-image", model=path)`,
    which hands over only the model and processor, samples with the same scheduler as `TransfusionPipeline`."""
    folder = os.path.join(getattr(model.config, "_name_or_path", "") or "", "scheduler")
    if not os.path.isfile(os.path.join(folder, "scheduler_config.json")):
        return None
    config = DDIMScheduler.load_config(folder)
    scheduler_class = {"DDPMScheduler": DDPMScheduler}.get(config.get("_class_name"), DDIMScheduler)
    return scheduler_class.from_config(config)


class TransfusionPipeline(T2IPipeline):
    """Text-to-image (and captioning) with Transfusion.

    Components:
        model: [`TransfusionForConditionalGeneration`] (with its VAE as `model.vae`), saved at the folder root.
        processor: [`TransfusionProcessor`], at the root.
        scheduler: a diffusers `DDIMScheduler` / `DDPMScheduler` (subfolder `scheduler/`); default: DDIM with the
            model's training schedule.

    Example:

    ```python
    >>> from hf_t2i import TransfusionPipeline
    >>> pipe = TransfusionPipeline.from_pretrained(path)
    >>> image = pipe("a red circle", generator=torch.Generator().manual_seed(0)).images[0]
    >>> pipe.caption(image)
    ['a red circle']
    ```
    """

    model_cpu_offload_seq = "model"
    _optional_components = ["scheduler"]
    text_input_names = ("input_ids", "attention_mask")

    def __init__(
        self,
        model: TransfusionForConditionalGeneration,
        processor: TransfusionProcessor,
        scheduler: SchedulerMixin | None = None,
    ):
        super().__init__()
        if scheduler is None:
            scheduler = saved_scheduler(model) or model.make_scheduler("ddim")
        self.register_modules(model=model, processor=processor, scheduler=scheduler)

    def encode_text(self, prompts: list[str], truncation: bool, argument: str):
        """`<s> caption </s> <boi>` ids and their mask (left-padded), as diffusion mode starts from."""
        return self.processor.image_generation_inputs(prompts, truncation=truncation, text_argument=argument)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 3.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        truncation: bool = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> T2IPipelineOutput | tuple:
        """Generate images.

        Args:
            prompt: caption(s).
            negative_prompt: caption(s) of the unconditional branch of guidance (default: the empty caption, which
                caption dropout trained).
            height, width: must be unset or equal to the model's `image_size`.
            num_inference_steps: denoising steps of the scheduler.
            guidance_scale: classifier-free guidance on the predicted noise, in [0, 1e4]; 1.0 disables it.
            num_images_per_prompt: images returned per prompt; prompts x images is at most `max_images_per_call`
                (256) per call.
            generator: one `torch.Generator` (not a list), the only source of randomness; the same seed gives the
                same images.
            latents: (B, C, h, w) initial noise instead of drawing it.
            output_type: "pil", "np" or "pt".
            return_dict: return a [`T2IPipelineOutput`] instead of a tuple.
            truncation: cut prompts longer than the text context instead of raising.
            callback_on_step_end: `callback(pipe, i, t, {"latents": latents}) -> dict` after each step; a returned
                "latents" replaces the current ones (diffusers semantics).
            callback_on_step_end_tensor_inputs: must be None or `["latents"]`.

        Returns:
            [`T2IPipelineOutput`] with `images`, or `(images,)`.
        """
        # 1. Check inputs
        prompts = as_prompt_list(prompt)
        self.check_num_images(num_images_per_prompt)
        guidance = ClassifierFreeGuidance(guidance_scale)
        self.check_image_size(height, width, self.model.config.image_size)
        if (
            not isinstance(num_inference_steps, int)
            or isinstance(num_inference_steps, bool)
            or num_inference_steps < 1
        ):
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        self.check_output_inputs(output_type, callback_on_step_end_tensor_inputs, "latents")
        self.check_generator(generator)
        self.check_batch_size(len(prompts), num_images_per_prompt)

        # 2. Encode the prompts: `<s> caption </s> <boi>` (and the negative prompts) run into the KV cache once
        device = self._execution_device
        inputs = self.encode_prompts(
            prompts, negative_prompt, num_images_per_prompt, guidance.enabled, truncation, device
        )
        state = self.model.prepare_image_generation(**inputs, guidance=guidance)

        # 3. Prepare the timesteps and the initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.model.prepare_latents(state, self.scheduler, generator, latents)

        # 4. Denoising loop: only the patch positions run at each step, after the cached prefix
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(self.scheduler.timesteps):
                model_input = self.scheduler.scale_model_input(guidance.double(latents), t)
                noise_pred = self.model.image_generation_step(state, model_input, t)  # (B', C, h, w)
                if guidance.enabled:
                    noise_pred = guidance.combine(noise_pred)
                latents = self.scheduler.step(noise_pred, t, latents, generator=generator).prev_sample
                if callback_on_step_end is not None:
                    outputs = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = outputs.get("latents", latents)
                progress_bar.update()

        # 5. Decode to pixels
        return self.output(self.model.decode_image_tokens(latents), output_type, return_dict)

    @torch.no_grad()
    def caption(
        self,
        images,
        prompt: str | list[str] = "",
        max_new_tokens: int = 32,
        do_sample: bool = False,
        generator: torch.Generator | None = None,
        **sampling_kwargs,
    ) -> list[str]:
        """Image(s) -> caption(s) in LM mode: `<s> <boi> image <eoi> prompt` continued until `</s>` (greedy by
        default; `temperature`, `top_k`, `top_p`, `min_p` as in transformers)."""
        inputs = self.processor(images=images, text=prompt, text_argument="prompt").to(self._execution_device)
        ids = self.model.generate_text(
            **inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, generator=generator, **sampling_kwargs
        )
        return self.processor.batch_decode(ids)


__all__ = ["TransfusionPipeline"]
