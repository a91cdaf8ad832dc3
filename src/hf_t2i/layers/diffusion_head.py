"""Per-token diffusion: a small MLP that denoises one continuous token given a condition vector (MAR, Li et al.
2024, section 3.2; Fluid, Fan et al. 2024, section 3), its DDPM loss, and the sampling loop.

- `DiffusionHead`: residual MLP blocks with adaptive LayerNorm (shift, scale, gate) driven by
  `timestep embedding + condition`, zero-initialised modulations and output (as DiT / MAR), predicting epsilon.
- `DiffusionHeadScheduler`: diffusers' `DDPMScheduler` plus the one thing MAR's sampler has that diffusers lacks:
  a `temperature` multiplying the std of the noise added at each reverse step (0 = the posterior mean).
- `diffusion_loss` and `ddpm_sample`: model-agnostic, `denoise(x_t, timesteps) -> epsilon` is all they need; Fluid's
  continuous variant trains and samples its head with them. (Transfusion denoises whole images inside its
  transformer and runs stock diffusers schedulers in its own loop, so it uses neither.)
- Fast solvers: `ddpm_sample` runs any diffusers scheduler of the DDPM family built from the head's schedule
  (`DPMSolverMultistepScheduler.from_config(scheduler.config)`, `DDIMScheduler`, `UniPCMultistepScheduler`, ...);
  `check_head_scheduler` refuses the ones that cannot sample the head, with the reason and the fix.

Randomness comes only from the `generator` passed in (timesteps and noise through diffusers' `randn_tensor`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

# diffusers finds a pipeline component's loading method by looking its base class up in the component's module, so
# `SchedulerMixin` must be importable from here for `FluidPipeline.from_pretrained` to load the scheduler.
from diffusers import DDPMScheduler, SchedulerMixin  # noqa: F401
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..configuration_utils import check_choice
from ..generation.guidance import FULL_INTERVAL, ClassifierFreeGuidance, step_progress
from .positional import TimestepEmbedding


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
#: the diffusers schedulers that sample an epsilon-predicting DDPM (those `DDPMScheduler.from_config` converts between)
DDPM_FAMILY_SCHEDULERS = frozenset(DDPMScheduler._compatibles) | {"DDPMScheduler"}


class DiffusionHeadScheduler(DDPMScheduler):
    """`DDPMScheduler` whose `step` takes a `temperature`: the reverse step draws
    `x_{t-1} = mu(x_t, eps) + temperature * sigma_t * z` (MAR's `p_sample` with temperature). `temperature=1` is
    exactly `DDPMScheduler.step`; `temperature=0` returns the posterior mean. Everything else (schedules, timestep
    spacing, `add_noise`, `save_pretrained`) is diffusers'."""

    _noise_scale = 1.0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        temperature: float = 1.0,
    ):
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
            raise ValueError(f"`temperature` must be a number >= 0, got {temperature!r}.")
        self._noise_scale = float(temperature)
        try:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        finally:
            self._noise_scale = 1.0

    def _get_variance(self, t, predicted_variance=None, variance_type=None):
        # `step` turns this into the std of the added noise: sqrt of "fixed_small"/"fixed_large", the value itself
        # for "fixed_small_log", exp(0.5 * log-variance) for "learned_range"; scale each form by temperature.
        variance = super()._get_variance(t, predicted_variance=predicted_variance, variance_type=variance_type)
        scale = self._noise_scale
        if scale == 1.0:
            return variance
        kind = variance_type or self.config.variance_type
        if kind == "fixed_small_log":
            return variance * scale
        if kind in ("learned_range", "fixed_large_log"):
            return variance + 2 * torch.log(torch.as_tensor(max(scale, 1e-20)))
        return variance * scale**2


