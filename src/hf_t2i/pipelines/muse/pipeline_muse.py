"""`MusePipeline`: caption -> text encoder (once) -> image codes (MaskGIT's confidence-ordered decoding: start from
all-[MASK], `num_inference_steps` iterations on the cosine schedule, each drawing every masked code and keeping the
most confident) -> VQ decoder -> images."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...models.muse.modeling_muse import MuseForConditionalGeneration
from ...models.muse.processing_muse import MuseProcessor
from ...processing_utils import as_prompt_list
from ..pipeline_output import T2IPipelineOutput
from ..pipeline_utils import T2IPipeline


class MusePipeline(T2IPipeline):
    """Text-to-image with Muse / MaskGIT.

    Components:
        model: [`MuseForConditionalGeneration`] (with its VQ tokenizer as `model.vqmodel`).
        processor: [`MuseProcessor`].
        scorer (optional): a contrastive image-text model with `get_text_features` / `get_image_features` (e.g. a
            transformers `CLIPModel`) used to rerank `num_candidates` samples per prompt.
        scorer_processor (optional): the scorer's processor (text + images -> model inputs).

    Example:

    ```python
    >>> pipe = MusePipeline.from_pretrained(path)
    >>> image = pipe("a red circle", guidance_scale=3.0, generator=torch.Generator().manual_seed(0)).images[0]
    ```
    """

    model_cpu_offload_seq = "model"
    _optional_components = ["scorer", "scorer_processor"]
    text_input_names = ("input_ids", "attention_mask")

    def __init__(
        self,
        model: MuseForConditionalGeneration,
        processor: MuseProcessor,
        scorer=None,
        scorer_processor=None,
        default_guidance_scale: float | None = None,
    ):
        super().__init__()
        self.register_modules(model=model, processor=processor, scorer=scorer, scorer_processor=scorer_processor)
        self.register_default_guidance_scale(default_guidance_scale)
        self._known = None

    @property
    def known(self) -> torch.Tensor | None:
        """During a call (e.g. in `callback_on_step_end`): the (B, N) bool mask of the codes known so far."""
        return self._known

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
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool = True,
        choice_temperature: float | None = None,
        num_candidates: int | None = None,
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
            prompt: caption(s).
            negative_prompt: caption(s) of the unconditional branch of guidance (default '').
            height, width: must be unset or the VQ tokenizer's size.
            num_images_per_prompt: images per caption; captions x images is at most
                `max_images_per_call` (256) per call.
            num_inference_steps: decoding iterations (default: the model config's, 12, at most the image tokens).
            guidance_scale: classifier-free guidance scale on the logits, in [0, 1e4] (1 = off). Default: the
                checkpoint's `default_guidance_scale` (model_index.json; the scale its model card chose), else 1.0.
            guidance_schedule: "constant" or "linear" (linear in the share of tokens known after each iteration,
                Muse section 2.7).
            temperature, top_k, top_p, min_p, do_sample: how each code is drawn (transformers semantics).
            choice_temperature: Gumbel noise on the confidence at the first iteration, annealed to 0 (default: the
                model config's, 4.5; 0 keeps the strictly most confident draws).
            num_candidates: draw this many images per caption and keep the `num_images_per_prompt` the scorer ranks
                highest (DALL-E's reranking; needs `scorer` and `prompt`).
            generator: the only source of randomness: one `torch.Generator` for the whole call, or a list of one per
                image drawn (captions x `num_images_per_prompt`, or x `num_candidates` when reranking), in output
                order: image `i` is then the image a one-image call with generator `i` draws.
            output_type: "pil", "np", "pt", or "latent": the (B, N) codes the VQ decoder would decode (when
                reranking, the kept images').
            return_dict: return a [`T2IPipelineOutput`] (else a tuple).
            truncation: cut prompts longer than the text context instead of raising.
            callback_on_step_end: `callback(pipe, i, i, {"latents": codes})` after each iteration, `codes` the (B, N)
                codes so far, unknown ones zero (it observes; what it returns is not used). `pipe.known` is the
                (B, N) bool mask of the known codes during the call.
            callback_on_step_end_tensor_inputs: None or ["latents"].
            prompt_embeds: (B, S, hidden) the text encoder's states of B captions, from `encode_prompt`, instead of
                `prompt`.
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
        text_embeds = {
            "prompt_embeds": prompt_embeds,
            "negative_prompt_embeds": negative_prompt_embeds,
            "prompt_attention_mask": prompt_attention_mask,
            "negative_prompt_attention_mask": negative_prompt_attention_mask,
        }
        num_prompts = self.check_prompt_inputs(prompt, negative_prompt, **text_embeds)
        self.check_num_images(num_images_per_prompt)
        samples, per_prompt = self.check_rerank_inputs(num_images_per_prompt, num_candidates, prompt is not None)
        settings = model.check_sampling(
            num_inference_steps=num_inference_steps,
            choice_temperature=choice_temperature,
            guidance_scale=guidance_scale,
            guidance_schedule=guidance_schedule,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            do_sample=do_sample,
        )
        self.check_image_size(height, width, model.config.image_size)
        self.check_output_inputs(output_type, callback_on_step_end_tensor_inputs, "latents")
        self.check_batch_size(num_prompts, samples, per_prompt)
        generator = self.check_generator(generator, num_prompts * samples, f"prompts x `{per_prompt}`")

        # 2. Encode the prompts (and, under guidance, the negative prompts) once, as one doubled batch
        device = self._execution_device
        guided = settings.sampling.guidance.enabled
        inputs = self.text_inputs(prompt, negative_prompt, samples, guided, truncation, device, **text_embeds)
        state = model.prepare_image_generation(**inputs, settings=settings, generator=generator)

        # 3. Prepare the codes: all unknown ([MASK]), revealed in confidence order on the cosine schedule
        decoder = model.start_image_tokens(state)
        self._known = decoder.known

        # 4. Decoding loop: draw every unknown code, keep the most confident, re-mask the rest
        with self.progress_bar(total=decoder.num_steps) as progress_bar:
            for i in range(decoder.num_steps):
                positions, scale = decoder.plan(i)  # (B, U): the candidates, every unknown position
                if positions.shape[1]:
                    drawn, confidence = model.image_generation_step(
                        state, decoder.tokens, decoder.known, positions, scale
                    )
                    decoder.reveal(positions, drawn, confidence=confidence)
                if callback_on_step_end is not None:
                    callback_on_step_end(self, i, i, {"latents": decoder.tokens})
                progress_bar.update()
        self._known = None

        # 5. Decode to pixels, rerank, output
        prompts = None if prompt is None else as_prompt_list(prompt)
        return self.decode_and_rerank(
            decoder.tokens,
            model.decode_image_tokens,
            prompts,
            num_images_per_prompt,
            num_candidates,
            output_type,
            return_dict,
        )


__all__ = ["MusePipeline"]
