"""`DallePipeline`: caption -> image tokens (KV-cached sampling, optional guidance) -> dVAE decoder -> images,
with optional reranking of N candidates by a contrastive image-text scorer (DALL-E section 2.6)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...generation import AutoregressiveDecoder
from ...models.dalle.modeling_dalle import DalleForConditionalGeneration
from ...models.dalle.processing_dalle import DalleProcessor
from ...processing_utils import as_prompt_list
from ..autoregressive import AutoregressiveT2IPipeline
from ..pipeline_output import T2IPipelineOutput


class DallePipeline(AutoregressiveT2IPipeline):
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
    prompt_embeds_unsupported = (
        "DALL-E has no separate text encoder: the caption's BPE tokens are the first positions of the same "
        "transformer sequence as the image tokens, so there is no text-encoder output to precompute."
    )

    def __init__(
        self,
        model: DalleForConditionalGeneration,
        processor: DalleProcessor,
        scorer=None,
        scorer_processor=None,
        default_guidance_scale: float | None = None,
    ):
        super().__init__()
        self.register_modules(model=model, processor=processor, scorer=scorer, scorer_processor=scorer_processor)
        self.register_default_guidance_scale(default_guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
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
        generator: torch.Generator | None = None,
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
            negative_prompt: caption(s) of the unconditional branch of guidance (default: the empty caption).
            height, width: must be unset or equal to the dVAE's `image_size` (DALL-E draws one size).
            num_images_per_prompt: images returned per prompt; prompts x images (x `num_candidates` when
                reranking) is at most `max_images_per_call` (256) per call.
            guidance_scale: classifier-free guidance on the token logits, in [0, 1e4]; 1.0 disables it. Default: the
                checkpoint's `default_guidance_scale` (model_index.json; the scale its model card chose), else 1.0.
            guidance_schedule: "constant", or "linear" from 1 to `guidance_scale` over the image tokens.
            temperature, top_k, top_p, min_p: sampling filters (transformers semantics).
            do_sample: sample (True) or decode greedily.
                Each of these five left unset takes the model's `generation_config` value (generation_config.json: the
                sampling settings the checkpoint's model card chose, as for `generate()`), else temperature 1.0, no
                filter and sampling.
            num_candidates: sample this many images per prompt and keep the `num_images_per_prompt` the scorer
                ranks highest (needs `scorer`).
            generator: the only source of randomness: one `torch.Generator` for the whole call (the same seed gives
                the same images), or a list of one per image drawn (prompts x `num_images_per_prompt`, or x
                `num_candidates` when reranking), in output order: image `i` is then the image a one-image call with
                generator `i` draws.
            output_type: "pil", "np", "pt", or "latent": the (B, N) image codes the dVAE would decode.
            return_dict: return a [`T2IPipelineOutput`] instead of a tuple.
            truncation: cut prompts longer than the text context instead of raising.
            callback_on_step_end: `callback(pipe, step, step, {"latents": tokens_so_far})` after each image token
                (`latents` are the (B, i + 1) codes drawn so far; the callback observes, what it returns is not used:
                changing drawn tokens would invalidate the cache).
            callback_on_step_end_tensor_inputs: must be None or `["latents"]`.
            prompt_embeds, negative_prompt_embeds: not supported (a `ValueError` says why): DALL-E has no text
                encoder whose output could be precomputed; its caption tokens share the transformer sequence with the
                image tokens. Pass `prompt` / `negative_prompt`.

        Returns:
            [`T2IPipelineOutput`] with `images` (and `scores` when reranked), or `(images,)`.
        """
        # 1. Check inputs
        guidance_scale = self.guidance_scale_or_default(guidance_scale)
        self.check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        prompts = as_prompt_list(prompt)
        self.check_num_images(num_images_per_prompt)
        sampling = self.model.image_sampling_config(
            temperature, top_k, top_p, min_p, do_sample, guidance_scale, guidance_schedule
        )
        samples, per_prompt = self.check_rerank_inputs(num_images_per_prompt, num_candidates)
        self.check_image_size(height, width, self.model.config.vq_config.image_size)
        self.check_output_inputs(output_type, callback_on_step_end_tensor_inputs, "latents")
        self.check_batch_size(len(prompts), samples, per_prompt)
        generator = self.check_generator(generator, len(prompts) * samples, f"prompts x `{per_prompt}`")

        # 2. Encode the prompts (and, under guidance, the negative prompts)
        device = self._execution_device
        inputs = self.encode_prompts(prompts, negative_prompt, samples, sampling.guidance.enabled, truncation, device)

        # 3. Prepare the decoding state and the sampler
        state = self.model.prepare_image_generation(**inputs, guidance=sampling.guidance)
        batch = len(prompts) * samples
        decoder = AutoregressiveDecoder(batch, self.model.config.num_image_tokens, sampling, generator)

        # 4. Decoding loop
        tokens = self.raster_decode(state, decoder, callback_on_step_end)

        # 5. Decode to pixels, rerank, output
        return self.decode_and_rerank(
            tokens,
            self.model.decode_image_tokens,
            prompts,
            num_images_per_prompt,
            num_candidates,
            output_type,
            return_dict,
        )


__all__ = ["DallePipeline"]
