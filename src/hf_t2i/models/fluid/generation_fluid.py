"""Sampling of Fluid: random order (masked iterations on a cosine schedule, MAR / MUSE) and raster order (one token
per step with the KV cache), text- or class-conditional, with the diffusion head (continuous tokens) or logits
(discrete tokens). `FluidGenerationMixin` is mixed into [`FluidForConditionalGeneration`]."""

from __future__ import annotations

import math

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache

from ...generation import (
    apply_guidance,
    autoregressive_sample,
    build_logits_processor,
    guidance_scale_at,
    rand_like_on,
    sample_tokens,
    validate_sampling_args,
)
from ...layers.diffusion_head import DiffusionHeadScheduler, ddpm_sample


def cosine_mask_ratio(progress: torch.Tensor | float) -> torch.Tensor | float:
    """Fraction of tokens still masked at `progress` in [0, 1]: `cos(pi / 2 * progress)` (MaskGIT / MUSE / Fluid)."""
    if isinstance(progress, torch.Tensor):
        return torch.cos(math.pi / 2 * progress)
    return math.cos(math.pi / 2 * progress)


def random_orders(batch: int, length: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(B, N) independent random permutations of `range(N)` drawn from `generator`."""
    return rand_like_on((batch, length), generator, device).argsort(dim=1)


def masked_after(step: int, num_steps: int, length: int, revealed: int) -> int:
    """Tokens kept masked after iteration `step` of `num_steps` when `revealed` of `length` are known before it (MAR's
    `mask_len`): `floor(N * cos(pi/2 * (step+1) / K))`, at least 1 and at most all but one of the unknown tokens, so
    every iteration reveals at least one. (The last iteration reveals the rest whatever this says.)"""
    return max(1, min(length - revealed - 1, math.floor(length * cosine_mask_ratio((step + 1) / num_steps))))


def random_order_guidance_scale(guidance_scale: float, schedule: str, still_masked: int, length: int) -> float:
    """Random order: "constant", or "linear" in the tokens revealed after this iteration,
    `1 + (s - 1) * (N - still_masked) / N` (MAR's `cfg_schedule="linear"`, following MUSE)."""
    if schedule == "constant":
        return guidance_scale
    return 1.0 + (guidance_scale - 1.0) * (length - still_masked) / length


class FluidGenerationMixin:
    """`sample_image_tokens` of [`FluidForConditionalGeneration`]."""

    def _draw(
        self,
        hidden: torch.Tensor,
        guided: bool,
        scale: float,
        generator,
        scheduler,
        diffusion_steps: int,
        temperature: float,
        processors,
        do_sample: bool,
    ) -> torch.Tensor:
        """New tokens from backbone outputs hidden (B', M, C) -> (B, M, D) latents or (B, M) ids."""
        batch = hidden.shape[0] // 2 if guided else hidden.shape[0]
        if guided and scale == 1.0:  # e.g. the first iteration of the linear schedule: the conditional rows only
            hidden, guided = hidden[:batch], False
        count = hidden.shape[1]
        if self.config.is_continuous:
            condition = hidden.reshape(-1, hidden.shape[-1])  # (B' * M, C): conditional rows first
            new = ddpm_sample(
                lambda x, t: self.diffusion_head(x, t, condition),
                (batch * count, self.config.token_dim),
                scheduler,
                diffusion_steps,
                generator,
                temperature,
                scale,
                device=hidden.device,
                dtype=hidden.dtype,
            )
            return new.view(batch, count, -1)
        logits = self.lm_head(hidden).float()  # (B', M, V)
        if guided:
            logits = apply_guidance(logits, scale)
        flat = logits.reshape(batch * count, -1)
        if processors:
            flat = processors(None, flat)
        return sample_tokens(flat, generator, do_sample).view(batch, count)

    def _check_conditions(self, input_ids, negative_input_ids, class_labels, guided: bool) -> int:
        """Validate the text / class inputs of `sample_image_tokens`; returns the batch size."""
        c = self.config
        if c.is_class_conditional:
            if input_ids is not None or negative_input_ids is not None:
                raise ValueError("This Fluid model is class-conditional: pass `class_labels`, not `input_ids`.")
            if class_labels is None:
                raise ValueError(
                    f"Pass `class_labels` (batch,) ids in [0, {c.num_classes}) for class-conditional Fluid."
                )
            return class_labels.shape[0]
        if class_labels is not None:
            raise ValueError("`class_labels` apply to class-conditional Fluid (`num_classes`); pass `input_ids`.")
        if input_ids is None:
            raise ValueError("Pass `input_ids` (the captions, from the processor).")
        if guided:
            if negative_input_ids is None:
                raise ValueError(
                    "Guidance needs `negative_input_ids`: the processor's encoding of the negative prompt ('' for "
                    "plain classifier-free guidance)."
                )
            if negative_input_ids.shape[1] != input_ids.shape[1]:
                raise ValueError(
                    f"`negative_input_ids` must have the prompts' length {input_ids.shape[1]}, got "
                    f"{negative_input_ids.shape[1]}."
                )
        return input_ids.shape[0]

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
        generator: torch.Generator | None = None,
        scheduler: DiffusionHeadScheduler | None = None,
        callback=None,
        progress_bar=None,
        class_labels: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """Generate image tokens for the captions (or, class-conditional, the class labels).

        Args:
            input_ids, attention_mask: (B, S) captions (from the processor).
            negative_input_ids, negative_attention_mask: (B or 1, S) unconditional captions, required when
                `guidance_scale != 1` (the processor's encoding of '' for plain classifier-free guidance).
            num_inference_steps: random order: iterations (default 64 as the paper, or N when smaller; at most N);
                raster order: must be None or N.
            guidance_scale, guidance_schedule: classifier-free guidance, "constant" or "linear". Random order: linear
                in the share of tokens revealed after each iteration (MAR / MUSE); raster order: from 1 at the first
                token to `guidance_scale` at the last.
            temperature: continuous: noise scale of the diffusion head's reverse steps (MAR); discrete: softmax
                temperature.
            num_diffusion_steps: reverse steps of the diffusion head per token (default `config.num_diffusion_steps`).
            top_k, top_p, min_p, do_sample: discrete only (transformers semantics).
            generator: the only source of randomness (orders, noise, draws).
            scheduler: the head's DDPM scheduler (default: `self.scheduler`, built from the config).
            callback: `callback(i, tokens)` after each iteration; `tokens` as returned, unknown ones zero.
            class_labels: (B,) class ids, class-conditional Fluid only (instead of the captions); guidance's
                unconditional rows use the learned null class.

        Returns:
            (B, N, D) latent tokens (continuous) or (B, N) ids (discrete), in raster order.
        """
        c = self.config
        bad_temperature = isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0
        if c.is_continuous and bad_temperature:  # the head's temperature may be 0 (the mean path)
            raise ValueError(f"`temperature` must be a number >= 0 for continuous Fluid, got {temperature!r}.")
        validate_sampling_args(
            1.0 if c.is_continuous else temperature, top_k, top_p, min_p, guidance_scale, guidance_schedule
        )
        if c.is_continuous and any(v is not None for v in (top_k, top_p, min_p)):
            raise ValueError(
                "`top_k` / `top_p` / `min_p` apply to discrete Fluid only; continuous Fluid uses `temperature`."
            )
        if c.is_continuous and not do_sample:
            raise ValueError(
                "`do_sample=False` applies to discrete Fluid only; use `temperature=0` for the head's mean path."
            )
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
        if c.is_continuous:
            scheduler = scheduler if scheduler is not None else self.scheduler
            if isinstance(diffusion_steps, bool) or not isinstance(diffusion_steps, int) or diffusion_steps < 1:
                raise ValueError(f"`num_diffusion_steps` must be a positive int, got {diffusion_steps!r}.")
        guided = guidance_scale != 1.0
        batch = self._check_conditions(input_ids, negative_input_ids, class_labels, guided)
        processors = None if c.is_continuous else build_logits_processor(temperature, top_k, top_p, min_p)
        draw_kwargs = dict(
            generator=generator,
            scheduler=scheduler,
            diffusion_steps=diffusion_steps,
            temperature=temperature,
            processors=processors,
            do_sample=do_sample,
        )
        if c.is_class_conditional:
            conditions = self.model.embed_classes(class_labels)  # (B, C)
            if guided:
                conditions = torch.cat([conditions, self.model.null_class_embedding.expand_as(conditions)])
            device = class_labels.device

            def backbone(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                if guided:
                    tokens, mask = torch.cat([tokens, tokens]), torch.cat([mask, mask])
                return self.model(image_tokens=tokens, mask=mask, class_embeds=conditions).last_hidden_state

        else:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            if guided:
                if negative_attention_mask is None:
                    negative_attention_mask = torch.ones_like(negative_input_ids)
                input_ids = torch.cat([input_ids, negative_input_ids.to(input_ids.device).expand(batch, -1)])
                attention_mask = torch.cat(
                    [attention_mask, negative_attention_mask.to(attention_mask.device).expand(batch, -1)]
                )
            text = self.model.encode_text(input_ids, attention_mask)  # once per prompt, both branches
            device = input_ids.device
            if c.is_causal:
                return self._sample_raster(
                    text,
                    attention_mask,
                    batch,
                    guided,
                    guidance_scale,
                    guidance_schedule,
                    draw_kwargs,
                    callback,
                    progress_bar,
                )

            def backbone(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                embeds = self.model.input_embeddings(tokens, mask)
                if guided:
                    embeds = torch.cat([embeds, embeds])
                return self.model(
                    inputs_embeds=embeds, attention_mask=attention_mask, encoder_outputs=text, use_cache=False
                ).last_hidden_state  # (B', N, C)

        if c.is_continuous:
            tokens = torch.zeros(batch, n, c.token_dim, device=device, dtype=self.dtype)
        else:
            tokens = torch.zeros(batch, n, dtype=torch.long, device=device)
        known = torch.zeros(batch, n, dtype=torch.bool, device=device)
        orders = random_orders(batch, n, generator, device)  # (B, N): position revealed k-th
        revealed = 0
        for step in range(steps):
            kept = masked_after(step, steps, n, revealed)
            count = n - revealed - (0 if step == steps - 1 else kept)
            if count > 0:
                hidden = backbone(tokens, ~known)  # (B', N, C)
                positions = orders[:, revealed : revealed + count]  # (B, M)
                index = positions.repeat(2, 1) if guided else positions
                selected = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # (B', M, C)
                scale = random_order_guidance_scale(guidance_scale, guidance_schedule, kept, n)
                new = self._draw(selected, guided, scale, **draw_kwargs)
                if c.is_continuous:
                    tokens.scatter_(1, positions[..., None].expand(-1, -1, c.token_dim), new.to(tokens.dtype))
                else:
                    tokens.scatter_(1, positions, new)
                known.scatter_(1, positions, True)
                revealed += count
            if callback is not None:
                callback(step, tokens)
            if progress_bar is not None:
                progress_bar.update()
        return tokens

    def _sample_raster(
        self,
        text,
        attention_mask,
        batch,
        guided,
        guidance_scale,
        guidance_schedule,
        draw_kwargs,
        callback,
        progress_bar,
    ) -> torch.Tensor:
        """One token per step with the KV cache: self-attention keys/values appended (preallocated StaticCache),
        cross-attention keys/values computed once."""
        c = self.config
        n = c.num_image_tokens
        input_rows = text.last_hidden_state.shape[0]
        cache = EncoderDecoderCache(StaticCache(config=c, max_cache_len=n), DynamicCache())
        start = self.model.special_embedding.to(self.dtype).expand(input_rows, 1, -1)  # (B', 1, C)

        def forward(embeds: torch.Tensor) -> torch.Tensor:
            return self.model(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                encoder_outputs=text,
                cache=cache,
                use_cache=True,
            ).last_hidden_state[:, -1:]  # (B', 1, C)

        if not c.is_continuous:
            head = self.lm_head

            def step(tokens: torch.Tensor | None) -> torch.Tensor:
                embeds = start if tokens is None else self.model.embed_image_tokens(tokens)
                return head(forward(embeds))[:, 0].float()  # (B', V)

            return autoregressive_sample(
                step,
                batch,
                n,
                logits_processor=draw_kwargs["processors"],
                guidance_scale=guidance_scale,
                guidance_schedule=guidance_schedule,
                do_sample=draw_kwargs["do_sample"],
                generator=draw_kwargs["generator"],
                callback=callback,
                progress_bar=progress_bar,
            )
        tokens = torch.zeros(batch, n, c.token_dim, device=text.last_hidden_state.device, dtype=self.dtype)
        embeds = start
        for i in range(n):
            hidden = forward(embeds)
            scale = guidance_scale_at(guidance_scale, i, n, guidance_schedule)
            new = self._draw(hidden, guided, scale, **draw_kwargs)  # (B, 1, D)
            tokens[:, i : i + 1] = new.to(tokens.dtype)
            embeds = self.model.embed_image_tokens(torch.cat([new, new]) if guided else new)
            if callback is not None:
                callback(i, tokens)
            if progress_bar is not None:
                progress_bar.update()
        return tokens


__all__ = ["FluidGenerationMixin", "cosine_mask_ratio", "masked_after", "random_orders"]
