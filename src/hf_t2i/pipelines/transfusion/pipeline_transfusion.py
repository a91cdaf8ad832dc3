"""`TransfusionPipeline`: caption -> `<s> caption </s> <boi>` -> diffusion mode with a diffusers scheduler (cached
prefix, classifier-free guidance as one doubled batch) -> VAE decoder -> images; and `caption(images)` for the
image -> text direction of the same model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ...generation import ClassifierFreeGuidance
from ...generation.guidance import step_progress
from ...models.transfusion.generation_transfusion import scheduler_step_kwargs
from ...models.transfusion.modeling_transfusion import TransfusionForConditionalGeneration
from ...models.transfusion.processing_transfusion import TransfusionProcessor
from ...processing_utils import as_prompt_list
from ..pipeline_output import T2IPipelineOutput
from ..pipeline_utils import T2IPipeline, saved_scheduler


class TransfusionPipeline(T2IPipeline):
    """Text-to-image (and captioning) with Transfusion.

    Components:
        model: [`TransfusionForConditionalGeneration`] (with its VAE as `model.vae`), saved at the folder root.
        processor: [`TransfusionProcessor`], at the root.
        scheduler: a DDPM-family diffusers scheduler with the model's training noise schedule (subfolder
            `scheduler/`); default: DDIM. Swap it as in diffusers:
            `pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)` (or DPMSolverMultistep,
            DDPM, Euler, ...); it keeps the model's `prediction_type` (epsilon or v_prediction) from the config.
            Flow-matching schedulers (`FlowMatchEulerDiscreteScheduler`) are refused: the model predicts DDPM noise
            (or DDPM velocity), not a flow-matching velocity.
        scorer (optional): a contrastive image-text model with `get_text_features` / `get_image_features` (e.g. a
            transformers `CLIPModel`) used to rerank `num_candidates` samples per prompt.
        scorer_processor (optional): the scorer's processor (text + images -> model inputs).

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
    _optional_components = ["scheduler", "scorer", "scorer_processor"]
    text_input_names = ("input_ids", "attention_mask")
    fallback_guidance_scale = 3.0
    prompt_embeds_unsupported = (
        "Transfusion has no separate text encoder: the caption's tokens run through the same transformer as the image "
        "patches (the cached prefix `<s> caption </s> <boi>`), so there is no text-encoder output to precompute."
    )

    def __init__(
        self,
        model: TransfusionForConditionalGeneration,
        processor: TransfusionProcessor,
        scheduler: SchedulerMixin | None = None,
        scorer=None,
        scorer_processor=None,
        default_guidance_scale: float | None = None,
        default_guidance_interval: list[float] | None = None,
    ):
        super().__init__()
        if scheduler is None:
            scheduler = saved_scheduler(model) or model.make_scheduler("ddim")
        self.register_modules(
            model=model, processor=processor, scheduler=scheduler, scorer=scorer, scorer_processor=scorer_processor
        )
        self.register_default_guidance_scale(default_guidance_scale)
        self.register_default_guidance_interval(default_guidance_interval)

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
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        num_images_per_prompt: int = 1,
        num_candidates: int | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        truncation: bool = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> T2IPipelineOutput | tuple:
        """Generate images.

        Args:
            prompt: caption(s).
            negative_prompt: caption(s) of the unconditional branch of guidance (default: the empty caption, which
                caption dropout trained).
            height, width: must be unset or equal to the model's `image_size`.
            num_inference_steps: denoising steps of the scheduler.
            guidance_scale: classifier-free guidance on the predicted noise, in [0, 1e4]; 1.0 disables it. Default:
                the checkpoint's `default_guidance_scale` (model_index.json; the scale its model card chose), else
                3.0.
            guidance_interval: `(start, stop)`: guide only the steps whose progress `i / (N - 1)` (step `i` of `N`)
                lies in [start, stop], the others unguided (guidance in a limited interval, Kynkäänniemi et al. 2024):
                e.g. `(0.2, 1.0)` leaves the first fifth, the highest noise levels, unguided. Default: the
                checkpoint's `default_guidance_interval` (model_index.json), else every step.
            num_images_per_prompt: images returned per prompt; prompts x images (x `num_candidates` when reranking)
                is at most `max_images_per_call` (256) per call.
            num_candidates: draw this many images per prompt and keep the `num_images_per_prompt` the scorer ranks
                highest (DALL-E's reranking; needs `scorer`).
            generator: the only source of randomness: one `torch.Generator` for the whole call (the same seed gives
                the same images), or a list of one per image drawn (prompts x `num_images_per_prompt`, or x
                `num_candidates` when reranking), in output order: image `i` is then the image a one-image call with
                generator `i` draws.
            latents: (B, C, h, w) standard normal initial noise instead of drawing it, one per image drawn (scaled by
                the scheduler's `init_noise_sigma`, as in diffusers).
            output_type: "pil", "np", "pt", or "latent": the (B, C, h, w) scaled VAE latents the VAE decoder would
                decode (when reranking, the kept images').
            return_dict: return a [`T2IPipelineOutput`] instead of a tuple.
            truncation: cut prompts longer than the text context instead of raising.
            callback_on_step_end: `callback(pipe, i, t, {"latents": latents}) -> dict` after each step; a returned
                "latents" replaces the current ones (diffusers semantics).
            callback_on_step_end_tensor_inputs: must be None or `["latents"]`.
            prompt_embeds, negative_prompt_embeds: not supported (a `ValueError` says why): Transfusion has no text
                encoder whose output could be precomputed; the caption is the prefix of the same transformer
                sequence as the image. Pass `prompt` / `negative_prompt`.

        Returns:
            [`T2IPipelineOutput`] with `images` (and `scores` when reranked), or `(images,)`.
        """
        # 1. Check inputs
        guidance_scale = self.guidance_scale_or_default(guidance_scale)
        self.check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        prompts = as_prompt_list(prompt)
        self.check_num_images(num_images_per_prompt)
        samples, per_prompt = self.check_rerank_inputs(num_images_per_prompt, num_candidates)
        guidance = ClassifierFreeGuidance(
            guidance_scale, interval=self.guidance_interval_or_default(guidance_interval)
        )
        self.check_image_size(height, width, self.model.config.image_size)
        if (
            not isinstance(num_inference_steps, int)
            or isinstance(num_inference_steps, bool)
            or num_inference_steps < 1
        ):
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        self.check_output_inputs(output_type, callback_on_step_end_tensor_inputs, "latents")
        self.check_batch_size(len(prompts), samples, per_prompt)
        generator = self.check_generator(generator, len(prompts) * samples, f"prompts x `{per_prompt}`")
        self.model.check_scheduler(self.scheduler)

        # 2. Encode the prompts: `<s> caption </s> <boi>` (and the negative prompts) run into the KV cache once
        device = self._execution_device
        inputs = self.encode_prompts(prompts, negative_prompt, samples, guidance.enabled, truncation, device)
        state = self.model.prepare_image_generation(**inputs, guidance=guidance)

        # 3. Prepare the timesteps and the initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.model.prepare_latents(state, self.scheduler, generator, latents)
        step_kwargs = scheduler_step_kwargs(self.scheduler, generator)

        # 4. Denoising loop: only the patch positions run at each step, after the cached prefix
        steps = len(self.scheduler.timesteps)
        with self.progress_bar(total=steps) as progress_bar:
            for i, t in enumerate(self.scheduler.timesteps):
                noise_pred = self.model.guided_noise_prediction(
                    state, self.scheduler, latents, t, step_progress(i, steps)
                )
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    outputs = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = outputs.get("latents", latents)
                progress_bar.update()

        # 5. Decode to pixels, rerank, output
        return self.decode_and_rerank(
            latents,
            self.model.decode_image_tokens,
            prompts,
            num_images_per_prompt,
            num_candidates,
            output_type,
            return_dict,
        )

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
