import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

from hf_t2i.layers.diffusion_head import (
    DiffusionHead,
    DiffusionHeadScheduler,
    build_ddpm_scheduler,
    check_head_scheduler,
    ddpm_sample,
    diffusion_loss,
)


CENTRES = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]], [[1.0, -1.0], [-1.0, 1.0]]])  # (condition, mode, xy)


def toy_batch(n: int, generator: torch.Generator):
    """Condition 0: two modes on the diagonal; condition 1: two on the anti-diagonal; std 0.1."""
    cond = torch.randint(0, 2, (n,), generator=generator)
    mode = torch.randint(0, 2, (n,), generator=generator)
    points = CENTRES[cond, mode] + 0.1 * torch.randn(n, 2, generator=generator)
    return points, torch.nn.functional.one_hot(cond, 2).float()


@pytest.fixture(scope="module")
def mixture_head():
    """A head trained on the conditional 2-D mixture (100-step cosine schedule), and that schedule."""
    torch.manual_seed(0)
    head = DiffusionHead(token_dim=2, condition_dim=2, width=32, num_layers=2)
    scheduler = build_ddpm_scheduler(num_train_timesteps=100)
    optimizer = torch.optim.AdamW(head.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(600):
        points, cond = toy_batch(256, generator)
        loss = diffusion_loss(lambda x, t, cond=cond: head(x, t, cond), points, scheduler, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval(), scheduler


def mixture_samples(head, scheduler, steps, c, temperature=1.0, seed=1):
    """400 samples of condition `c` and their distance to that condition's two modes (400, 2)."""
    condition = torch.nn.functional.one_hot(torch.full((400,), c), 2).float()
    with torch.no_grad():
        samples = ddpm_sample(
            lambda x, t: head(x, t, condition),
            (400, 2),
            scheduler,
            steps,
            torch.Generator().manual_seed(seed),
            temperature,
        )
    return samples, (samples[:, None] - CENTRES[c][None]).norm(dim=-1)


def assert_on_both_modes(distance):
    assert (distance.min(dim=1).values < 0.35).float().mean() > 0.9  # on this condition's modes
    assert 0.25 < distance.argmin(dim=1).float().mean() < 0.75  # and both modes drawn (no collapse)


def test_head_learns_a_conditional_2d_mixture(mixture_head):
    head, scheduler = mixture_head
    for c in range(2):
        _, distance = mixture_samples(head, scheduler, 50, c)
        assert_on_both_modes(distance)
        # temperature 0 removes the sampling noise: samples shrink towards the modes
        _, cold = mixture_samples(head, scheduler, 50, c, temperature=0.0)
        assert cold.min(dim=1).values.mean() < distance.min(1).values.mean()


@pytest.mark.parametrize(
    ("solver", "steps"),
    [
        (DPMSolverMultistepScheduler, 10),
        (DPMSolverMultistepScheduler, 20),
        (DDIMScheduler, 20),
        (UniPCMultistepScheduler, 10),
    ],
)
def test_fast_solvers_land_on_the_modes_as_ddpm_does(mixture_head, solver, steps):
    """DPM-Solver++ (2nd order), DDIM and UniPC built from the head's scheduler, in 10-20 steps, put the samples on the
    condition's two modes as DDPM does in 50; a deterministic solver maps the same noise to the same points."""
    head, scheduler = mixture_head
    fast = solver.from_config(scheduler.config)
    assert fast.config.timestep_spacing == "leading" and fast.config.prediction_type == "epsilon"
    check_head_scheduler(fast, scheduler)
    for c in range(2):
        samples, distance = mixture_samples(head, fast, steps, c)
        assert_on_both_modes(distance)
        again, _ = mixture_samples(head, fast, steps, c, seed=1)  # the multistep history restarts with each call
        assert torch.equal(samples, again)
        assert not torch.equal(samples, mixture_samples(head, fast, steps, c, seed=2)[0])


@pytest.mark.parametrize(
    ("solver", "spacing"),
    [
        (DPMSolverMultistepScheduler, "linspace"),
        (DPMSolverMultistepScheduler, "trailing"),
        (DDIMScheduler, "trailing"),
        (UniPCMultistepScheduler, "linspace"),
    ],
)
def test_solvers_starting_at_the_capped_last_step_are_refused(mixture_head, solver, spacing):
    """The solvers' own default spacings start at the cosine schedule's capped last step (beta 0.999, sqrt(alpha_bar)
    ~ 5e-5), which divides the head's noise error by ~5e-5: run anyway, the samples leave the modes; refused with the
    fix. (DDPM with MAR's linspace starts there on purpose and is allowed: test below.)"""
    head, scheduler = mixture_head
    fast = solver.from_config(scheduler.config, timestep_spacing=spacing)
    with pytest.raises(
        ValueError,
        match=rf"{solver.__name__} with timestep_spacing='{spacing}' starts at the last training step \(99\)"
        r".*timestep_spacing='leading'",
    ):
        mixture_samples(head, fast, 15, 0)
    condition = torch.nn.functional.one_hot(torch.zeros(400, dtype=torch.long), 2).float()
    sample = torch.randn(400, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast.set_timesteps(15)
        assert int(fast.timesteps[0]) == 99
        for t in fast.timesteps:  # what the refused chain would draw
            sample = fast.step(head(sample, t.expand(400), condition), t, sample).prev_sample
    on_modes = ((sample[:, None] - CENTRES[0][None]).norm(dim=-1).min(dim=1).values < 0.35).float().mean()
    assert on_modes < 0.5


def test_solvers_sample_a_learned_variance_head_from_its_noise_half():
    """A learned-variance head (MAR) returns noise and variance values; a solver is handed the noise only, so it draws
    what it draws from a denoiser that returns the noise alone."""
    torch.manual_seed(0)
    head = DiffusionHead(3, 4, 16, 1, learned_variance=True)
    torch.nn.init.normal_(head.output.weight, std=0.3)
    z = torch.randn(6, 4)
    trained = build_ddpm_scheduler(100, timestep_spacing="leading", learned_variance=True)
    with pytest.raises(ValueError, match="variance_type='learned_range'.*variance_type=None"):
        check_head_scheduler(DPMSolverMultistepScheduler.from_config(trained.config), trained)
    solver = DPMSolverMultistepScheduler.from_config(trained.config, variance_type=None)
    check_head_scheduler(solver, trained)

    def sample(denoise, guidance_scale):
        return ddpm_sample(denoise, (3, 3), solver, 8, torch.Generator().manual_seed(0), 1.0, guidance_scale)

    full = sample(lambda x, t: head(x, t, z[: x.shape[0]]), 2.0)
    noise_only = sample(lambda x, t: head(x, t, z[: x.shape[0]])[:, :3], 2.0)
    assert full.shape == (3, 3) and torch.isfinite(full).all()
    assert torch.equal(full, noise_only)


def test_head_schedulers_that_cannot_sample_it_are_refused():
    trained = build_ddpm_scheduler(100)
    dpm = DPMSolverMultistepScheduler.from_config(trained.config)
    check_head_scheduler(dpm, trained)
    check_head_scheduler(DiffusionHeadScheduler.from_config(trained.config), trained, temperature=0.5)
    with pytest.raises(TypeError, match="diffusers scheduler"):
        check_head_scheduler(object(), trained)
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler is not a DDPM-family"):
        check_head_scheduler(FlowMatchEulerDiscreteScheduler(), trained)
    with pytest.raises(ValueError, match="prediction_type='v_prediction'"):
        check_head_scheduler(
            DPMSolverMultistepScheduler.from_config(trained.config, prediction_type="v_prediction"), trained
        )
    with pytest.raises(ValueError, match="another noise schedule .*'beta_schedule': 'linear'"):
        check_head_scheduler(DDIMScheduler.from_config(trained.config, beta_schedule="linear"), trained)
    with pytest.raises(ValueError, match="another noise schedule .*'num_train_timesteps': 1000"):
        check_head_scheduler(UniPCMultistepScheduler(beta_schedule="squaredcos_cap_v2"), trained)
    with pytest.raises(ValueError, match="clips its clean-sample estimate .*clip_sample"):
        check_head_scheduler(DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2"), trained)
    with pytest.raises(ValueError, match=r"`temperature` \(0.5\) .*DPMSolverMultistepScheduler does not take"):
        check_head_scheduler(dpm, trained, temperature=0.5)
    with pytest.raises(ValueError, match="temperature"):
        ddpm_sample(lambda x, t: x, (2, 2), dpm, 4, temperature=0.0)


def test_temperature_scales_only_the_added_noise():
    scheduler = build_ddpm_scheduler(num_train_timesteps=50)
    plain = DDPMScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(10)
    plain.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    sample, eps = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    t = scheduler.timesteps[2]

    def step(sched, **kwargs):
        return sched.step(eps, t, sample, generator=torch.Generator().manual_seed(7), **kwargs).prev_sample

    assert torch.equal(step(scheduler), step(plain))  # temperature 1 = diffusers
    mean = step(scheduler, temperature=0.0)
    assert torch.equal(
        mean, scheduler.step(eps, t, sample, generator=torch.Generator().manual_seed(3), temperature=0.0).prev_sample
    )
    assert torch.allclose(step(scheduler, temperature=0.5) - mean, 0.5 * (step(plain) - mean), atol=1e-6)
    assert scheduler._noise_scale == 1.0  # restored after the call


def test_scheduler_save_load_keeps_the_subclass(tmp_path):
    scheduler = build_ddpm_scheduler(num_train_timesteps=64, beta_schedule="linear")
    scheduler.save_pretrained(tmp_path)
    loaded = DiffusionHeadScheduler.from_pretrained(tmp_path)
    assert loaded.config.num_train_timesteps == 64 and loaded.config.beta_schedule == "linear"
    assert torch.equal(loaded.alphas_cumprod, scheduler.alphas_cumprod)


def test_guided_sampling_with_equal_branches_equals_unguided():
    torch.manual_seed(0)
    head = DiffusionHead(3, 4, 16, 1)
    torch.nn.init.normal_(head.output.weight)  # a non-trivial denoiser
    z = torch.randn(5, 4)
    scheduler = build_ddpm_scheduler(100)
    unguided = ddpm_sample(lambda x, t: head(x, t, z), (5, 3), scheduler, 8, torch.Generator().manual_seed(0))
    guided = ddpm_sample(
        lambda x, t: head(x, t, torch.cat([z, z])), (5, 3), scheduler, 8, torch.Generator().manual_seed(0), 1.0, 4.0
    )
    assert torch.allclose(unguided, guided, atol=1e-5)
    assert torch.equal(
        unguided, ddpm_sample(lambda x, t: head(x, t, z), (5, 3), scheduler, 8, torch.Generator().manual_seed(0))
    )


def test_unguided_steps_of_an_interval_run_the_conditional_rows_alone():
    """Outside `guidance_interval` the guided noise is the conditional one, so `ddpm_sample` hands the denoiser the N
    conditional rows alone (8 steps, (0.5, 1): progress 0, 1/7, ..., 1, the last four guided), and draws what running
    both branches and combining at scale 1 there draws."""
    torch.manual_seed(0)
    head = DiffusionHead(3, 4, 16, 1)
    torch.nn.init.normal_(head.output.weight)
    z = torch.randn(10, 4)  # 5 conditional rows, then 5 unconditional
    scheduler = build_ddpm_scheduler(100)
    rows = []

    def denoise(x, t):
        rows.append(x.shape[0])
        return head(x, t, z[: x.shape[0]])

    fast = ddpm_sample(
        denoise, (5, 3), scheduler, 8, torch.Generator().manual_seed(0), 1.0, 3.0, guidance_interval=(0.5, 1)
    )
    assert rows == [5] * 4 + [10] * 4

    generator = torch.Generator().manual_seed(0)  # the loop before: both branches at every step
    sample = randn_tensor((5, 3), generator=generator)
    scheduler.set_timesteps(8)
    for i, t in enumerate(scheduler.timesteps):
        eps = head(torch.cat([sample, sample]), t.expand(10), z)
        eps_c, eps_u = eps.chunk(2)
        eps = eps_u + (3.0 if i >= 4 else 1.0) * (eps_c - eps_u)
        sample = scheduler.step(eps, t, sample, generator=generator).prev_sample
    reference = sample
    assert torch.allclose(fast, reference, atol=1e-5)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="token_dim"):
        DiffusionHead(0, 4, 16, 1)
    with pytest.raises(ValueError, match="num_layers"):
        DiffusionHead(2, 4, 16, 0)
    head = DiffusionHead(2, 4, 16, 1)
    with pytest.raises(ValueError, match="noisy"):
        head(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="beta_schedule"):
        build_ddpm_scheduler(beta_schedule="cosine")
    scheduler = build_ddpm_scheduler(100)
    with pytest.raises(ValueError, match="num_diffusion_steps"):
        ddpm_sample(lambda x, t: x, (2, 2), scheduler, 101)
    with pytest.raises(ValueError, match="temperature"):
        ddpm_sample(lambda x, t: x, (2, 2), scheduler, 4, temperature=-1.0)


def test_leading_steps_that_visit_the_capped_last_step_are_refused():
    """As many leading steps as training steps start at the cosine schedule's capped last step (beta 0.999), where the
    head's error is amplified ~30x: refused with the largest step count that avoids it. MAR's linspace starts there
    on purpose and is allowed."""
    head = DiffusionHead(token_dim=2, condition_dim=2, width=8, num_layers=1)
    condition = torch.zeros(3, 2)
    scheduler = build_ddpm_scheduler(num_train_timesteps=40)
    with pytest.raises(
        ValueError, match=r"`num_diffusion_steps` \(40\) visits the last training step \(39\).*at most 39"
    ):
        ddpm_sample(lambda x, t: head(x, t, condition), (3, 2), scheduler, 40)
    assert torch.isfinite(ddpm_sample(lambda x, t: head(x, t, condition), (3, 2), scheduler, 39)).all()
    mar = build_ddpm_scheduler(num_train_timesteps=40, timestep_spacing="linspace")
    assert torch.isfinite(ddpm_sample(lambda x, t: head(x, t, condition), (3, 2), mar, 40)).all()


def test_min_snr_weighting_scales_each_draw_by_min_snr_gamma_over_snr():
    """`snr_gamma` multiplies each draw's epsilon-MSE by min(SNR_t, gamma) / SNR_t (1 at high noise, gamma / SNR_t
    at low noise), with the same timesteps and noise as the plain loss; a huge gamma is the plain loss."""
    scheduler = build_ddpm_scheduler(1000)
    targets = torch.randn(512, 4, generator=torch.Generator().manual_seed(0))

    def denoise(x, t):
        return 0.5 * x  # any deterministic function of (x_t, t)

    def loss(**kwargs):
        return diffusion_loss(
            denoise, targets, scheduler, torch.Generator().manual_seed(1), reduction="none", **kwargs
        )

    plain, weighted = loss(), loss(snr_gamma=5.0)
    timesteps = torch.randint(0, 1000, (512,), generator=torch.Generator().manual_seed(1))  # the loss's first draw
    alphas = scheduler.alphas_cumprod[timesteps].double()
    snr = alphas / (1 - alphas)
    expected = plain.double() * torch.minimum(snr, torch.full_like(snr, 5.0)) / snr
    torch.testing.assert_close(weighted.double(), expected, rtol=1e-5, atol=1e-7)
    assert (weighted[snr < 5] == plain[snr < 5]).all() and (weighted[snr > 5] < plain[snr > 5]).all()
    torch.testing.assert_close(loss(snr_gamma=1e12), plain)
    with pytest.raises(ValueError, match="`snr_gamma` must be > 0 or None, got 0"):
        loss(snr_gamma=0)
