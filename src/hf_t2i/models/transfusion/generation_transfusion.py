"""Transfusion inference (section 2.5): LM mode samples text with the KV cache; at `<boi>` the model switches to
diffusion mode, appends N noise patches and denoises them for `num_inference_steps` with a diffusers scheduler,
reusing the cached prefix at every step (only the N patch positions run; their keys/values are dropped from the cache
after each step); then the clean image and `<eoi>` enter the cache and LM mode resumes.

Classifier-free guidance on the noise: eps = eps_u + s * (eps_c - eps_u), with the unconditional branch written the
way caption dropout wrote it in training: `<s> </s> <boi>`.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from transformers.cache_utils import DynamicCache

from ...generation import ClassifierFreeGuidance, SamplingConfig, TokenSampler
from ...generation.guidance import FULL_INTERVAL, step_progress
from ...generation.sampling import Generators
from ...layers import cache_length, truncate_cache


SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}
#: diffusers schedulers that sample a DDPM-trained model (the family `DDPMScheduler.from_config` converts between)
DDPM_FAMILY_SCHEDULERS = frozenset(DDPMScheduler._compatibles) | {"DDPMScheduler"}


def scheduler_step_kwargs(scheduler: SchedulerMixin, generator: Generators) -> dict:
    """`generator=` for the schedulers whose `step` draws noise (DDPM, Euler, the SDE solvers); deterministic ones
    (UniPC, DEIS, ...) take no generator."""
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


def left_pad_concat(parts: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[(ids (b_i, L_i), mask (b_i, L_i)), ...] -> one left-padded batch (sum b_i, max L_i): the last tokens of every
    row (the `<boi>` of a prompt) line up, so the patches that follow share their positions in the cache."""
    length = max(ids.shape[1] for ids, _ in parts)
    all_ids, all_masks = [], []
    for ids, mask in parts:
        pad = length - ids.shape[1]
        all_ids.append(F.pad(ids, (pad, 0), value=pad_id))
        all_masks.append(F.pad(mask.to(ids.device, torch.long), (pad, 0), value=0))
    return torch.cat(all_ids), torch.cat(all_masks)


@dataclass
class _Prefix:
    """A context to denoise after: its ids and mask, and the cache holding it (None = recompute every step)."""

    input_ids: torch.Tensor  # (B', P)
    attention_mask: torch.Tensor  # (B', P)
    cache: DynamicCache | None

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]

    def leading_rows(self, rows: int) -> _Prefix:
        """The same context for its first `rows` rows alone (the cache copied, then narrowed: this one is kept)."""
        if rows == self.rows:
            return self
        cache = None
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            cache.batch_select_indices(torch.arange(rows, device=self.input_ids.device))
        return _Prefix(self.input_ids[:rows], self.attention_mask[:rows], cache)


@dataclass
class TransfusionGenerationState:
    """What diffusion mode keeps between steps.

    Args:
        prefixes: the contexts the patches follow, B rows (unguided) or 2B rows (conditional first) in one or two
            prefixes whose noise predictions are concatenated in order.
        batch_size: B, images drawn.
        guidance: classifier-free guidance on the noise.
    """

    prefixes: list[_Prefix]
    batch_size: int
    guidance: ClassifierFreeGuidance
    _conditional: list[_Prefix] | None = field(default=None, repr=False)

    def conditional_prefixes(self) -> list[_Prefix]:
        """The prefixes of the B conditional rows alone, for the steps guidance leaves out (outside its interval):
        there the guided noise is the conditional prediction, so the unconditional rows need not run. Built on first
        use (a one-off copy of the conditional rows' cache) and kept."""
        if self._conditional is None:
            prefixes, left = [], self.batch_size
            for prefix in self.prefixes:
                if left == 0:
                    break
                prefixes.append(prefix.leading_rows(min(prefix.rows, left)))
                left -= prefixes[-1].rows
            self._conditional = prefixes
        return self._conditional


