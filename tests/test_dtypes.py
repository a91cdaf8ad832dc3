"""Reduced precision (issue 15, item 6): every family's prior, sampler and pipeline in bfloat16 and float16, and in
float32 under `torch.autocast("cpu", torch.bfloat16)`.

What is checked, on the tiny models of each family's prior tests (tests/models/prior_tester.py hooks):

- loading with `dtype=torch.bfloat16` gives bfloat16 weights everywhere, the nested image tokenizer included, for
  the models (transformers' `from_pretrained`) and the pipelines (diffusers'; its older `torch_dtype` is deprecated
  in diffusers 0.42 and warns);
- the forward's outputs (logits, predicted noise, hidden states) are in the low dtype and follow the float32 ones
  (correlation > 0.99: a wrong cast, a cache in another dtype or an overflow breaks that);
- sampling runs with every attention call through `scaled_dot_product_attention` and query, key (the caches) and
  value in the low dtype; tokens come out as integer ids, continuous latents in the low dtype and close to the
  float32 draw with the same generator (the discrete draws of an untrained model flip with any rounding, so for them
  the forward's correlation is the check); `decode_image_tokens` returns float32 pixels, as documented;
- pipelines return finite images, and `output_type="pt"` is float32 whatever the pipeline's dtype. That is hf_t2i's
  documented choice (`T2IImageProcessor.postprocess`): diffusers' `VaeImageProcessor` returns "pt" in the VAE's
  dtype, and "np" / "pil" from a float32 copy; ours are all made from one float32 tensor.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from .models import test_dalle, test_fluid, test_muse, test_parti, test_transfusion
from .models.prior_tester import seeded
from .pipelines.test_diffusers_conventions import SETTINGS, pipes  # noqa: F401 (`pipes` is a fixture)


#: family -> its prior tester (the tiny model, its inputs and its sampler)
TESTERS = {
    "dalle": test_dalle.TestDallePrior,
    "parti": test_parti.TestPartiPrior,
    "fluid": test_fluid.TestFluidContinuousRandomPrior,
    "fluid-discrete-raster": test_fluid.TestFluidDiscreteRasterPrior,  # the KV-cached Fluid loop
    "transfusion": test_transfusion.TestTransfusionPriorUNetDDIM,
    "muse": test_muse.TestMusePrior,
}
CONTINUOUS = {"fluid", "transfusion"}
LOW = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models on one thread (see PriorTesterMixin.one_thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """family -> (tester, float32 model, the same weights loaded back with `from_pretrained(dtype=bfloat16)`)."""
    built = {}

    def get(family):
        if family not in built:
            tester = TESTERS[family]()
            model = tester.build_model()
            folder = tmp_path_factory.mktemp(family)
            model.save_pretrained(folder)
            low = tester.model_class.from_pretrained(folder, dtype=torch.bfloat16).eval()
            built[family] = tester, model, low
        return built[family]

    return get


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two outputs over the entries neither masks (DALL-E's logits hold the dtype's lowest
    value where a code cannot come next: both must mask the same entries)."""
    kept_a, kept_b = (x.flatten() > torch.finfo(x.dtype).min / 2 for x in (a, b))
    a, b = a.detach().float().flatten(), b.detach().float().flatten()
    assert torch.equal(kept_a, kept_b), "the two outputs mask different entries"
    return torch.corrcoef(torch.stack([a[kept_a], b[kept_b]]))[0, 1].item()


@contextlib.contextmanager
def recorded_attention():
    """Record (query, key, value) dtypes of every `F.scaled_dot_product_attention` call inside the block."""
    calls, original = [], F.scaled_dot_product_attention

    def recording(query, key, value, *args, **kwargs):
        calls.append((query.dtype, key.dtype, value.dtype))
        return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = recording
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = original


def float_outputs(tester, model) -> dict[str, torch.Tensor]:
    """The forward's per-row float outputs (the loss apart) on rows 0 and 1."""
    with torch.no_grad():
        outputs = tester.forward_outputs(model, tester.forward_inputs(model, [0, 1]))
    assert torch.isfinite(outputs.pop("loss"))
    return {name: value for name, value in outputs.items() if value is not None and value.is_floating_point()}


def guided_sample(tester, model) -> torch.Tensor:
    with torch.no_grad():
        return tester.sample(model, seeded(0), **tester.guided(model, [0, 1], guidance_scale=3.0))


