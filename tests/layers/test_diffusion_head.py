import pytest
import torch
from diffusers import DDPMScheduler

from hf_t2i.layers.diffusion_head import (
    DiffusionHead,
    DiffusionHeadScheduler,
    build_ddpm_scheduler,
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


def test_head_learns_a_conditional_2d_mixture():
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
    head.eval()
    for c in range(2):
        condition = torch.nn.functional.one_hot(torch.full((400,), c), 2).float()
        samples = ddpm_sample(
            lambda x, t, z=condition: head(x, t, z), (400, 2), scheduler, 50, torch.Generator().manual_seed(1)
        )
        distance = (samples[:, None] - CENTRES[c][None]).norm(dim=-1)  # (400, 2 modes)
        nearest = distance.argmin(dim=1)
        assert (distance.min(dim=1).values < 0.35).float().mean() > 0.9  # on this condition's modes
        assert 0.25 < nearest.float().mean() < 0.75  # and both modes drawn (no collapse)
        # temperature 0 removes the sampling noise: samples shrink towards the modes
        cold = ddpm_sample(
            lambda x, t, z=condition: head(x, t, z), (400, 2), scheduler, 50, torch.Generator().manual_seed(1), 0.0
        )
        assert (cold[:, None] - CENTRES[c][None]).norm(dim=-1).min(dim=1).values.mean() < distance.min(1).values.mean()


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
