"""Fluid's diffusion head sampled with diffusers' fast solvers (DPM-Solver++, DDIM, UniPC) through the pipeline's
`scheduler`, the diffusers way: `pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`.
Tiny models, offline, seeded."""

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from transformers import pipeline

from hf_t2i import FluidPipeline
from hf_t2i.layers.diffusion_head import DiffusionHeadScheduler

from ..pipelines.test_fluid_pipeline import make_pipeline
from .test_fluid_class_conditional import mar_model


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def draw(pipe, prompt="a red circle", generator=None, **kwargs):
    kwargs = {"num_inference_steps": 4, "num_diffusion_steps": 6, "guidance_scale": 2.0, **kwargs}
    return pipe(prompt, generator=generator or seeded(0), output_type="latent", **kwargs).images


def public(config):
    """A scheduler config without diffusers' bookkeeping (`_class_name`, `_use_default_values`, ...)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


def with_solver(pipe, solver=DPMSolverMultistepScheduler, **overrides):
    pipe.scheduler = solver.from_config(pipe.scheduler.config, **overrides)
    return pipe


class Spy:
    """Counts calls of some methods of an object (and still runs them)."""

    def __init__(self, monkeypatch, target, *names):
        self.calls = dict.fromkeys(names, 0)
        for name in names:
            original = getattr(target, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(target, name, counted)


def test_default_scheduler_is_the_heads_and_discrete_fluid_has_none(tokenizer):
    pipe = make_pipeline(tokenizer)
    assert type(pipe.scheduler) is DiffusionHeadScheduler
    assert pipe.scheduler is not pipe.model.scheduler  # the model keeps its training schedule
    assert public(pipe.scheduler.config) == public(pipe.model.scheduler.config)
    assert make_pipeline(tokenizer, "discrete").scheduler is None


@pytest.mark.parametrize("order", ["random", "raster"])
def test_the_solver_samples_every_head_call(tokenizer, monkeypatch, order):
    """Every head call is one `set_timesteps` (which resets the multistep history) and `num_diffusion_steps` solver
    steps; DDPM never steps. The result is what the model's own loop draws with that scheduler."""
    pipe = with_solver(make_pipeline(tokenizer, order=order))
    iterations = 4 if order == "random" else pipe.model.config.num_image_tokens  # each reveals >= 1 token
    steps = None if order == "raster" else 4
    solver = Spy(monkeypatch, pipe.scheduler, "set_timesteps", "step")
    ddpm = Spy(monkeypatch, DiffusionHeadScheduler, "step")
    head = Spy(monkeypatch, pipe.model.diffusion_head, "forward")
    tokens = draw(pipe, num_inference_steps=steps)
    assert solver.calls == {"set_timesteps": iterations, "step": iterations * 6}
    assert head.calls["forward"] == iterations * 6 and ddpm.calls["step"] == 0
    ids = pipe.processor(text=["a red circle"], return_tensors="pt")
    empty = pipe.processor(text=[""], return_tensors="pt")
    direct = pipe.model.sample_image_tokens(
        ids.input_ids,
        ids.attention_mask,
        empty.input_ids,
        empty.attention_mask,
        num_inference_steps=steps,
        guidance_scale=2.0,
        num_diffusion_steps=6,
        generator=seeded(0),
        scheduler=pipe.scheduler,
    )
    torch.testing.assert_close(direct, tokens)
    assert not torch.allclose(tokens, draw(make_pipeline(tokenizer, order=order), num_inference_steps=steps))


@pytest.mark.parametrize("solver", [DPMSolverMultistepScheduler, DDIMScheduler, UniPCMultistepScheduler])
def test_solver_batch_equals_singles_and_seeds_reproduce(tokenizer, solver):
    pipe = with_solver(make_pipeline(tokenizer), solver)
    prompts = ["a red circle", "two blue squares"]
    batch = draw(pipe, prompts, [seeded(1), seeded(2)], guidance_schedule="linear")
    singles = [draw(pipe, p, seeded(s), guidance_schedule="linear") for p, s in zip(prompts, (1, 2))]
    torch.testing.assert_close(batch, torch.cat(singles), rtol=0, atol=1e-5)
    assert torch.isfinite(batch).all()
    assert torch.equal(draw(pipe, generator=seeded(3)), draw(pipe, generator=seeded(3)))
    assert not torch.equal(draw(pipe, generator=seeded(3)), draw(pipe, generator=seeded(4)))


