"""Image generation of Fluid, as per-step computations that a decoding loop drives (`FluidGenerationMixin` is mixed
into [`FluidForConditionalGeneration`]):

- `check_sampling` validates the sampling arguments once;
- `prepare_image_generation` encodes the captions (or class labels) once, both guidance branches as one doubled
  batch, and, in raster order, preallocates the KV cache;
- `image_generation_step` runs the backbone and draws the tokens at the positions the reveal rule chose: with the
  diffusion head (continuous tokens, MAR's per-token DDPM) or from the logits (discrete tokens).

The loop itself is `generation.MaskedDecoder` with `RandomOrder` (masked iterations on a cosine schedule, MAR / MUSE)
or `RasterOrder` (one token per step with the KV cache); [`FluidPipeline`] runs it with the progress bar and callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import SchedulerMixin
from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache
from transformers.modeling_outputs import BaseModelOutput

from ...generation import ClassifierFreeGuidance, SamplingConfig, TokenSampler
from ...generation.guidance import FULL_INTERVAL, check_guidance_interval
from ...generation.masked import MaskedDecoder, MaskedDecodingMixin, RandomOrder, RasterOrder, RevealRule
from ...generation.sampling import Generators
from ...layers.diffusion_head import check_head_scheduler, ddpm_sample


@dataclass
class FluidGenerationState:
    """What one generation keeps between steps.

    Args:
        batch_size: B, images drawn.
        guidance: classifier-free guidance; when on, every tensor below holds 2B rows, conditional first.
        text, attention_mask: the encoded captions and their mask (text-conditional models).
        class_embeds: (B', C) class embeddings, the learned null class for the unconditional rows (class-conditional).
        cache: raster order's self-attention (preallocated) and cross-attention caches.
        sampler: draws discrete tokens (warpers, greedy or sampled).
        scheduler, num_diffusion_steps, temperature: the diffusion head's sampling (continuous tokens): its
            `DiffusionHeadScheduler` or a fast solver (see `FluidGenerationMixin.prepare_image_generation`).
        guidance_interval: `(start, stop)`, the head's denoising steps that are guided (continuous tokens; see
            `ddpm_sample`).
        generator: the only source of randomness: one generator, or a list of one per image.
    """

    batch_size: int
    guidance: ClassifierFreeGuidance
    text: BaseModelOutput | None = None
    attention_mask: torch.Tensor | None = None
    class_embeds: torch.Tensor | None = None
    cache: EncoderDecoderCache | None = None
    sampler: TokenSampler | None = None
    scheduler: SchedulerMixin | None = None
    num_diffusion_steps: int = 100
    temperature: float = 1.0
    generator: Generators = None
    guidance_interval: tuple[float, float] = FULL_INTERVAL


@dataclass(frozen=True)
class FluidSampling:
    """Validated sampling settings of one Fluid generation (see `FluidGenerationMixin.check_sampling`)."""

    sampling: SamplingConfig
    num_steps: int
    num_diffusion_steps: int
    temperature: float
    guidance_interval: tuple[float, float] = FULL_INTERVAL


class FluidGenerationMixin(MaskedDecodingMixin):
    """Per-step generation methods of [`FluidForConditionalGeneration`]."""

    def reveal_rule(self) -> RevealRule:
        """Raster order for a causal Fluid, else a random order on the cosine schedule."""
        return RasterOrder() if self.config.is_causal else RandomOrder()

    def check_sampling(
        self,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        temperature: float = 1.0,
        num_diffusion_steps: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool = True,
        guidance_interval: tuple[float, float] | None = None,
    ) -> FluidSampling:
        """Validate the sampling arguments (see `sample_image_tokens`) with errors that name them."""
        c = self.config
        if guidance_interval is not None:
            guidance_interval = check_guidance_interval(guidance_interval)
            if not c.is_continuous and guidance_interval != FULL_INTERVAL:
                raise ValueError(
                    f"`guidance_interval` ({guidance_interval!r}) limits guidance to some of the diffusion head's "
                    "denoising steps; this Fluid model draws discrete tokens, with no head. Leave it out."
                )
        if c.is_continuous:
            bad = isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0
            if bad or temperature == float("inf"):  # the head's temperature may be 0 (the mean path)
                raise ValueError(
                    f"`temperature` must be a finite number >= 0 for continuous Fluid, got {temperature!r}."
                )
            given = {"top_k": top_k, "top_p": top_p, "min_p": min_p}
            given = ", ".join(f"`{name}`={value!r}" for name, value in given.items() if value is not None)
            if given:
                raise ValueError(
                    f"`top_k` / `top_p` / `min_p` apply to discrete Fluid only (got {given}); continuous Fluid uses "
                    "`temperature`."
                )
            if not do_sample:
                raise ValueError(
                    "`do_sample=False` applies to discrete Fluid only; use `temperature=0` for the head's mean path."
                )
            sampling = SamplingConfig(guidance_scale=guidance_scale, guidance_schedule=guidance_schedule)
        else:
            sampling = SamplingConfig(temperature, top_k, top_p, min_p, do_sample, guidance_scale, guidance_schedule)
        n = c.num_image_tokens
        if c.is_causal:
            if num_inference_steps not in (None, n):
                raise ValueError(
                    f"Raster-order Fluid draws one token per step: `num_inference_steps` must be None or {n}, got "
                    f"{num_inference_steps!r}."
                )
            steps = n
        else:
            steps = min(64, n) if num_inference_steps is None else num_inference_steps
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n:
                raise ValueError(
                    f"`num_inference_steps` must be an int in [1, {n}] (the image tokens), got {steps!r}."
                )
        diffusion_steps = c.num_diffusion_steps if num_diffusion_steps is None else num_diffusion_steps
        if c.is_continuous and (
            isinstance(diffusion_steps, bool) or not isinstance(diffusion_steps, int) or diffusion_steps < 1
        ):
            raise ValueError(f"`num_diffusion_steps` must be a positive int, got {diffusion_steps!r}.")
        return FluidSampling(sampling, steps, diffusion_steps, float(temperature), guidance_interval or FULL_INTERVAL)

    def _check_conditions(self, input_ids, negative_input_ids, class_labels, prompt_embeds=None) -> int:
        """Validate the text / class inputs (the negative captions: `ClassifierFreeGuidance.double_inputs`); returns
        the batch size."""
        c = self.config
        if c.is_class_conditional:
            if input_ids is not None or negative_input_ids is not None or prompt_embeds is not None:
                name = "prompt_embeds" if prompt_embeds is not None else "input_ids"
                raise ValueError(f"This Fluid model is class-conditional: pass `class_labels`, not `{name}`.")
            if class_labels is None:
                raise ValueError(
                    f"Pass `class_labels` (batch,) ids in [0, {c.num_classes}) for class-conditional Fluid."
                )
            return class_labels.shape[0]
        if class_labels is not None:
            raise ValueError("`class_labels` apply to class-conditional Fluid (`num_classes`); pass `input_ids`.")
        if (input_ids is None) == (prompt_embeds is None):
            raise ValueError(
                "Pass either `input_ids` (the captions, from the processor) or `prompt_embeds` (their text encoder "
                "states)."
            )
        return (input_ids if prompt_embeds is None else prompt_embeds).shape[0]

    @torch.no_grad()
    def prepare_image_generation(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        class_labels: torch.LongTensor | None = None,
        settings: FluidSampling | None = None,
        scheduler: SchedulerMixin | None = None,
        generator: Generators = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> FluidGenerationState:
        """Encode the condition once (both guidance branches as one doubled batch); raster order: preallocate the cache.

        Args:
            input_ids, attention_mask: (B, S) captions (from the processor).
            negative_input_ids, negative_attention_mask: (B or 1, S) unconditional captions, required under guidance.
            class_labels: (B,) class ids, class-conditional Fluid only; guidance's unconditional rows use the learned
                null class.
            settings: from `check_sampling` (default: its defaults).
            scheduler: what samples the diffusion head (continuous only): default `self.scheduler`, the
                `DiffusionHeadScheduler` of the config (ancestral DDPM with temperature, MAR's sampler); or a fast
                diffusers solver built from it, e.g. `DPMSolverMultistepScheduler.from_config(self.scheduler.config)`
                (DPM-Solver++, 2nd order), `DDIMScheduler`, `UniPCMultistepScheduler`. Checked here
                (`check_head_scheduler`): another noise schedule or prediction type, or `temperature != 1` with a
                scheduler that has no temperature, is refused.
            generator: the only source of randomness: one generator, or a list of B, one per image (image `i` then
                draws what a one-image generation with generator `i` draws).
            prompt_embeds, negative_prompt_embeds: (B, S, C) and (B or 1, S, C) the text encoder's states instead of
                `input_ids` / `negative_input_ids` (`attention_mask` / `negative_attention_mask` are then their masks).
        """
        c = self.config
        settings = settings or self.check_sampling()
        guidance = settings.sampling.guidance
        batch = self._check_conditions(input_ids, negative_input_ids, class_labels, prompt_embeds)
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch:
                raise ValueError(
                    f"`generator` is a list of {len(generator)} generators for {batch} images; pass one per image."
                )
            generator = list(generator)
        state = FluidGenerationState(
            batch_size=batch,
            guidance=guidance,
            num_diffusion_steps=settings.num_diffusion_steps,
            temperature=settings.temperature,
            generator=generator,
            guidance_interval=settings.guidance_interval,
        )
        if c.is_continuous:
            state.scheduler = scheduler if scheduler is not None else self.scheduler
            check_head_scheduler(state.scheduler, self.scheduler, settings.temperature)
        else:
            state.sampler = TokenSampler(settings.sampling, generator)
        if c.is_class_conditional:
            conditions = self.model.embed_classes(class_labels)  # (B, C)
            if guidance.enabled:
                conditions = torch.cat([conditions, self.model.null_class_embedding.expand_as(conditions)])
            state.class_embeds = conditions
            return state
        positive, negative = (
            (input_ids, negative_input_ids) if prompt_embeds is None else (prompt_embeds, negative_prompt_embeds)
        )
        if attention_mask is None:
            attention_mask = torch.ones(positive.shape[:2], dtype=torch.long, device=positive.device)
        if guidance.enabled and negative is not None and negative_attention_mask is None:
            negative_attention_mask = torch.ones(negative.shape[:2], dtype=torch.long, device=negative.device)
        if prompt_embeds is None:
            input_ids = guidance.double_inputs(input_ids, negative_input_ids)  # (B', S)
            attention_mask = guidance.double_inputs(attention_mask, negative_attention_mask, "attention_mask")
            state.text = self.model.encode_text(input_ids, attention_mask)  # once per prompt, both branches
        else:
            embeds = guidance.double_inputs(prompt_embeds, negative_prompt_embeds, "prompt_embeds")  # (B', S, C)
            attention_mask = guidance.double_inputs(attention_mask, negative_attention_mask, "attention_mask")
            state.text = BaseModelOutput(last_hidden_state=embeds)
        state.attention_mask = attention_mask
        if c.is_causal:
            state.cache = EncoderDecoderCache(StaticCache(config=c, max_cache_len=c.num_image_tokens), DynamicCache())
        return state

    def start_image_tokens(self, state: FluidGenerationState, reveal: RevealRule | None = None, num_steps=None):
        """A [`MaskedDecoder`] for this generation: the tokens (zeros until known) and the reveal rule's plan."""
        c = self.config
        device = (state.class_embeds if state.text is None else state.text.last_hidden_state).device
        token_shape, dtype = ((c.token_dim,), self.dtype) if c.is_continuous else ((), torch.long)
        return MaskedDecoder(
            state.batch_size,
            c.num_image_tokens,
            num_steps or c.num_image_tokens,
            reveal or self.reveal_rule(),
            state.guidance,
            state.generator,
            token_shape,
            dtype,
            device,
        )

    def image_generation_step(
        self,
        state: FluidGenerationState,
        tokens: torch.Tensor,
        known: torch.Tensor,
        positions: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """One iteration: the backbone reads the known tokens, the head draws new ones at `positions`.

        Args:
            state: from `prepare_image_generation`.
            tokens: (B, N, D) continuous or (B, N) ids, unknown ones zero.
            known: (B, N) bool.
            positions: (B, M) positions to draw; raster order: the one position `i` of this step.
            scale: the guidance scale of this step.

        Returns:
            (B, M, D) latent tokens or (B, M) ids.
        """
        guidance = state.guidance
        if self.config.is_causal:
            i = int(positions[0, 0])
            if i == 0:
                rows = state.text.last_hidden_state.shape[0]
                embeds = self.model.special_embedding.to(self.dtype).expand(rows, 1, -1)  # (B', 1, C)
            else:
                embeds = self.model.embed_image_tokens(guidance.double(tokens[:, i - 1 : i]))  # (B', 1, C)
            selected = self.model(
                inputs_embeds=embeds,
                attention_mask=state.attention_mask,
                encoder_outputs=state.text,
                cache=state.cache,
                use_cache=True,
                return_dict=True,
            ).last_hidden_state[:, -1:]  # (B', 1, C)
        else:
            hidden = self._masked_backbone(state, tokens, ~known)  # (B', N, C)
            index = guidance.double(positions)
            selected = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # (B', M, C)
        return self._draw(selected, guidance.enabled, scale, state)

    def _masked_backbone(self, state: FluidGenerationState, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Bidirectional backbone over all N positions with `mask` (B, N) unknown -> (B', N, C)."""
        guidance = state.guidance
        if state.class_embeds is not None:
            return self.model(
                image_tokens=guidance.double(tokens),
                mask=guidance.double(mask),
                class_embeds=state.class_embeds,
                return_dict=True,
            ).last_hidden_state
        embeds = guidance.double(self.model.input_embeddings(tokens, mask))
        return self.model(
            inputs_embeds=embeds,
            attention_mask=state.attention_mask,
            encoder_outputs=state.text,
            use_cache=False,
            return_dict=True,
        ).last_hidden_state

    def _draw(self, hidden: torch.Tensor, guided: bool, scale: float, state: FluidGenerationState) -> torch.Tensor:
        """New tokens from backbone outputs hidden (B', M, C) -> (B, M, D) latents or (B, M) ids."""
        batch = hidden.shape[0] // 2 if guided else hidden.shape[0]
        if guided and scale == 1.0:  # e.g. the first iteration of the linear schedule: the conditional rows only
            hidden, guided = hidden[:batch], False
        count = hidden.shape[1]
        if self.config.is_continuous:
            condition = hidden.reshape(-1, hidden.shape[-1])  # (B' * M, C): conditional rows first

            def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # x: 2N rows, or N unguided (ddpm_sample)
                return self.diffusion_head(x, t, condition[: x.shape[0]])

            shape = (batch * count, self.config.token_dim)
            if isinstance(state.generator, list):
                denoise, shape = self._per_image_denoiser(condition, count), (batch, count * self.config.token_dim)
            new = ddpm_sample(
                denoise,
                shape,
                state.scheduler,
                state.num_diffusion_steps,
                state.generator,
                state.temperature,
                scale if guided else 1.0,
                device=hidden.device,
                dtype=hidden.dtype,
                guidance_interval=state.guidance_interval,
            )
            return new.view(batch, count, -1)
        logits = self.lm_head(hidden).float()  # (B', M, V)
        if guided:
            logits = state.guidance.combine(logits, scale)
        return state.sampler(logits.reshape(batch * count, -1)).view(batch, count)

    def _per_image_denoiser(self, condition: torch.Tensor, count: int):
        """The diffusion head over one row per image, for one generator per image: `ddpm_sample` then draws each
        image's noise (B, M * D) from its own generator, row by row, the very values a one-image call draws as
        (M, D) (a draw depends only on the generator and the number of values).

        The head still runs on all (B' * M) tokens at once. Its (B' * M, D) noise prediction becomes (B', M * D); a
        learned-variance head's (B' * M, 2D) output becomes (B', 2 * M * D), every token's noise first and then every
        token's variance values, the layout `ddpm_sample` and the scheduler split in two halves.
        """
        width = self.config.token_dim

        def denoise(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            rows = x.shape[0]
            tokens = x.reshape(rows * count, width)  # (B' * M, D)
            prediction = self.diffusion_head(
                tokens, timesteps.repeat_interleave(count), condition[: rows * count]
            )  # (B' * M, kD); B' = B on the head's unguided steps (`ddpm_sample`)
            parts = prediction.view(rows, count, -1).split(width, dim=-1)  # noise (B', M, D) [, variance (B', M, D)]
            return torch.cat([part.reshape(rows, count * width) for part in parts], dim=1)  # (B', k * M * D)

        return denoise

    @torch.no_grad()
    def sample_image_tokens(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        temperature: float = 1.0,
        num_diffusion_steps: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool = True,
        generator: Generators = None,
        scheduler: SchedulerMixin | None = None,
        class_labels: torch.LongTensor | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """Generate image tokens for the captions (or, class-conditional, the class labels), without a pipeline
        around the loop ([`FluidPipeline`] runs the same loop with a progress bar and callbacks).

        Args:
            input_ids, attention_mask, negative_input_ids, negative_attention_mask, class_labels: as in
                `prepare_image_generation`.
            num_inference_steps: random order: iterations (default 64 as the paper, or N when smaller; at most N);
                raster order: must be None or N.
            guidance_scale, guidance_schedule: classifier-free guidance, "constant" or "linear". Random order: linear
                in the share of tokens revealed after each iteration (MAR / MUSE); raster order: from 1 at the first
                token to `guidance_scale` at the last.
            temperature: continuous: noise scale of the diffusion head's reverse steps (MAR); discrete: softmax
                temperature.
            num_diffusion_steps: reverse steps of the diffusion head per token (default `config.num_diffusion_steps`).
            top_k, top_p, min_p, do_sample: discrete only (transformers semantics).
            generator: the only source of randomness (orders, noise, draws): one generator, or a list of one per image.
            scheduler: what samples the diffusion head: `self.scheduler` (default, DDPM) or a fast solver built from
                it, e.g. `DPMSolverMultistepScheduler.from_config(model.scheduler.config)` with
                `num_diffusion_steps=15` (see `prepare_image_generation`).
            guidance_interval: continuous only: `(start, stop)`, guide only the head's denoising steps whose progress
                `i / (N - 1)` lies in it, the others unguided (default every step; see `ddpm_sample`).

        Returns:
            (B, N, D) latent tokens (continuous) or (B, N) ids (discrete), in raster order.
        """
        settings = self.check_sampling(
            num_inference_steps,
            guidance_scale,
            guidance_schedule,
            temperature,
            num_diffusion_steps,
            top_k,
            top_p,
            min_p,
            do_sample,
            guidance_interval,
        )
        state = self.prepare_image_generation(
            input_ids,
            attention_mask,
            negative_input_ids,
            negative_attention_mask,
            class_labels,
            settings,
            scheduler,
            generator,
        )
        decoder = self.start_image_tokens(state, num_steps=settings.num_steps)
        for step in range(decoder.num_steps):
            positions, scale = decoder.plan(step)
            if positions.shape[1]:
                decoder.reveal(
                    positions, self.image_generation_step(state, decoder.tokens, decoder.known, positions, scale)
                )
        return decoder.tokens


__all__ = ["FluidGenerationMixin", "FluidGenerationState", "FluidSampling"]