def check_sample(tester, model, sample: torch.Tensor, family: str, dtype: torch.dtype) -> None:
    assert sample.shape == tester.sample_shape(model, 2)
    if family in CONTINUOUS:
        assert sample.dtype == dtype and torch.isfinite(sample).all()
    else:
        assert sample.dtype == torch.long
    with torch.no_grad():
        pixels = model.decode_image_tokens(sample)
    assert pixels.shape == (2, 3, tester.image_size, tester.image_size)
    assert pixels.dtype == torch.float32 and torch.isfinite(pixels).all()  # every decoder's documented output


@pytest.mark.parametrize("family", list(TESTERS))
def test_bfloat16_weights_forward_and_sampling(models, family):
    tester, model, low = models(family)
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}  # the nested image tokenizer too
    assert low.config._attn_implementation == model.config._attn_implementation == "sdpa"

    expected = float_outputs(tester, model)
    with recorded_attention() as calls:
        actual = float_outputs(tester, low)
    assert calls and set(calls) == {(torch.bfloat16,) * 3}
    assert actual.keys() == expected.keys()
    for name, value in actual.items():
        assert value.dtype == torch.bfloat16, name
        assert correlation(value, expected[name]) > 0.99, name

    with recorded_attention() as calls:  # cached steps read the keys / values from the cache: bfloat16 too
        sample = guided_sample(tester, low)
    assert calls and set(calls) == {(torch.bfloat16,) * 3}
    check_sample(tester, low, sample, family, torch.bfloat16)
    if family in CONTINUOUS:  # same generator, same draws: the latents follow the float32 ones
        assert correlation(sample, guided_sample(tester, model)) > 0.99


@pytest.mark.parametrize("family", list(TESTERS))
def test_float16_forward_and_sampling(models, family):
    tester, model, _ = models(family)
    half = copy.deepcopy(model).to(torch.float16)
    expected = float_outputs(tester, model)
    for name, value in float_outputs(tester, half).items():
        assert value.dtype == torch.float16, name
        assert correlation(value, expected[name]) > 0.99, name
    check_sample(tester, half, guided_sample(tester, half), family, torch.float16)


@pytest.mark.parametrize("family", list(TESTERS))
def test_float32_under_bfloat16_autocast(models, family):
    tester, model, _ = models(family)
    expected = float_outputs(tester, model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = float_outputs(tester, model)
        with recorded_attention() as calls:
            sample = guided_sample(tester, model)
    assert calls  # autocast keeps the SDPA path
    for name, value in actual.items():
        assert torch.isfinite(value).all() and correlation(value, expected[name]) > 0.99, name
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    check_sample(tester, model, sample.float() if family in CONTINUOUS else sample, family, torch.float32)
    if family in CONTINUOUS:
        assert correlation(sample, guided_sample(tester, model)) > 0.99


# -- pipelines -----------------------------------------------------------------------------------------------------
PIPELINE_FAMILIES = ["dalle", "parti", "fluid", "transfusion", "muse"]
PROMPTS = ["a red circle", "two blue squares"]


def images(pipe, family: str) -> torch.Tensor:
    return pipe(PROMPTS, generator=seeded(0), output_type="pt", **SETTINGS[family]).images


@pytest.mark.parametrize("family", PIPELINE_FAMILIES)
def test_pipeline_bfloat16_float16_and_autocast(pipes, family, tmp_path):  # noqa: F811 (the imported fixture)
    pipe = pipes(family)
    expected = images(pipe, family)
    pipe.save_pretrained(tmp_path)
    low = type(pipe).from_pretrained(tmp_path, dtype=torch.bfloat16)
    low.set_progress_bar_config(disable=True)
    modules = [c for c in low.components.values() if isinstance(c, torch.nn.Module)]
    assert modules and {p.dtype for m in modules for p in m.parameters()} == {torch.bfloat16}
    half = copy.deepcopy(pipe).to(torch.float16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = images(pipe, family)
    for name, image in {
        "bfloat16": images(low, family),
        "float16": images(half, family),
        "autocast": autocast,
    }.items():
        assert image.dtype == torch.float32 and image.shape == expected.shape, name  # "pt" is float32 (module doc)
        assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1, name
        if family in CONTINUOUS:  # same draws: the pictures follow the float32 ones
            assert (image - expected).abs().mean() < 0.02, name