def test_a_saved_solver_is_kept_by_every_entry_point(tokenizer, tmp_path):
    pipe = with_solver(make_pipeline(tokenizer))
    pipe.save_pretrained(tmp_path)
    kwargs = dict(num_inference_steps=4, num_diffusion_steps=6, guidance_scale=2.0)
    expected = pipe("a red circle", generator=seeded(5), output_type="np", **kwargs).images

    loaded = FluidPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is DPMSolverMultistepScheduler
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    assert np.array_equal(loaded("a red circle", generator=seeded(5), output_type="np", **kwargs).images, expected)

    task = pipeline("text-to-image", model=str(tmp_path))
    assert type(task.generation_pipeline.scheduler) is DPMSolverMultistepScheduler
    assert public(task.generation_pipeline.scheduler.config) == public(pipe.scheduler.config)
    image = task("a red circle", generator=seeded(5), **kwargs)
    assert np.abs(np.asarray(image, dtype=np.float32) / 255 - expected[0]).max() <= 1 / 255 + 1e-6


def test_the_default_scheduler_round_trips_as_the_heads(tokenizer, tmp_path):
    pipe = make_pipeline(tokenizer)
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler" / "scheduler_config.json").is_file()
    loaded = FluidPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is DiffusionHeadScheduler
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)


@pytest.mark.parametrize(
    ("solver", "overrides", "kwargs", "message"),
    [
        (DPMSolverMultistepScheduler, {}, {"temperature": 0.5}, r"`temperature` \(0.5\) .*pass temperature=1.0"),
        (DDIMScheduler, {}, {"temperature": 0.0}, r"`temperature` \(0.0\)"),
        (DPMSolverMultistepScheduler, {"timestep_spacing": "linspace"}, {}, "timestep_spacing='leading'"),
        (UniPCMultistepScheduler, {"timestep_spacing": "trailing"}, {}, "starts at the last training step"),
        (DDIMScheduler, {"beta_schedule": "linear"}, {}, "another noise schedule"),
        (DPMSolverMultistepScheduler, {"prediction_type": "v_prediction"}, {}, "prediction_type='v_prediction'"),
        (DPMSolverMultistepScheduler, {}, {"num_diffusion_steps": 51}, "num_diffusion_steps"),
    ],
)
def test_bad_combinations_are_refused_before_the_head_runs(tokenizer, monkeypatch, solver, overrides, kwargs, message):
    pipe = with_solver(make_pipeline(tokenizer), solver, **overrides)
    head = Spy(monkeypatch, pipe.model.diffusion_head, "forward")
    with pytest.raises(ValueError, match=message):
        draw(pipe, **kwargs)
    if "timestep_spacing" not in overrides and "num_diffusion_steps" not in kwargs:
        assert head.calls["forward"] == 0  # refused up front, not at the first head call


def test_a_flow_matching_scheduler_is_refused(tokenizer):
    pipe = make_pipeline(tokenizer)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="not a DDPM-family diffusers scheduler"):
        draw(pipe)


def test_mar_learned_variance_head_with_dpm_solver():
    """A converted MAR head: MAR's linspace spacing and learned variance; the solver is refused with each fix, then
    samples with them (the noise half of the head's output)."""
    pipe = FluidPipeline(model=mar_model())
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(class_labels=[1, 3], num_inference_steps=3, num_diffusion_steps=5, guidance_scale=2.0)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="variance_type=None"):
        pipe(generator=seeded(0), **kwargs)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, variance_type=None)
    with pytest.raises(ValueError, match="timestep_spacing='leading'"):
        pipe(generator=seeded(0), **kwargs)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, variance_type=None, timestep_spacing="leading"
    )
    tokens = pipe(generator=seeded(0), output_type="latent", **kwargs).images
    again = pipe(generator=seeded(0), output_type="latent", **kwargs).images
    assert tokens.shape == (2, 16, pipe.model.config.token_dim) and torch.isfinite(tokens).all()
    assert torch.equal(tokens, again)
