"""Image generation of Muse / MaskGIT as per-step computations that a decoding loop drives (`MuseGenerationMixin` is
mixed into [`MuseForConditionalGeneration`]):

- `check_sampling` validates the sampling arguments once (errors name them);
- `prepare_image_generation` encodes the captions once, both guidance branches as one doubled batch;
- `start_image_tokens` makes the loop's bookkeeping: a `generation.MaskedDecoder` with MaskGIT's `ConfidenceOrder`;
- `image_generation_step` runs the backbone over all N positions (the known codes, [MASK] elsewhere), guides the
  logits at the candidate positions, draws a code at each and returns the codes with their confidence, the
  log-probability of the drawn code under the distribution it was drawn from (after guidance, temperature, top-k /
  top-p / min-p). The decoder keeps the most confident (plus annealed Gumbel noise) and re-masks the rest.

The loop (as [`MusePipeline`] runs it, with a progress bar and callbacks):

    settings = model.check_sampling(num_inference_steps=12, guidance_scale=3.0)
    state = model.prepare_image_generation(**inputs, settings=settings, generator=generator)
    decoder = model.start_image_tokens(state)
    for i in range(decoder.num_steps):
        positions, scale = decoder.plan(i)  # (B, U): every unknown position is a candidate
        tokens, confidence = model.image_generation_step(state, decoder.tokens, decoder.known, positions, scale)
        decoder.reveal(positions, tokens, confidence=confidence)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from transformers.modeling_outputs import BaseModelOutput

from ...generation import ClassifierFreeGuidance, SamplingConfig, TokenSampler
from ...generation.masked import ConfidenceOrder, MaskedDecoder, MaskedDecodingMixin, StepPlan
from ...generation.sampling import Generators, rand_like_on


@dataclass(frozen=True)
class MuseSampling:
    """Validated settings of one generation (from `MuseGenerationMixin.check_sampling`).

    Args:
        sampling: how codes are drawn and how guidance is applied.
        num_steps: decoding iterations K.
        choice_temperature: initial scale of the Gumbel noise on the confidence (annealed to 0).
        recipe: "maskgit" or "amused" (`MuseConfig.sampling_recipe`).
    """

    sampling: SamplingConfig
    num_steps: int
    choice_temperature: float
    recipe: str = "maskgit"


@dataclass
class MuseGenerationState:
    """What one generation keeps between iterations.

    Args:
        batch_size: B, images drawn.
        settings: the validated sampling settings.
        text: the encoded captions, (B', S, C) with B' = 2B under guidance (conditional rows first).
        attention_mask: (B', S) their padding mask.
        sampler: draws codes with the settings' warpers and the generator.
        generator: the only source of randomness (code draws and the confidence noise): one generator, or a list of
            one per image.
    """

    batch_size: int
    settings: MuseSampling
    text: BaseModelOutput
    attention_mask: torch.Tensor
    sampler: TokenSampler
    generator: Generators = None

    @property
    def guidance(self) -> ClassifierFreeGuidance:
        return self.settings.sampling.guidance


class MuseStepOutput(NamedTuple):
    """One iteration's draws at the candidate positions: `tokens` (B, M) codes and their `confidence` (B, M), the
    log-probability of each drawn code."""

    tokens: torch.Tensor
    confidence: torch.Tensor


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class AmusedConfidenceOrder(ConfidenceOrder):
    """The reveal rule of diffusers' `AmusedScheduler` (aMUSEd), for `sampling_recipe="amused"`: MaskGIT's rule with
    aMUSEd's choices, so that a converted checkpoint draws what `AmusedPipeline` draws from the same generator.

    - Tokens kept masked after iteration k: `max(1, min(U - 1, floor(N * cos(pi/2 * (k + 1) / K))))` (U unknown before
      it), computed in float32 as aMUSEd does (`masked_after` computes the same in float64);
    - the noise on the confidence `log(max(p, 1e-20))` is Gumbel noise drawn at EVERY position (B, N), known ones
      included, scaled by `linspace(choice_temperature, 0, K)[k]` (MaskGIT: `choice_temperature * (1 - (k + 1) / K)`),
      and is drawn at every iteration but the last, even at scale 0;
    - the unknown tokens with the lowest noisy confidence stay masked. aMUSEd compares every position, the known ones
      with confidence `log(float32 max)` ~ 88.7 plus noise; they stay known as long as the noise scale is below ~4
      (Gumbel noise lies in [-3.9, 16.7] for float32 uniforms), which its default 2 is. This rule never re-masks a
      known token.
    """

    def start(self, batch, length, generator, device) -> None:
        super().start(batch, length, generator, device)
        self.known = torch.zeros(batch, length, dtype=torch.bool, device=device)  # the decoder's, mirrored

    def plan(self, step, num_steps, length, revealed) -> StepPlan:
        ratio = torch.tensor(step + 1, dtype=torch.float32) / num_steps
        kept = int((length * torch.cos(ratio * math.pi / 2)).floor())
        kept = max(1, min(length - revealed - 1, kept))
        count = length - revealed - (0 if step == num_steps - 1 else kept)
        self.noise_scale = torch.linspace(self.choice_temperature, 0.0, num_steps)[step]
        empty = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        return StepPlan(empty, (length - kept) / length, max(count, 0))

    def select(self, confidence: torch.Tensor, count: int) -> torch.Tensor:
        """(B, U) log-probabilities of the draws at the unknown positions -> (B, count) indices of the kept ones."""
        batch, unknown = confidence.shape
        positions = (~self.known).nonzero()[:, 1].view(batch, unknown)  # (B, U), as `MaskedDecoder.plan` lists them
        if count == unknown:  # the last iteration keeps every draw and draws no noise
            keep = torch.arange(unknown, device=confidence.device).expand(batch, -1)
        else:
            uniform = rand_like_on(tuple(self.known.shape), self.generator, confidence.device)  # (B, N)
            gumbel = -torch.log((-torch.log(uniform.clamp(1e-20))).clamp(1e-20))
            noise = gumbel.gather(1, positions)  # (B, U)
            keep = (confidence.float() + self.noise_scale.to(confidence.device) * noise).topk(count, dim=1).indices
        self.known.scatter_(1, positions.gather(1, keep), True)
        return keep


def _multinomial(probs: torch.Tensor, generator: Generators) -> torch.Tensor:
    """(R, V) probabilities -> (R,) draws with `torch.multinomial` on the generator's device (diffusers'
    `AmusedScheduler.step`); with a list of G generators, G equal groups of consecutive rows, one per generator."""
    if isinstance(generator, (list, tuple)):
        groups = probs.chunk(len(generator))
        return torch.cat([_multinomial(rows, g) for rows, g in zip(groups, generator)])
    device = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(device), 1, generator=generator)[:, 0].to(probs.device)


class MuseGenerationMixin(MaskedDecodingMixin):
    """Per-step generation methods of [`MuseForConditionalGeneration`]."""

    def check_sampling(
        self,
        *,
        num_inference_steps: int | None = None,
        choice_temperature: float | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool = True,
    ) -> MuseSampling:
        """Validate the sampling arguments (see `sample_image_tokens`) with errors that name them.

        `num_inference_steps` defaults to `config.num_inference_steps` capped at the N image tokens;
        `choice_temperature` to `config.choice_temperature`.
        """
        c = self.config
        n = c.num_image_tokens
        steps = min(c.num_inference_steps, n) if num_inference_steps is None else num_inference_steps
        if not _is_int(steps) or not 1 <= steps <= n:
            raise ValueError(
                f"`num_inference_steps` must be an int in [1, {n}] (the image tokens), got {num_inference_steps!r}."
            )
        choice = c.choice_temperature if choice_temperature is None else choice_temperature
        ConfidenceOrder(choice)  # raises a ValueError naming `choice_temperature`
        sampling = SamplingConfig(temperature, top_k, top_p, min_p, do_sample, guidance_scale, guidance_schedule)
        if top_k is not None and top_k > c.image_vocab_size:
            raise ValueError(f"`top_k` ({top_k}) must be at most the codebook size {c.image_vocab_size}.")
        return MuseSampling(sampling, steps, float(choice), c.sampling_recipe)

    def _check_text(
        self, name: str, ids, mask_name: str, mask, batch: int | None = None, length: int | None = None
    ) -> None:
        """`ids` (B, S) integer captions and their optional (B, S) mask; `batch` may be 1 for a negative prompt."""
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.ndim != 2:
            found = tuple(ids.shape) if isinstance(ids, torch.Tensor) else ids
            raise ValueError(f"`{name}` must be integer ids (batch, length) from the processor, got {found}.")
        if batch is not None and ids.shape[0] not in (1, batch):
            raise ValueError(f"`{name}` must have 1 or {batch} rows (one per prompt), got {ids.shape[0]}.")
        if length is not None and ids.shape[1] != length:
            raise ValueError(f"`{name}` must have the prompts' length {length}, got {ids.shape[1]}.")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != ids.shape):
            found = tuple(mask.shape) if isinstance(mask, torch.Tensor) else mask
            raise ValueError(f"`{mask_name}` must have the shape of `{name}` {tuple(ids.shape)}, got {found}.")

    @torch.no_grad()
    def prepare_image_generation(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        settings: MuseSampling | None = None,
        generator: Generators = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> MuseGenerationState:
        """Encode the captions once, both guidance branches as one doubled batch.

        Args:
            input_ids, attention_mask: (B, S) captions (from the processor).
            negative_input_ids, negative_attention_mask: (B or 1, S) unconditional captions, required under
                guidance (the processor's encoding of '' for plain classifier-free guidance).
            settings: from `check_sampling` (default: its defaults).
            generator: the only source of randomness: one generator, or a list of B, one per image (image `i` then
                draws what a one-image generation with generator `i` draws).
            prompt_embeds, negative_prompt_embeds: (B, S, C) and (B or 1, S, C) the text encoder's states instead of
                `input_ids` / `negative_input_ids` (`attention_mask` / `negative_attention_mask` are then their masks).
        """
        settings = settings or self.check_sampling()
        guidance = settings.sampling.guidance
        if (input_ids is None) == (prompt_embeds is None):
            raise ValueError(
                "Pass either `input_ids` (the captions, from the processor) or `prompt_embeds` (their text encoder "
                "states)."
            )
        if prompt_embeds is not None:
            if self.config.backbone == "uvit":
                raise ValueError(
                    "The U-ViT backbone (`backbone='uvit'`) also reads the pooled text, which `prompt_embeds` lack: "
                    "pass `input_ids` (the pipeline's `prompt`)."
                )
            return self._prepare_from_embeds(
                prompt_embeds, attention_mask, negative_prompt_embeds, negative_attention_mask, settings, generator
            )
        self._check_text("input_ids", input_ids, "attention_mask", attention_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if guidance.enabled and negative_input_ids is not None:
            self._check_text(
                "negative_input_ids",
                negative_input_ids,
                "negative_attention_mask",
                negative_attention_mask,
                *input_ids.shape,
            )
            if negative_attention_mask is None:
                negative_attention_mask = torch.ones_like(negative_input_ids)
        input_ids = guidance.double_inputs(input_ids, negative_input_ids)  # (2B, S) under guidance
        attention_mask = guidance.double_inputs(attention_mask, negative_attention_mask, "attention_mask")
        text = self.model.encode_text(input_ids, attention_mask)  # once per call, both branches
        batch = input_ids.shape[0] // 2 if guidance.enabled else input_ids.shape[0]
        return self._state(batch, settings, text, attention_mask, generator)

    def _prepare_from_embeds(
        self, prompt_embeds, attention_mask, negative_prompt_embeds, negative_attention_mask, settings, generator
    ) -> MuseGenerationState:
        """`prepare_image_generation` from the text encoder's states: only the guidance doubling is left to do."""
        guidance = settings.sampling.guidance
        if attention_mask is None:
            attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=prompt_embeds.device)
        if guidance.enabled and negative_prompt_embeds is not None and negative_attention_mask is None:
            negative_attention_mask = torch.ones(
                negative_prompt_embeds.shape[:2], dtype=torch.long, device=negative_prompt_embeds.device
            )
        embeds = guidance.double_inputs(prompt_embeds, negative_prompt_embeds, "prompt_embeds")  # (B', S, C)
        attention_mask = guidance.double_inputs(attention_mask, negative_attention_mask, "attention_mask")
        text = BaseModelOutput(last_hidden_state=embeds)
        return self._state(prompt_embeds.shape[0], settings, text, attention_mask, generator)

    @staticmethod
    def _state(batch, settings, text, attention_mask, generator) -> MuseGenerationState:
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch:
                raise ValueError(
                    f"`generator` is a list of {len(generator)} generators for {batch} images; pass one per image."
                )
            generator = list(generator)
        sampler = TokenSampler(settings.sampling, generator)
        return MuseGenerationState(batch, settings, text, attention_mask, sampler, generator)

    def start_image_tokens(self, state: MuseGenerationState) -> MaskedDecoder:
        """The loop's bookkeeping: all N codes unknown, revealed over `num_steps` iterations in confidence order."""
        rule = AmusedConfidenceOrder if state.settings.recipe == "amused" else ConfidenceOrder
        return MaskedDecoder(
            state.batch_size,
            self.config.num_image_tokens,
            state.settings.num_steps,
            rule(state.settings.choice_temperature),
            state.guidance,
            state.generator,
            device=state.attention_mask.device,
        )

    def image_generation_step(
        self,
        state: MuseGenerationState,
        tokens: torch.Tensor,
        known: torch.Tensor,
        positions: torch.Tensor,
        scale: float,
    ) -> MuseStepOutput:
        """One iteration: the backbone reads the known codes ([MASK] elsewhere) and a code is drawn at each of the
        candidate `positions`.

        Args:
            state: from `prepare_image_generation`.
            tokens: (B, N) codes so far; the values at unknown positions are never read.
            known: (B, N) bool.
            positions: (B, M) candidate positions (`MaskedDecoder.plan`: every unknown one).
            scale: the guidance scale of this iteration (1.0 skips the unconditional rows).

        Returns:
            [`MuseStepOutput`]: `tokens` (B, M) drawn codes and their `confidence` (B, M) log-probabilities.
        """
        batch, count = positions.shape
        guided = state.guidance.enabled and scale != 1.0
        rows = 2 * batch if guided else batch  # at scale 1 (e.g. the linear schedule's start): conditional rows only
        text = state.text  # (B', S, C) states, and for the U-ViT the pooled text (B', P)
        pooled = getattr(text, "pooler_output", None)
        text = (text.last_hidden_state[:rows],) + (() if pooled is None else (pooled[:rows],))
        embeds = self.model.input_embeddings(tokens, ~known)  # (B, N, C)
        if guided:
            embeds = torch.cat([embeds, embeds])  # (2B, N, C)
        hidden = self.model(
            inputs_embeds=embeds, attention_mask=state.attention_mask[:rows], encoder_outputs=text, return_dict=True
        ).last_hidden_state  # (B', N, C)
        if state.settings.recipe == "amused":
            return self._amused_draws(state, hidden, positions, scale if guided else None)
        if guided:
            positions = torch.cat([positions, positions])  # (2B, M)
        selected = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))  # (B', M, C)
        logits = self.lm_head(selected).float()  # (B', M, V)
        if guided:
            logits = state.guidance.combine(logits, scale)  # (B, M, V)
        logits = logits.reshape(batch * count, -1)  # (B * M, V)
        drawn, confidence = state.sampler.sample_with_log_probs(logits)  # (B * M,) each
        return MuseStepOutput(drawn.view(batch, count), confidence.view(batch, count))

    def _amused_draws(
        self, state: MuseGenerationState, hidden: torch.Tensor, positions: torch.Tensor, scale: float | None
    ) -> MuseStepOutput:
        """`sampling_recipe="amused"`: a code drawn at EVERY position with `torch.multinomial` from the softmax of the
        (guided, warped) logits, as `AmusedScheduler.step` draws; the draws and confidences `log(max(p, 1e-20))` at the
        candidate `positions` (B, M) are returned."""
        logits = self.lm_head(hidden).float()  # (B', N, V)
        if scale is not None:
            logits = state.guidance.combine(logits, scale)  # (B, N, V)
        batch, length, vocab = logits.shape
        logits = state.sampler.warp(logits.reshape(batch * length, vocab))  # (B * N, V)
        probs = logits.softmax(dim=-1)
        if state.settings.sampling.do_sample:
            drawn = _multinomial(probs, state.generator)  # (B * N,)
        else:
            drawn = probs.argmax(dim=-1)
        confidence = probs.gather(1, drawn[:, None]).clamp(1e-20).log()  # (B * N, 1)
        drawn, confidence = drawn.view(batch, length), confidence.view(batch, length)
        return MuseStepOutput(drawn.gather(1, positions), confidence.gather(1, positions))

    @torch.no_grad()
    def sample_image_tokens(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        choice_temperature: float | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool = True,
        generator: Generators = None,
    ) -> torch.LongTensor:
        """Generate codes for the captions, the loop only ([`MusePipeline`] runs the same loop with a progress bar
        and callbacks).

        Args:
            input_ids, attention_mask, negative_input_ids, negative_attention_mask: as in `prepare_image_generation`.
            num_inference_steps: iterations K (default `config.num_inference_steps`, at most N).
            choice_temperature: Gumbel noise on the confidence at the first iteration, annealed to 0 at the last
                (default `config.choice_temperature`; 0 keeps the strictly most confident draws).
            guidance_scale, guidance_schedule: classifier-free guidance on the logits, "constant" or "linear" (in the
                share of tokens known after each iteration, Muse section 2.7).
            temperature, top_k, top_p, min_p, do_sample: how each code is drawn (transformers semantics).
            generator: the only source of randomness: one generator, or a list of one per image.

        Returns:
            (B, N) codes in raster order.
        """
        settings = self.check_sampling(
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
        state = self.prepare_image_generation(
            input_ids, attention_mask, negative_input_ids, negative_attention_mask, settings, generator
        )
        decoder = self.start_image_tokens(state)
        for step in range(decoder.num_steps):
            positions, scale = decoder.plan(step)
            if positions.shape[1]:
                drawn, confidence = self.image_generation_step(state, decoder.tokens, decoder.known, positions, scale)
                decoder.reveal(positions, drawn, confidence=confidence)
        return decoder.tokens


__all__ = ["AmusedConfidenceOrder", "MuseGenerationMixin", "MuseGenerationState", "MuseSampling", "MuseStepOutput"]
