"""`FluidPipeline`: caption (or class label) -> text encoder (once) -> image tokens (random order: `num_inference_steps` masked
iterations on a cosine schedule; raster order: one token per step with the KV cache; each continuous token drawn by
the diffusion head in `num_diffusion_steps` steps of the pipeline's scheduler: DDPM, or a fast solver such as
DPM-Solver++) -> VAE / VQ decoder -> images."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import SchedulerMixin

from ...layers.diffusion_head import DiffusionHeadScheduler
from ...modeling_utils import outside_range
from ...models.fluid.modeling_fluid import FluidForConditionalGeneration
from ...models.fluid.processing_fluid import FluidProcessor
from ...processing_utils import as_prompt_list
from ..pipeline_output import T2IPipelineOutput
from ..pipeline_utils import T2IPipeline, saved_scheduler


class FluidPipeline(T2IPipeline):
    """Text-to-image with Fluid (any of the four cells: continuous / discrete tokens x random / raster order).

    Components:
        model: [`FluidForConditionalGeneration`] (with its `AutoencoderKL` as `model.vae`, or its VQ tokenizer as
            `model.vqmodel`).
        processor: [`FluidProcessor`]; None for a class-conditional model (e.g. a converted MAR checkpoint), which
            takes `class_labels` instead of prompts.
        scheduler: what samples the diffusion head (continuous models; None for discrete ones), saved in
            `scheduler/`. Default: the one saved with the model, else a [`DiffusionHeadScheduler`] with the model
            config's schedule (diffusers' `DDPMScheduler` plus MAR's sampling `temperature`). Swap it as in diffusers
            for a fast solver, built from the same schedule: `DPMSolverMultistepScheduler` (DPM-Solver++, 2nd order),
            `DDIMScheduler` or `UniPCMultistepScheduler` `.from_config(pipe.scheduler.config)`, with fewer
            `num_diffusion_steps` (10-25 instead of DDPM's 100). The solvers take no `temperature` (1.0 only: it
            scales DDPM's ancestral noise, which they do not draw), keep the head's "leading" timestep spacing (their
            own default, which starts at the cosine schedule's capped last step, is refused), and are refused with
            another noise schedule or prediction type. The solver's multistep history is reset at every head call.
        scorer (optional): a contrastive image-text model with `get_text_features` / `get_image_features` (e.g. a
            transformers `CLIPModel`) used to rerank `num_candidates` samples per prompt.
        scorer_processor (optional): the scorer's processor (text + images -> model inputs).

    Example:

    ```python
    >>> pipe = FluidPipeline.from_pretrained(path)
    >>> image = pipe("a red circle", guidance_scale=3.0, generator=torch.Generator().manual_seed(0)).images[0]
    >>> # the head with DPM-Solver++ in 15 steps instead of DDPM's 100
    >>> pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    >>> image = pipe("a red circle", num_diffusion_steps=15, generator=torch.Generator().manual_seed(0)).images[0]
    >>> # class-conditional (MAR): pipe(class_labels=[207, 360], guidance_scale=2.9, guidance_schedule="linear")
    ```
    """

    model_cpu_offload_seq = "model"
    _optional_components = ["processor", "scheduler", "scorer", "scorer_processor"]
    text_input_names = ("input_ids", "attention_mask")

    def __init__(
        self,
        model: FluidForConditionalGeneration,
        processor: FluidProcessor | None = None,
        scheduler: SchedulerMixin | None = None,
        scorer=None,
        scorer_processor=None,
        default_guidance_scale: float | None = None,
        default_guidance_interval: list[float] | None = None,
    ):
        super().__init__()
        if scheduler is None and model.config.is_continuous:
            scheduler = saved_scheduler(model, (DiffusionHeadScheduler,), "DPMSolverMultistepScheduler") or (
                DiffusionHeadScheduler.from_config(model.scheduler.config)
            )
        self.register_modules(
            model=model, processor=processor, scheduler=scheduler, scorer=scorer, scorer_processor=scorer_processor
        )
        self.register_default_guidance_scale(default_guidance_scale)
        self.register_default_guidance_interval(default_guidance_interval)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_schedule: str = "constant",
        guidance_interval: tuple[float, float] | None = None,
        temperature: float = 1.0,
        num_diffusion_steps: int | None = None,
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
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
    ) -> T2IPipelineOutput | tuple:
        """Generate images.

        Args:
            prompt: caption(s).
            negative_prompt: caption(s) of the unconditional branch of guidance (default '').
            height, width: must be unset or the image tokenizer's size.
            num_images_per_prompt: images per caption; captions (or class labels) x images is at most
                `max_images_per_call` (256) per call.
            num_inference_steps: random order: generation iterations (default 64, or the number of image tokens when
                smaller); raster order: None (one step per token).
            guidance_scale: classifier-free guidance scale, in [0, 1e4] (1 = off). Default: the checkpoint's
                `default_guidance_scale` (model_index.json; the scale its model card chose), else 1.0.
            guidance_schedule: "constant" or "linear" (random order: linear in the share of revealed tokens, MAR's;
                raster order: from 1 at the first token to `guidance_scale` at the last).
            guidance_interval: continuous tokens: `(start, stop)`, guide only the diffusion head's denoising steps
                whose progress `i / (N - 1)` lies in [start, stop] (guidance in a limited interval, Kynkäänniemi et al.
                2024), the others unguided; e.g. `(0, 0.5)` guides the high-noise half of each token's denoising.
                Default: the checkpoint's `default_guidance_interval` (model_index.json), else every step.
            temperature: continuous: the diffusion head's noise temperature (>= 0; a solver other than
                `DiffusionHeadScheduler` takes 1.0 only); discrete: softmax temperature.
            num_diffusion_steps: reverse steps of the head per token with `pipe.scheduler` (default: the model
                config's, 100, what DDPM is trained and measured with; DPM-Solver++ needs 10-25).
            top_k, top_p, min_p, do_sample: discrete tokens only.
            num_candidates: draw this many images per caption and keep the `num_images_per_prompt` the scorer ranks
                highest (DALL-E's reranking; needs `scorer` and `prompt`).
            generator: the only source of randomness: one `torch.Generator` for the whole call, or a list of one per
                image drawn (captions or class labels x `num_images_per_prompt`, or x `num_candidates` when
                reranking), in output order: image `i` is then the image a one-image call with generator `i` draws.
            output_type: "pil", "np", "pt", or "latent": the (B, N, D) latent tokens (continuous) or (B, N) ids
                (discrete), in raster order, that the VAE / VQ decoder would decode (when reranking, the kept
                images').
            truncation: cut prompts longer than the text context instead of raising.
            callback_on_step_end: `callback(pipe, i, i, {"latents": tokens})` after each iteration, `tokens` the
                (B, N, D) latent tokens or (B, N) ids so far, unknown ones zero (it observes; what it returns is not
                used).
            callback_on_step_end_tensor_inputs: None or ["latents"].
            class_labels: class-conditional models only, instead of `prompt`: class ids, or names from the model
                config's `id2label`.
            prompt_embeds: (B, S, hidden) the text encoder's states of B captions, from `encode_prompt`, instead of
                `prompt` (text-conditional models).
            negative_prompt_embeds: (B or 1, S, hidden) the unconditional branch's states under guidance, instead of
                `negative_prompt` (default: the empty caption's).
            prompt_attention_mask, negative_prompt_attention_mask: (B, S) their padding masks (default: all ones);
                `encode_prompt` returns them.

        Returns:
            [`T2IPipelineOutput`] with `images` (and `scores` when reranked), or `(images,)`.
        """
        # 1. Check inputs
        guidance_scale = self.guidance_scale_or_default(guidance_scale)
        model = self.model
        self.check_num_images(num_images_per_prompt)
        samples, per_prompt = self.check_rerank_inputs(
            num_images_per_prompt, num_candidates, prompt is not None and not model.config.is_class_conditional
        )
        settings = model.check_sampling(
            num_inference_steps,
            guidance_scale,
            guidance_schedule,
            temperature,
            num_diffusion_steps,
            top_k,
            top_p,
            min_p,
            do_sample,
            self.guidance_interval_or_default(guidance_interval),
        )
        guidance = settings.sampling.guidance
        self.check_image_size(height, width, model.config.image_size)
        self.check_output_inputs(output_type, callback_on_step_end_tensor_inputs, "latents")
        text_embeds = {
            "prompt_embeds": prompt_embeds,
            "negative_prompt_embeds": negative_prompt_embeds,
            "prompt_attention_mask": prompt_attention_mask,
            "negative_prompt_attention_mask": negative_prompt_attention_mask,
        }

        # 2. Encode the prompts (or class labels), both guidance branches as one doubled batch
        device = self._execution_device
        if model.config.is_class_conditional:
            given = [name for name, value in text_embeds.items() if value is not None]
            if prompt is not None or negative_prompt is not None or given:
                name = "prompt" if prompt is not None or negative_prompt is not None else given[0]
                raise ValueError(
                    f"This Fluid model is class-conditional: pass `class_labels` (ids or names), not `{name}`."
                )
            labels = self.class_label_ids(class_labels).to(device)
            self.check_batch_size(len(labels), num_images_per_prompt)
            generator = self.check_generator(
                generator, len(labels) * num_images_per_prompt, "class labels x `num_images_per_prompt`"
            )
            inputs = {"class_labels": labels.repeat_interleave(num_images_per_prompt)}
            prompts = None
        else:
            if class_labels is not None:
                raise ValueError("`class_labels` apply to class-conditional Fluid models; this one takes `prompt`.")
            if self.processor is None:
                raise ValueError("A text-conditional FluidPipeline needs its `processor`.")
            num_prompts = self.check_prompt_inputs(prompt, negative_prompt, **text_embeds)
            self.check_batch_size(num_prompts, samples, per_prompt)
            generator = self.check_generator(generator, num_prompts * samples, f"prompts x `{per_prompt}`")
            inputs = self.text_inputs(
                prompt, negative_prompt, samples, guidance.enabled, truncation, device, **text_embeds
            )
            prompts = None if prompt is None else as_prompt_list(prompt)
        scheduler = getattr(self, "scheduler", None)
        state = model.prepare_image_generation(**inputs, settings=settings, scheduler=scheduler, generator=generator)

        # 3. Prepare the tokens and the reveal order (random order on the cosine schedule, or raster order)
        decoder = model.start_image_tokens(state, num_steps=settings.num_steps)

        # 4. Decoding loop: each iteration draws the tokens at the positions the reveal rule chose
        with self.progress_bar(total=decoder.num_steps) as progress_bar:
            for i in range(decoder.num_steps):
                positions, scale = decoder.plan(i)  # (B, M), M >= 0
                if positions.shape[1]:
                    new = model.image_generation_step(state, decoder.tokens, decoder.known, positions, scale)
                    decoder.reveal(positions, new)
                if callback_on_step_end is not None:
                    callback_on_step_end(self, i, i, {"latents": decoder.tokens})
                progress_bar.update()

        # 5. Decode to pixels, rerank, output
        return self.decode_and_rerank(
            decoder.tokens,
            model.decode_image_tokens,
            prompts,
            num_images_per_prompt,
            num_candidates,
            output_type,
            return_dict,
        )

    def class_label_ids(self, class_labels) -> torch.Tensor:
        """`class_labels` (an id, a name from `config.id2label`, a list of them, or a tensor) -> (B,) ids."""
        config = self.model.config
        if class_labels is None:
            raise ValueError(f"Pass `class_labels`: class ids in [0, {config.num_classes}) or names from `id2label`.")
        if isinstance(class_labels, torch.Tensor):
            labels = class_labels.reshape(-1)
        else:
            items = class_labels if isinstance(class_labels, (list, tuple)) else [class_labels]
            if not items:
                raise ValueError("`class_labels` is empty; pass at least one class.")
            label2id = {str(name).lower(): int(i) for i, name in (config.id2label or {}).items()}
            ids = []
            for item in items:
                if isinstance(item, str):
                    if item.lower() not in label2id:
                        raise ValueError(
                            f"`class_labels`: unknown class name {item!r}; the model's `id2label` has "
                            f"{len(label2id)} names. Pass an id in [0, {config.num_classes}) instead."
                        )
                    item = label2id[item.lower()]
                if isinstance(item, bool) or not isinstance(item, int):
                    raise ValueError(f"`class_labels` entries must be ints or names, got {item!r}.")
                ids.append(item)
            labels = torch.tensor(ids, dtype=torch.long)
        if labels.is_floating_point() or labels.numel() == 0:
            raise ValueError(f"`class_labels` must be integer ids, got {class_labels!r}.")
        if outside_range(labels, config.num_classes):
            raise ValueError(f"`class_labels` must be in [0, {config.num_classes}), got {labels.tolist()}.")
        return labels.long()


__all__ = ["FluidPipeline"]