def build_ddpm_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "squaredcos_cap_v2",
    timestep_spacing: str = "leading",
    learned_variance: bool = False,
) -> DiffusionHeadScheduler:
    """The ε-prediction DDPM of MAR / Fluid / Transfusion: cosine (`squaredcos_cap_v2`) schedule by default, fixed
    small variance, no clipping (latents scaled to unit variance exceed [-1, 1]).

    Args:
        timestep_spacing: which training steps the sampler visits. "leading" (the default: 990, 980, ..., 0 for 100
            of 1000 steps) avoids the last step, whose cosine `alpha_bar` (~1e-9, beta capped at 0.999) divides the
            noise estimate's error by ~3e-5; "linspace" (999, 989, ..., 0: `round(i * 999 / 99)`) is exactly MAR's
            respacing (`space_timesteps(1000, "100")`), used for converted MAR heads.
        learned_variance: the head also predicts the variance (2 x token width outputs, IDDPM's "learned_range":
            a per-value interpolation between the posterior's and beta's log-variance, as MAR's `learn_sigma`).
    """
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(f"`num_train_timesteps` must be an int >= 2, got {num_train_timesteps!r}.")
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
    return DiffusionHeadScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type="epsilon",
        variance_type="learned_range" if learned_variance else "fixed_small",
        clip_sample=False,
        timestep_spacing=timestep_spacing,
    )


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class _ResBlock(nn.Module):
    """`x + gate * mlp(modulate(ln(x), shift, scale))` with (shift, scale, gate) from the conditioning vector."""

    def __init__(self, width: int, eps: float, norm_affine: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=norm_affine, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)  # each (N, W)
        return x + gate * self.mlp(_modulate(self.norm(x), shift, scale))


