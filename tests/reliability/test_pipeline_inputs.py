"""Arguments that used to give silent garbage, a crash deep in the loop or a runaway batch are refused up front, with a
`ValueError` naming the argument, by every family's pipeline (the shipped 32px checkpoints, float32)."""

import math
import re

import numpy as np
import pytest
import torch

from hf_t2i.checkpoints import resolve_checkpoint
from hf_t2i.generation import MAX_GUIDANCE_SCALE
from hf_t2i.pipelines import T2IPipeline

from ..models.test_fluid import tiny_model as tiny_fluid


FAMILIES = ["dalle", "parti", "fluid", "transfusion", "muse"]
#: families whose pipeline takes the token filters (Transfusion denoises: no temperature / top-p / min-p)
FILTERING = ["dalle", "parti", "fluid", "muse"]
_PIPES = {}


def load(family: str) -> T2IPipeline:
    if family not in _PIPES:
        pipe = T2IPipeline.from_pretrained(resolve_checkpoint(family), dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        _PIPES[family] = pipe
    return _PIPES[family]


def fast(family: str) -> dict:
    """The fewest steps each family allows, so a call that does run stays well under a second."""
    return {"num_inference_steps": 2} if family in ("fluid", "transfusion", "muse") else {}


def draw(family: str, prompt="a red circle", **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return load(family)(prompt, output_type="np", **fast(family), **kwargs).images


# 1. guidance_scale and the sampling filters: NaN / inf / absurd values are errors, not NaN or flat images


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e30, MAX_GUIDANCE_SCALE * 1.01, -1.0])
@pytest.mark.parametrize("family", FAMILIES)
def test_bad_guidance_scale_raises_naming_it(family, value):
    with pytest.raises(ValueError, match=rf"`guidance_scale`.*{re.escape(repr(value))}"):
        draw(family, guidance_scale=value)


@pytest.mark.parametrize("family", FAMILIES)
def test_largest_accepted_guidance_scale_draws_finite_images(family):
    """The documented bound is safe: at `MAX_GUIDANCE_SCALE` every family still returns finite, non-flat images (at
    1e30 Fluid and Transfusion returned NaN images and Muse a flat one)."""
    images = draw(family, guidance_scale=MAX_GUIDANCE_SCALE)
    assert np.isfinite(images).all() and images.std() > 0.01


@pytest.mark.parametrize(
    "argument, value",
    [
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", -math.inf),
        ("top_p", math.nan),
        ("top_p", math.inf),
        ("min_p", math.nan),
        ("min_p", math.inf),
    ],
)
@pytest.mark.parametrize("family", FILTERING)
def test_non_finite_sampling_setting_raises_naming_it(family, argument, value):
    with pytest.raises(ValueError, match=rf"`{argument}`.*{re.escape(repr(value))}"):
        draw(family, **{argument: value})


@pytest.mark.parametrize(
    "argument, value",
    [("temperature", math.nan), ("temperature", math.inf), ("top_p", math.nan), ("min_p", math.nan)],
)
def test_discrete_fluid_refuses_non_finite_sampling_setting(argument, value):
    """The shipped Fluid is continuous; `FluidPipeline` validates through `model.check_sampling`, which for discrete
    tokens checks the transformers filters."""
    with pytest.raises(ValueError, match=rf"`{argument}`.*{re.escape(repr(value))}"):
        tiny_fluid("discrete").check_sampling(**{argument: value})


# 2. generator: one torch.Generator per call, or a list of one per image (diffusers' convention) of the right length


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["list", "tuple", "single-item list"])
def test_generator_list_draws_one_image_per_generator(family, kind):
    """A list (or tuple) of one generator per image is the diffusers convention: image `i` is the one-image call
    with generator `i` (tests/pipelines/test_diffusers_conventions.py checks every family in detail)."""
    count = 1 if kind == "single-item list" else 2
    generators = [torch.Generator().manual_seed(i) for i in range(count)]
    images = draw(family, generator=tuple(generators) if kind == "tuple" else generators, num_images_per_prompt=count)
    assert len(images) == count and np.isfinite(images).all()
    assert np.allclose(images[-1], draw(family, generator=torch.Generator().manual_seed(count - 1))[0], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_generator_list_of_the_wrong_length_is_refused(family):
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    with pytest.raises(
        ValueError, match=r"list of generators of length 2, but requested an effective batch size of 3"
    ):
        draw(family, generator=generators, num_images_per_prompt=3)


@pytest.mark.parametrize("family", FAMILIES)
def test_generator_of_another_type_is_refused(family):
    with pytest.raises(ValueError, match=r"`generator` must be a torch.Generator, a list of them .* or None, got int"):
        draw(family, generator=0)
    with pytest.raises(ValueError, match=r"`generator\[0\]` must be a torch.Generator, got int"):
        draw(family, generator=[0])


# 3. A request far over memory is refused before any work, naming the limit and the way out


@pytest.mark.parametrize("family", FAMILIES)
def test_huge_num_images_per_prompt_is_refused_at_once(family):
    limit = T2IPipeline.max_images_per_call
    with pytest.raises(ValueError, match=rf"`num_images_per_prompt`=10000 .*10000 images.*\({limit}\).*in a loop"):
        draw(family, num_images_per_prompt=10_000)


@pytest.mark.parametrize("family", FAMILIES)
def test_limit_counts_every_prompt(family):
    """Two prompts of (limit // 2 + 1) images each are over the limit even though each count alone is not."""
    per_prompt = T2IPipeline.max_images_per_call // 2 + 1
    with pytest.raises(ValueError, match=rf"`num_images_per_prompt`={per_prompt} for 2 prompt"):
        draw(family, prompt=["a red circle", "a blue square"], num_images_per_prompt=per_prompt)


@pytest.mark.parametrize("family", FAMILIES)
def test_max_images_per_call_is_the_documented_knob(family, monkeypatch):
    pipe = load(family)
    monkeypatch.setattr(pipe, "max_images_per_call", 2)
    with pytest.raises(ValueError, match=r"more than `max_images_per_call` \(2\)"):
        draw(family, num_images_per_prompt=3)
    assert len(draw(family, num_images_per_prompt=2)) == 2  # at the limit: drawn