@dataclass
class TransfusionInterleavedOutput:
    """Output of `generate_interleaved`, one entry per input row.

    Args:
        sequences: the generated ids (prompt excluded); each image appears as `<boi> <image> x N <eoi>`.
        image_latents: (num_images, C, h, w) scaled latents of the generated images, in order.
    """

    sequences: list[torch.Tensor]
    image_latents: list[torch.Tensor]


class TransfusionGenerationMixin:
    """Generation methods of `TransfusionForConditionalGeneration` (kept apart so the model file reads as the
    architecture and the loss)."""

    def make_scheduler(self, kind: str = "ddim") -> SchedulerMixin:
        """A diffusers scheduler ("ddim" or "ddpm") with the training noise schedule."""
        if kind not in SCHEDULERS:
            raise ValueError(
                f"`scheduler` must be one of {sorted(SCHEDULERS)} or a diffusers scheduler, got {kind!r}."
            )
        return SCHEDULERS[kind](**self.config.scheduler_config())

    def check_scheduler(self, scheduler: SchedulerMixin) -> None:
        """Refuse a scheduler that cannot sample this model: Transfusion is trained as a DDPM that predicts the noise
        (epsilon; or the velocity, per `config.prediction_type`) on its config's noise schedule, so any DDPM-family
        diffusers scheduler built from that schedule works (DDIM, DDPM, DPMSolver++, UniPC, Euler, ...:
        `XScheduler.from_config(pipe.scheduler.config)`), and a flow-matching one, another prediction type or another
        noise schedule would draw noise, not images."""
        name = type(scheduler).__name__
        fix = (
            "Build a DDPM-family scheduler from the model's schedule, e.g. "
            "`UniPCMultistepScheduler.from_config(pipe.scheduler.config)` (or DDIM, DDPM, DPMSolverMultistep, Euler)."
        )
        if name not in DDPM_FAMILY_SCHEDULERS:
            if "FlowMatch" in name:
                raise ValueError(
                    f"`scheduler` {name} is a flow-matching sampler: it integrates a predicted velocity along straight "
                    "noise-to-data paths, which only a model trained with the flow-matching objective (SD3, Flux) "
                    f"predicts. Transfusion is trained as a DDPM that predicts {self.config.prediction_type!r} on a "
                    f"{self.config.beta_schedule!r} schedule, so this scheduler would turn its predictions into "
                    f"noise, not images. {fix}"
                )
            raise ValueError(f"`scheduler` {name} is not a DDPM-family diffusers scheduler. {fix}")
        config, trained = scheduler.config, self.make_scheduler("ddpm").config
        if config.get("prediction_type") != self.config.prediction_type:
            raise ValueError(
                f"`scheduler` {name} expects prediction_type={config.get('prediction_type')!r}, but this model "
                f"predicts {self.config.prediction_type!r}. {fix}"
            )
        keys = ["num_train_timesteps", "beta_schedule"]
        if trained.beta_schedule in ("linear", "scaled_linear"):
            keys += ["beta_start", "beta_end"]
        changed = {key: config.get(key) for key in keys if config.get(key) != trained[key]}
        changed.update({key: config[key] for key in ("trained_betas", "rescale_betas_zero_snr") if config.get(key)})
        if changed:
            expected = {key: trained.get(key) for key in changed}
            raise ValueError(
                f"`scheduler` {name} has another noise schedule than the one the model was trained with: {changed}, "
                f"trained with {expected}. {fix}"
            )

    def unconditional_input_ids(self, batch: int, device) -> torch.Tensor:
        """`<s> </s> <boi>` (the caption-dropped prompt of training) repeated `batch` times, (batch, <=3)."""
        config = self.config
        ids = [i for i in (config.bos_token_id, config.eos_token_id) if i is not None] + [config.boi_token_id]
        return torch.tensor([ids], device=device).expand(batch, -1)

    # -- diffusion mode ---------------------------------------------------------------------------------------------
    def _prefill_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool) -> _Prefix:
        cache = None
        if use_cache:
            cache = DynamicCache(config=self.config)
            self.model(input_ids, attention_mask=attention_mask, cache=cache, use_cache=True, return_dict=True)
        return _Prefix(input_ids, attention_mask, cache)

    def _predict_noise(self, prefix: _Prefix, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Noise prediction for `latents` (B', C, h, w) placed after `prefix` at `timestep`."""
        rows = latents.shape[0]
        placeholders = torch.full(
            (rows, self.config.num_image_tokens), self.config.image_token_id, device=latents.device
        )
        mask = torch.cat([prefix.attention_mask, torch.ones_like(placeholders)], dim=1)
        timesteps = torch.as_tensor(timestep, device=latents.device).expand(rows)
        if prefix.cache is None:  # recompute the prefix (reference path)
            ids = torch.cat([prefix.input_ids, placeholders], dim=1)
            out = self.model(
                ids, attention_mask=mask, image_latents=latents, timesteps=timesteps, use_cache=False, return_dict=True
            )
            return out.noise_pred
        length = cache_length(prefix.cache)
        out = self.model(
            placeholders,
            attention_mask=mask,
            cache=prefix.cache,
            image_latents=latents,
            timesteps=timesteps,
            use_cache=True,
            return_dict=True,
        )
        truncate_cache(prefix.cache, length)
        return out.noise_pred

    def image_latent_shape(self, batch: int) -> tuple[int, int, int, int]:
        config = self.config
        return (batch, config.latent_channels, config.latent_size, config.latent_size)

    def prepare_latents(
        self,
        state: TransfusionGenerationState,
        scheduler: SchedulerMixin,
        generator: Generators = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The initial noise (B, C, h, w): drawn from `generator` (one generator, or a list of B: row `i` from
        generator `i`), or `latents` (standard normal noise, checked), scaled by `scheduler.init_noise_sigma` (1 for
        DDIM / DDPM; call `scheduler.set_timesteps` first, Euler's depends on it)."""
        shape = self.image_latent_shape(state.batch_size)
        if latents is None:
            if isinstance(generator, (list, tuple)):
                if len(generator) != state.batch_size:
                    raise ValueError(
                        f"`generator` is a list of {len(generator)} generators for {state.batch_size} images; pass "
                        "one per image."
                    )
                generator = list(generator)
            device = state.prefixes[0].input_ids.device
            latents = randn_tensor(
                shape, generator=generator, device=device, dtype=self.model.embed_tokens.weight.dtype
            )
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        return latents * scheduler.init_noise_sigma

    def image_generation_step(
        self, state: TransfusionGenerationState, latents: torch.Tensor, timestep: torch.Tensor
    ) -> torch.Tensor:
        """One denoising step's model computation: the noise predicted for `latents` (already scaled by the scheduler)
        after the cached prefixes, at `timestep`. `latents` holds a row per prefix row (both guidance branches,
        conditional rows first) or the B conditional rows alone (a step guidance leaves out), which then run after
        `state.conditional_prefixes()`.

        Returns:
            (B', C, h, w) predicted noise, a row per row of `latents`; `state.guidance.combine` guides the two
            branches' rows.
        """
        prefixes = state.prefixes
        if latents.shape[0] != sum(prefix.rows for prefix in prefixes):
            prefixes = state.conditional_prefixes()
        preds, row = [], 0
        for prefix in prefixes:
            preds.append(self._predict_noise(prefix, latents[row : row + prefix.rows], timestep))
            row += prefix.rows
        return torch.cat(preds)

    def guided_noise_prediction(
        self,
        state: TransfusionGenerationState,
        scheduler: SchedulerMixin,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        progress: float,
    ) -> torch.Tensor:
        """One denoising step's noise prediction for (B, C, h, w) `latents` at `timestep`, guided with the scale
        `state.guidance` gives the step's `progress` (`i / (N - 1)` at step `i` of `N`; 1.0 outside its interval).
        A step at scale 1 runs the conditional rows alone (`ClassifierFreeGuidance.guided_prediction`)."""
        return state.guidance.guided_prediction(
            lambda rows: self.image_generation_step(state, rows, timestep),
            scheduler.scale_model_input(latents, timestep),
            progress,
        )

    def _denoise(
        self,
        state: TransfusionGenerationState,
        num_inference_steps: int,
        scheduler: SchedulerMixin,
        generator: Generators,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """The scheduler loop without a pipeline around it (`generate_image_latents`, `generate_interleaved`;
        [`TransfusionPipeline`] runs the same loop with a progress bar and callbacks)."""
        scheduler.set_timesteps(num_inference_steps, device=state.prefixes[0].input_ids.device)
        latents = self.prepare_latents(state, scheduler, generator, latents)
        step_kwargs = scheduler_step_kwargs(scheduler, generator)
        steps = len(scheduler.timesteps)
        for i, t in enumerate(scheduler.timesteps):
            noise_pred = self.guided_noise_prediction(state, scheduler, latents, t, step_progress(i, steps))
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
        return latents

    @staticmethod
    def _check_steps(num_inference_steps) -> None:
        if (
            not isinstance(num_inference_steps, int)
            or isinstance(num_inference_steps, bool)
            or num_inference_steps < 1
        ):
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")

    def _scheduler(self, scheduler: SchedulerMixin | str | None) -> SchedulerMixin:
        if scheduler is None or isinstance(scheduler, str):
            return self.make_scheduler(scheduler or "ddim")
        self.check_scheduler(scheduler)
        return scheduler

    @torch.no_grad()
    def prepare_image_generation(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        guidance: ClassifierFreeGuidance | None = None,
        use_cache: bool = True,
    ) -> TransfusionGenerationState:
        """Check the prompts and run them (both guidance branches as one left-padded doubled batch) into the cache.

        Args:
            input_ids: (B, L) left-padded prompts, each ending with `<boi>` (`processor.image_generation_inputs`).
            attention_mask: (B, L) padding mask.
            negative_input_ids, negative_attention_mask: (B or 1, L') the unconditional branch under guidance
                (default: `<s> </s> <boi>`, the caption-dropped prompt), also ending with `<boi>`.
            guidance: classifier-free guidance on the noise (default: off).
            use_cache: run the prefix once and reuse its keys/values at every step (False recomputes it: the
                reference the cached path is tested against).
        """
        config = self.config
        guidance = guidance or ClassifierFreeGuidance()
        if input_ids.ndim != 2:
            raise ValueError(f"`input_ids` must be (batch, length), got {tuple(input_ids.shape)}.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch, device = input_ids.shape[0], input_ids.device
        if (input_ids[:, -1] != config.boi_token_id).any():
            raise ValueError(
                f"Every prompt must end with `boi_token_id` ({config.boi_token_id}) to draw an image after it; build "
                "the inputs with `TransfusionProcessor.image_generation_inputs` (left padding)."
            )
        ids, mask = input_ids, attention_mask
        if guidance.enabled:
            if negative_input_ids is None:
                negative_input_ids = self.unconditional_input_ids(batch, device)
            if negative_attention_mask is None:
                negative_attention_mask = torch.ones_like(negative_input_ids)
            if (negative_input_ids[:, -1] != config.boi_token_id).any():
                raise ValueError(f"`negative_input_ids` rows must end with `boi_token_id` ({config.boi_token_id}).")
            negative = negative_input_ids.to(device).expand(batch, -1)
            negative_mask = negative_attention_mask.to(device).expand(batch, -1)
            ids, mask = left_pad_concat([(ids, mask), (negative, negative_mask)], config.pad_token_id or 0)
        return TransfusionGenerationState([self._prefill_prefix(ids, mask, use_cache)], batch, guidance)

    @torch.no_grad()
    def generate_image_latents(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 50,
        scheduler: SchedulerMixin | str | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        use_cache: bool = True,
        guidance_interval: tuple[float, float] = FULL_INTERVAL,
    ) -> torch.Tensor:
        """Text -> image latents (diffusion mode after a prompt that ends with `<boi>`), without a pipeline around the
        loop.

        Args:
            input_ids, attention_mask, negative_input_ids, negative_attention_mask, use_cache: as in
                `prepare_image_generation`.
            guidance_scale: classifier-free guidance on the noise (1.0 = off). Both branches run as ONE doubled
                batch over one cache.
            num_inference_steps: denoising steps.
            guidance_interval: `(start, stop)`: guide only the steps whose progress `i / (N - 1)` lies in it (see
                [`TransfusionPipeline.__call__`]); default every step.
            scheduler: a diffusers scheduler instance, or "ddim" (default) / "ddpm" with the training schedule.
            generator: the only source of randomness (initial noise, DDPM noise).
            latents: (B, C, h, w) initial noise instead of drawing it.

        Returns:
            (B, C, h, w) scaled latents (`decode_image_tokens` turns them into pixels).
        """
        self._check_steps(num_inference_steps)
        guidance = ClassifierFreeGuidance(guidance_scale, interval=guidance_interval)
        state = self.prepare_image_generation(
            input_ids, attention_mask, negative_input_ids, negative_attention_mask, guidance, use_cache
        )
        return self._denoise(state, num_inference_steps, self._scheduler(scheduler), generator, latents)

    @torch.no_grad()
    def generate_images(self, *args, **kwargs) -> torch.Tensor:
        """`generate_image_latents` followed by the VAE decoder: (B, 3, H, W) pixels in [-1, 1]."""
        return self.decode_image_tokens(self.generate_image_latents(*args, **kwargs))

    # -- LM mode ----------------------------------------------------------------------------------------------------
    def _next_token_logits(self, ids, mask, cache, image_latents=None, timesteps=None) -> torch.Tensor:
        out = self(
            ids,
            attention_mask=mask,
            cache=cache,
            image_latents=image_latents,
            timesteps=timesteps,
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,
        )
        return out.logits[:, -1]

    def _image_inputs(self, pixel_values, image_latents):
        if pixel_values is not None and image_latents is not None:
            raise ValueError("Pass either `pixel_values` or `image_latents`, not both.")
        return self.encode_images(pixel_values) if pixel_values is not None else image_latents

    @torch.no_grad()
    def generate_text(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.LongTensor:
        """LM mode only: continue text, or caption the images in the prompt (`processor(images=..., text=...)`).
        Stops at `eos_token_id`; `<boi>` is not sampled here (see `generate_interleaved`).

        Returns:
            (B, <= max_new_tokens) new ids, `pad_token_id` after a row's `</s>`.
        """
        config = self.config
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be a positive integer, got {max_new_tokens!r}.")
        sampler = TokenSampler(SamplingConfig(temperature, top_k, top_p, min_p, do_sample), generator)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        latents = self._image_inputs(pixel_values, image_latents)
        batch, device = input_ids.shape[0], input_ids.device
        cache = DynamicCache(config=self.config)
        logits = self._next_token_logits(input_ids, attention_mask, cache, latents)
        tokens = torch.full((batch, max_new_tokens), config.pad_token_id or 0, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        mask = attention_mask
        for i in range(max_new_tokens):
            logits[:, config.boi_token_id] = torch.finfo(logits.dtype).min
            token = sampler(logits, tokens[:, :i])
            token = torch.where(done, torch.full_like(token, config.pad_token_id or 0), token)
            tokens[:, i] = token
            done |= token == config.eos_token_id
            if done.all() or i == max_new_tokens - 1:
                return tokens[:, : i + 1]
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            logits = self._next_token_logits(token[:, None], mask, cache)
        return tokens

    @torch.no_grad()
    def generate_interleaved(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        max_images: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        scheduler: SchedulerMixin | str | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool = True,
        generator: torch.Generator | None = None,
        guidance_interval: tuple[float, float] = FULL_INTERVAL,
    ) -> TransfusionInterleavedOutput:
        """The full mode-switching loop: sample text; when `<boi>` is drawn, denoise an image after the cached
        context (guided against `<s> </s> <boi>`), append it with `<eoi>` and resume text, until `</s>`,
        `max_new_tokens` sampled tokens, or `<boi>` after `max_images` images (then `<boi>` is no longer drawn).

        Rows are generated one after another (each row switches modes at its own time), all from `generator`.
        `guidance_interval` limits the guidance of each image's denoising as in `generate_image_latents`.
        """
        config = self.config
        self._check_steps(num_inference_steps)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be a positive integer, got {max_new_tokens!r}.")
        sampler = TokenSampler(SamplingConfig(temperature, top_k, top_p, min_p, do_sample), generator)
        guidance = ClassifierFreeGuidance(guidance_scale, interval=guidance_interval)
        scheduler = self._scheduler(scheduler)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        latents = self._image_inputs(pixel_values, image_latents)
        device = input_ids.device
        images_per_row = (input_ids == config.image_token_id).sum(1) // config.num_image_tokens
        first_image = torch.cumsum(images_per_row, 0) - images_per_row
        sequences, all_images = [], []
        for row in range(input_ids.shape[0]):
            ids, mask = input_ids[row : row + 1], attention_mask[row : row + 1]
            row_latents = None
            if latents is not None and images_per_row[row] > 0:
                start = int(first_image[row])
                row_latents = latents[start : start + int(images_per_row[row])]
            cache = DynamicCache(config=self.config)
            logits = self._next_token_logits(ids, mask, cache, row_latents)
            new, images = [], []
            for _ in range(max_new_tokens):
                if len(images) >= max_images:
                    logits[:, config.boi_token_id] = torch.finfo(logits.dtype).min
                history = torch.tensor([new], dtype=torch.long, device=device).view(1, -1)
                token = sampler(logits, history)  # (1,)
                new.append(int(token))
                mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
                if int(token) == config.eos_token_id:
                    break
                if int(token) != config.boi_token_id:
                    logits = self._next_token_logits(token[:, None], mask, cache)
                    continue
                # diffusion mode: <boi> enters the cache, the patches are denoised after it
                self.model(token[:, None], attention_mask=mask, cache=cache, use_cache=True, return_dict=True)
                prefixes = [_Prefix(torch.cat([ids, history, token[:, None]], 1), mask, cache)]
                if guidance.enabled:
                    negative = self.unconditional_input_ids(1, device)
                    prefixes.append(self._prefill_prefix(negative, torch.ones_like(negative), use_cache=True))
                state = TransfusionGenerationState(prefixes, 1, guidance)
                image = self._denoise(state, num_inference_steps, scheduler, generator, None)
                images.append(image)
                # the clean image (t = 0) and <eoi> join the context; LM mode resumes after <eoi>
                tail = torch.tensor(
                    [[config.image_token_id] * config.num_image_tokens + [config.eoi_token_id]], device=device
                )
                mask = torch.cat([mask, torch.ones_like(tail)], dim=1)
                logits = self._next_token_logits(tail, mask, cache, image, torch.zeros(1, device=device))
                new.extend(tail[0].tolist())
            sequences.append(torch.tensor(new, dtype=torch.long, device=device))
            all_images.append(torch.cat(images) if images else input_ids.new_zeros((0,)).float())
        return TransfusionInterleavedOutput(sequences=sequences, image_latents=all_images)


__all__ = [
    "DDPM_FAMILY_SCHEDULERS",
    "SCHEDULERS",
    "TransfusionGenerationMixin",
    "TransfusionGenerationState",
    "TransfusionInterleavedOutput",
    "left_pad_concat",
    "scheduler_step_kwargs",
]