class DiffusionHead(nn.Module):
    """MAR-style denoising MLP for one token: `epsilon = head(x_t, t, z)`.

    Args:
        token_dim: width D of a token (Fluid: latent channels x patch area).
        condition_dim: width of the condition `z` (the transformer's output at the token's position).
        width: inner width W (paper: the backbone's width).
        num_layers: residual blocks (paper: 6 for Fluid's head, 3 for MAR-B).
        norm_eps: LayerNorm epsilon.
        frequency_dim: sinusoidal timestep features before the timestep MLP (default `width`; MAR: 256).
        learned_variance: also predict the variance: the output has `2 * token_dim` values, epsilon first, then the
            "learned_range" interpolation values (MAR's `learn_sigma=True`).
        norm_affine: learned scale and bias in the residual blocks' LayerNorms (MAR's `in_ln`; the final norm never
            has them).
    """

    def __init__(
        self,
        token_dim: int,
        condition_dim: int,
        width: int,
        num_layers: int,
        norm_eps: float = 1e-6,
        frequency_dim: int | None = None,
        learned_variance: bool = False,
        norm_affine: bool = False,
    ):
        super().__init__()
        for name, value in (("token_dim", token_dim), ("condition_dim", condition_dim), ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` of the diffusion head must be a positive int, got {value!r}.")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"`num_layers` of the diffusion head must be a positive int, got {num_layers!r}.")
        frequency_dim = width if frequency_dim is None else frequency_dim
        if not isinstance(frequency_dim, int) or frequency_dim < 2 or frequency_dim % 2:
            raise ValueError(
                f"`frequency_dim` of the diffusion head (its timestep features) must be an even int, got "
                f"{frequency_dim!r}."
            )
        self.token_dim = token_dim
        self.learned_variance = learned_variance
        self.input_proj = nn.Linear(token_dim, width)
        self.time_embed = TimestepEmbedding(width, frequency_dim=frequency_dim)
        self.cond_embed = nn.Linear(condition_dim, width)
        self.blocks = nn.ModuleList(_ResBlock(width, norm_eps, norm_affine) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=norm_eps)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.output = nn.Linear(width, token_dim * (2 if learned_variance else 1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier linears, N(0, 0.02) timestep MLP, zero modulations and output: every block starts as the identity
        and the head as the zero predictor (DiT / MAR)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in self.time_embed.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        for layer in (self.final_modulation[-1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """
        Args:
            noisy: (N, D) noisy tokens x_t.
            timesteps: (N,) integer (or float) diffusion steps.
            condition: (N, C) condition vectors.

        Returns:
            (N, D) predicted noise, or (N, 2 * D) with `learned_variance`: noise, then variance values in [-1, 1]
            (nominally; unclamped) between the posterior's (-1) and beta's (+1) log-variance.
        """
        if noisy.ndim != 2 or noisy.shape[-1] != self.token_dim:
            raise ValueError(f"`noisy` must be (N, {self.token_dim}), got {tuple(noisy.shape)}.")
        x = self.input_proj(noisy)
        c = self.time_embed(timesteps) + self.cond_embed(condition)  # (N, W)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return self.output(_modulate(self.final_norm(x), shift, scale))


def _device_randint(high: int, size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randint(0, high, (size,), generator=generator, device=gen_device).to(device)


def diffusion_loss(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    scheduler: DDPMScheduler,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """DDPM's simple loss `|| eps - denoise(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t) ||^2` (Ho et al. 2020, eq. 14) with
    `t` uniform over the training steps and `eps ~ N(0, I)`, both drawn from `generator`.

    When `denoise` also predicts the variance (twice the channels of `targets` along dim 1, a scheduler with
    `variance_type="learned_range"`), the loss is IDDPM's hybrid `L_simple + L_vlb` (Nichol & Dhariwal 2021, section
    3.1; MAR's training loss): `L_vlb` trains the variance only (the mean is detached), in bits per dimension.

    Args:
        denoise: `denoise(x_t, t) -> eps_hat`, shapes (N, ...) and (N,).
        targets: (N, ...) clean samples x0.
        scheduler: a DDPM-type scheduler (`add_noise`, `config.num_train_timesteps`).
        reduction: "mean" (a scalar) or "none" ((N,), the mean over each sample's dimensions).
        snr_gamma: Min-SNR-γ weighting (Hang et al. 2023): each sample's ε-MSE times `min(SNR_t, γ) / SNR_t`,
            `SNR_t = a_t / (1 - a_t)`; the variational term of a learned-variance head is not weighted. None: no
            weighting.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"`reduction` must be 'mean' or 'none', got {reduction!r}.")
    if snr_gamma is not None and not snr_gamma > 0:
        raise ValueError(f"`snr_gamma` must be > 0 or None, got {snr_gamma!r}.")
    n = targets.shape[0]
    timesteps = _device_randint(scheduler.config.num_train_timesteps, n, generator, targets.device)
    noise = randn_tensor(targets.shape, generator=generator, device=targets.device, dtype=targets.dtype)
    noisy = scheduler.add_noise(targets, noise, timesteps)
    prediction = denoise(noisy, timesteps).float()
    learned = scheduler.config.variance_type == "learned_range"
    if learned != (prediction.shape[1] == 2 * targets.shape[1]):
        raise ValueError(
            f"The denoiser returns {prediction.shape[1]} channels for {targets.shape[1]}-channel targets, but the "
            f"scheduler's `variance_type` is {scheduler.config.variance_type!r}: a learned-variance head needs "
            "'learned_range' (and twice the channels), any other head a fixed variance."
        )
    eps, variance_values = prediction.split(targets.shape[1], dim=1) if learned else (prediction, None)
    error = (eps - noise.float()).pow(2).flatten(1).mean(dim=1)  # (N,)
    if snr_gamma is not None:  # min(SNR, gamma) / SNR = min(1, gamma / SNR); 1 where a_t = 0
        alphas_cumprod = scheduler.alphas_cumprod.to(targets.device, torch.float32)[timesteps]
        error = error * (snr_gamma * (1 - alphas_cumprod) / alphas_cumprod).clamp(max=1.0)
    if learned:
        error = error + _vlb_bits(scheduler, targets.float(), noisy.float(), timesteps, eps.detach(), variance_values)
    return error.mean() if reduction == "mean" else error


def _vlb_bits(scheduler, x0, x_t, timesteps, eps, variance_values) -> torch.Tensor:
    """(N,) IDDPM's variational bound term in bits per dimension: `KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))` for
    t > 0, the discretised Gaussian decoder NLL of x0 at t = 0 (improved-diffusion's `_vb_terms_bpd`)."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    alphas_cumprod = scheduler.alphas_cumprod.to(x0.device, torch.float64)
    betas = scheduler.betas.to(x0.device, torch.float64)
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    posterior_variance = betas * (1 - previous) / (1 - alphas_cumprod)
    # log clipped at t = 0, where the posterior variance is 0: use t = 1's
    min_log_all = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))

    def at(values):
        return values[timesteps].float().view(shape)

    a_t, a_prev, beta = at(alphas_cumprod), at(previous), at(betas)
    coef_x0 = beta * a_prev.sqrt() / (1 - a_t)
    coef_xt = (1 - a_prev) * (1 - beta).sqrt() / (1 - a_t)
    true_mean, true_log_variance = coef_x0 * x0 + coef_xt * x_t, at(min_log_all)
    x0_hat = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    mean = coef_x0 * x0_hat + coef_xt * x_t
    frac = (variance_values + 1) / 2
    log_variance = frac * beta.log() + (1 - frac) * true_log_variance
    kl = 0.5 * (-1 + log_variance - true_log_variance + torch.exp(true_log_variance - log_variance))
    kl = kl + 0.5 * (true_mean - mean).pow(2) * torch.exp(-log_variance)
    kl = kl.flatten(1).mean(dim=1) / math.log(2.0)
    nll = -_discretized_gaussian_log_likelihood(x0, mean, log_variance).flatten(1).mean(dim=1) / math.log(2.0)
    return torch.where(timesteps == 0, nll, kl)


def _discretized_gaussian_log_likelihood(x, mean, log_variance) -> torch.Tensor:
    """log P(x) of data in [-1, 1] quantised to 256 bins under N(mean, exp(log_variance)) (IDDPM / MAR)."""

    def cdf(v):  # standard normal CDF, tanh approximation (as the original)
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v.pow(3))))

    centered, inv_std = x - mean, torch.exp(-0.5 * log_variance)
    cdf_plus, cdf_min = cdf(inv_std * (centered + 1.0 / 255)), cdf(inv_std * (centered - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _capped_beta(scheduler: SchedulerMixin, timestep: torch.Tensor) -> bool:
    """Whether training step `timestep` has the cosine schedule's capped beta (0.999, alpha_bar ~ 1e-9)."""
    return float(scheduler.betas[int(round(float(timestep)))]) >= 0.999 - 1e-6


@torch.no_grad()
def check_first_step(scheduler: SchedulerMixin, num_inference_steps: int) -> None:
    """Refuse a reverse chain (after `set_timesteps`) whose first step is the cosine schedule's capped last training
    step, where it is not the method's own choice.

    That step's beta is capped at 0.999, so its `alpha_bar` is ~1e-9 (sqrt ~5e-5): the clean-sample estimate
    `(x - sqrt(1 - a) eps) / sqrt(a)` divides the noise estimate's error by ~5e-5, and the next steps carry it on.

    - DDPM (ancestral), "leading" spacing: the chain starts there only with as many inference steps as training
      steps, by accident; measured on a 64 px Fluid head, x0 error 2.5e4 with 1000 steps against 3.4 with 100.
      Refused, naming the largest step count that avoids it. "linspace" (MAR's respacing) and "trailing" start there
      on purpose, with one large step to the next visited one; they are left alone.
    - Every other scheduler (DDIM, DPM-Solver++, UniPC, ...: deterministic solvers): "linspace" and "trailing" (their
      diffusers defaults) always start there. Nothing in the method asks for it and the estimate is not averaged out
      by later noise: on a small 2-D mixture head trained on the 100-step cosine schedule, DPM-Solver++, DDIM and
      UniPC at 10-20 steps put 0-12 % of the samples on the right modes (|x| up to ~400 for modes at |x| ~ 1.4)
      against 95-100 % with "leading". Refused, naming `timestep_spacing="leading"`.
    """
    first = scheduler.timesteps[0]
    if not _capped_beta(scheduler, first):
        return
    spacing = scheduler.config.get("timestep_spacing")
    if isinstance(scheduler, DDPMScheduler):
        if spacing == "leading":
            raise ValueError(
                f"`num_diffusion_steps` ({num_inference_steps}) visits the last training step ({int(first)}), whose "
                f"capped cosine beta (0.999) amplifies the head's error about 30x; pass at most {int(first)} (the "
                "default 100 is what the heads are trained and measured with)."
            )
        return
    name = type(scheduler).__name__
    raise ValueError(
        f"`scheduler` {name} with timestep_spacing={spacing!r} starts at the last training step ({int(first)}), "
        "whose capped cosine beta (0.999) leaves sqrt(alpha_bar) ~ 5e-5: the solver's first step divides the head's "
        "noise-prediction error by it and the samples blow up. Build it with the head's 'leading' spacing, e.g. "
        f"`{name}.from_config(pipe.scheduler.config, timestep_spacing='leading')`."
    )


def _consumes_variance(scheduler: SchedulerMixin) -> bool:
    """Whether `scheduler.step` reads a learned variance from the second half of the model output (DDPM only)."""
    return isinstance(scheduler, DDPMScheduler) and scheduler.config.variance_type in ("learned", "learned_range")


def check_head_scheduler(scheduler: SchedulerMixin, trained: DDPMScheduler, temperature: float = 1.0) -> None:
    """Refuse a scheduler that cannot sample a head trained with the DDPM `trained` (the model's schedule).

    Any diffusers scheduler of the DDPM family built from that schedule samples the head: the ancestral
    `DiffusionHeadScheduler` (MAR's sampler, with temperature), or a fast solver, e.g.
    `DPMSolverMultistepScheduler.from_config(trained.config)` (DPM-Solver++, 2nd order), `DDIMScheduler`,
    `UniPCMultistepScheduler`. Refused, with the fix: another family (flow matching), another prediction type or
    noise schedule, clipping of the clean-sample estimate (latents scaled to unit variance exceed [-1, 1]), a
    `DPMSolverMultistepScheduler` told the head's variance is learned (it keeps the first 3 channels, an image's), and
    `temperature != 1` with a scheduler that has no temperature.

    `temperature` is not mapped onto other schedulers: it scales the noise of DDPM's ancestral steps (MAR), while DDIM
    and the multistep solvers are deterministic (DDIM's `eta` or the SDE solvers' noise change the update itself, not
    only its noise), so no setting of theirs is the same sampler.
    """
    if not isinstance(scheduler, SchedulerMixin):
        raise TypeError(
            f"`scheduler` must be a diffusers scheduler (e.g. DPMSolverMultistepScheduler.from_config(...)), got "
            f"{type(scheduler).__name__}."
        )
    name = type(scheduler).__name__
    fix = (
        "Build a DDPM-family scheduler from the head's schedule, e.g. "
        "`DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)` (or DDIMScheduler, UniPCMultistepScheduler, "
        "DiffusionHeadScheduler)."
    )
    if not isinstance(scheduler, DDPMScheduler) and name not in DDPM_FAMILY_SCHEDULERS:
        raise ValueError(
            f"`scheduler` {name} is not a DDPM-family diffusers scheduler; the diffusion head predicts DDPM noise "
            f"(epsilon), which a flow-matching or other sampler would turn into noise, not tokens. {fix}"
        )
    config = scheduler.config
    if config.get("prediction_type") != "epsilon":
        raise ValueError(
            f"`scheduler` {name} expects prediction_type={config.get('prediction_type')!r}, but the diffusion head "
            f"predicts the noise ('epsilon'). {fix}"
        )
    keys = ["num_train_timesteps", "beta_schedule"]
    if trained.config.beta_schedule in ("linear", "scaled_linear"):
        keys += ["beta_start", "beta_end"]
    changed = {key: config.get(key) for key in keys if config.get(key) != trained.config[key]}
    changed.update({key: config[key] for key in ("trained_betas", "rescale_betas_zero_snr") if config.get(key)})
    if changed:
        expected = {key: trained.config.get(key) for key in changed}
        raise ValueError(
            f"`scheduler` {name} has another noise schedule than the one the head was trained with: {changed}, "
            f"trained with {expected}. {fix}"
        )
    clipping = {key: True for key in ("clip_sample", "thresholding") if config.get(key)}
    if clipping:
        raise ValueError(
            f"`scheduler` {name} clips its clean-sample estimate ({clipping}), but the head's tokens are latents "
            "scaled to unit variance, which exceed [-1, 1]. Build it with clip_sample=False and thresholding=False "
            "(from_config(pipe.scheduler.config) keeps the head's)."
        )
    if not isinstance(scheduler, DDPMScheduler) and config.get("variance_type") in ("learned", "learned_range"):
        raise ValueError(
            f"`scheduler` {name} has variance_type={config['variance_type']!r}: it would keep the first 3 channels of "
            "the head's output (an image's), not the noise of a token. The solver uses the noise prediction only; "
            f"build it with `{name}.from_config(pipe.scheduler.config, variance_type=None)`."
        )
    if temperature != 1.0 and not isinstance(scheduler, DiffusionHeadScheduler):
        raise ValueError(
            f"`temperature` ({temperature!r}) scales the noise of the head's ancestral DDPM steps (MAR), which {name} "
            "does not take: pass temperature=1.0 with it, or sample with the head's DiffusionHeadScheduler "
            "(`DiffusionHeadScheduler.from_config(pipe.scheduler.config)`)."
        )


def _step_kwargs(scheduler: SchedulerMixin, generator, temperature: float) -> dict:
    """`generator=` for the schedulers whose `step` draws noise (DDPM, DDIM, DPM-Solver's SDE variants; UniPC's takes
    none) and `temperature=` when it is not 1 (`DiffusionHeadScheduler` only)."""
    kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    if temperature != 1.0:
        if not isinstance(scheduler, DiffusionHeadScheduler):
            raise ValueError(
                f"`temperature` ({temperature!r}) != 1 needs a `DiffusionHeadScheduler`; {type(scheduler).__name__} "
                "has none. Pass temperature=1.0 with it."
            )
        kwargs["temperature"] = temperature
    return kwargs


def ddpm_sample(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    scheduler: SchedulerMixin,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    guidance_scale: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    guidance_interval: tuple[float, float] = FULL_INTERVAL,
) -> torch.Tensor:
    """Sample `shape` from pure noise with the reverse chain of `scheduler`: ancestral DDPM with a
    `DiffusionHeadScheduler` (MAR's sampler), or a fast solver of the DDPM family (`DPMSolverMultistepScheduler`,
    `DDIMScheduler`, `UniPCMultistepScheduler`, ... built with `from_config` from the head's scheduler).

    It is diffusers' denoising loop: `set_timesteps` (which also resets a multistep solver's history, so one scheduler
    serves every call), noise scaled by `init_noise_sigma`, `scale_model_input`, then `step` (with `generator=` when
    the scheduler draws noise).

    With `guidance_scale != 1` the sample is doubled: `denoise` sees (2N, ...) rows, conditional first, and
    returns their predictions; `eps = eps_u + s * (eps_c - eps_u)` drives both halves (MAR's `forward_with_cfg`). A
    learned-variance denoiser (twice the channels along dim 1) keeps the conditional rows' variance values, as MAR;
    schedulers other than DDPM get the noise prediction only. Steps outside `guidance_interval` are unguided, so
    there `denoise` sees the N conditional rows alone: a denoiser that holds a doubled condition takes its first
    `x.shape[0]` rows.

    Args:
        denoise: `denoise(x_t, t) -> eps_hat` with t a (rows,) tensor of one timestep; rows is 2N on guided steps
            and N on the others (see above).
        shape: (N, ...) of the samples.
        scheduler: a `DiffusionHeadScheduler`, or another DDPM-family scheduler with the head's noise schedule (see
            `check_head_scheduler`).
        num_inference_steps: reverse steps (spread over the training steps by the scheduler's spacing).
        temperature: noise scale of each ancestral step (`DiffusionHeadScheduler` only; others need 1).
        guidance_interval: `(start, stop)`: guide only the steps whose progress `i / (N - 1)` (step `i` of `N`) lies
            in [start, stop], the others with the conditional prediction alone (guidance in a limited interval,
            Kynkäänniemi et al. 2024). Default: every step.

    Returns:
        (N, ...) samples.
    """
    if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
        raise ValueError(f"`num_diffusion_steps` must be a positive int, got {num_inference_steps!r}.")
    if num_inference_steps > scheduler.config.num_train_timesteps:
        raise ValueError(
            f"`num_diffusion_steps` ({num_inference_steps}) exceeds the {scheduler.config.num_train_timesteps} "
            "training steps of the diffusion schedule; pass at most that many."
        )
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise ValueError(f"`temperature` must be a number >= 0, got {temperature!r}.")
    step_kwargs = _step_kwargs(scheduler, generator, temperature)
    guidance = ClassifierFreeGuidance(guidance_scale, interval=guidance_interval)
    device = torch.device(device or "cpu")
    noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    scheduler.set_timesteps(num_inference_steps, device=device)
    check_first_step(scheduler, num_inference_steps)
    sample = noise * scheduler.init_noise_sigma  # 1 for the DDPM family's VP schedulers, sigma_max for Euler's
    consumes_variance = _consumes_variance(scheduler)
    steps = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        eps = guidance.guided_prediction(  # a learned-variance denoiser keeps the conditional rows' variance values
            lambda x: denoise(x, t.expand(x.shape[0])),  # noqa: B023  (called at once, in this iteration)
            scheduler.scale_model_input(sample, t),
            step_progress(i, steps),
            channels=shape[1],
        )
        if not consumes_variance:
            eps = eps[:, : shape[1]]  # (N, ...): the noise; a learned variance only DDPM's step reads
        sample = scheduler.step(eps, t, sample, **step_kwargs).prev_sample
    return sample


__all__ = [
    "BETA_SCHEDULES",
    "DDPM_FAMILY_SCHEDULERS",
    "check_first_step",
    "check_head_scheduler",
    "TIMESTEP_SPACINGS",
    "DiffusionHead",
    "DiffusionHeadScheduler",
    "build_ddpm_scheduler",
    "ddpm_sample",
    "diffusion_loss",
]
