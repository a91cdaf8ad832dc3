"""`PriorTesterMixin`: the behaviour every text-to-image prior must show, written once (transformers'
`ModelTesterMixin` for the priors).

A family's test module defines `class TestDallePrior(PriorTesterMixin)` and provides the hooks below; the mixin's
tests then check, for that family:

- save / load: `from_pretrained(save_pretrained(...))` keeps the config, the weights, the forward outputs and the seeded
  samples; `AutoConfig`, `AutoModel` and `AutoModelForTextToImage` resolve to the family's classes;
- batch == singles: forward outputs and deterministic samples of a batch equal its rows run alone, and a row's sample
  does not depend on the other rows' conditions (for families that draw noise for the whole batch);
- seeds: the same generator seed gives the same sample, another seed another one;
- cache == no cache: the KV-cached paths (forward, `prepare_image_generation` + `image_generation_step`, the sampler)
  equal their uncached references;
- guidance: `guidance_scale=1.0` draws exactly the unguided sample, the doubled batch's conditional branch is the
  unguided prediction, a missing negative prompt is an error naming it (or the family's documented default);
- bad inputs: each entry of the family's tables raises a `ValueError` that names the argument;
- decode: `decode_image_tokens` of a sample is (B, 3, H, W) in [-1, 1].

Conditions are built per row index (`generation_inputs([0, 1])` is rows 0 and 1, each always the same), so that a
batch and its rows alone can be compared without slicing family-specific inputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModel

from hf_t2i import AutoModelForTextToImage
from hf_t2i.generation import ClassifierFreeGuidance, ImageGenerator


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_same(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, msg: str = "") -> None:
    """Equal shapes and values: exactly for integer tensors, within `atol` for floats."""
    assert actual.shape == expected.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda m: f"{msg} {m}")


def differs(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-4) -> bool:
    return a.shape != b.shape or not torch.allclose(a.float(), b.float(), atol=atol)


def assert_value_error(call, kwargs: dict[str, Any], name: str, case: dict[str, Any]) -> None:
    """`call(**kwargs)` raises a ValueError whose message contains `name` (the argument, or the text naming the fix);
    `case` is the bad part of `kwargs`, for the failure message."""
    try:
        call(**kwargs)
    except ValueError as error:
        assert name in str(error), f"{sorted(case)}: the ValueError does not name `{name}`: {error}"
    else:
        pytest.fail(f"{sorted(case)}: no ValueError (expected one naming `{name}`)")


def comparable(config) -> dict[str, Any]:
    """`config.to_dict()` without what loading legitimately changes: the path, the `auto_map` that `save_pretrained`
    writes for the generic loaders (`hf_t2i.remote_code`), and the `dtype` that `from_pretrained` writes into nested
    sub-configs (None before saving)."""
    values = config.to_dict()
    values.pop("_name_or_path", None)
    values.pop("auto_map", None)
    for value in values.values():
        if isinstance(value, dict):
            value.pop("dtype", None)
    return values


def crop(row: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A batched row (1, ...) cut to a single run's shape (right-padded sequences are longer in a batch)."""
    return row[tuple(slice(0, size) for size in shape)]


class PriorTesterMixin:
    """Behaviour tests shared by every prior. Subclasses set the class attributes and implement the hooks."""

    #: the text-to-image model and the base model `AutoModel` resolves to
    model_class: type
    base_model_class: type
    #: the sampler method and the family's sampling arguments (merged under every call of `sample`)
    sampler_name = "sample_image_tokens"
    sampling_kwargs: dict[str, Any] = {}
    #: the argument a guided call must be given (None: the family has a default unconditional branch)
    negative_argument: str | None = "negative_input_ids"
    #: pixels of `decode_image_tokens`
    image_size: int

    # -- hooks ------------------------------------------------------------------------------------------------------
    def build_model(self, **config_overrides) -> torch.nn.Module:
        """A tiny model (hidden <= 32, <= 2 layers, a 4x4 grid), seeded, in eval mode."""
        raise NotImplementedError

    def forward_inputs(self, model, rows: Sequence[int]) -> dict[str, Any]:
        """`model(**inputs)` for the given row indices, with labels (or targets) so that a loss comes out; built anew
        for every call (generators inside are fresh)."""
        raise NotImplementedError

    def forward_outputs(self, model, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Run the model: its loss (0-dim) and its per-row outputs (B, ...) (logits, hidden states, noise)."""
        out = model(**inputs)
        return {"loss": out.loss, "logits": out.logits}

    def generation_inputs(self, model, rows: Sequence[int]) -> dict[str, Any]:
        """The sampler's condition for the given row indices (captions, masks), no sampling arguments."""
        raise NotImplementedError

    def negative_inputs(self, model) -> dict[str, Any]:
        """A negative prompt of one row (broadcast to the batch), different from every row's condition."""
        raise NotImplementedError

    def default_negative_inputs(self, model) -> dict[str, Any]:
        """Families without `negative_argument`: the negative inputs a guided call without one must equal."""
        raise NotImplementedError

    def sample(self, model, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """The loop-only sampler with the family's sampling arguments."""
        return getattr(model, self.sampler_name)(**{**self.sampling_kwargs, **kwargs}, generator=generator)

    def sample_shape(self, model, batch: int) -> tuple[int, ...]:
        """The shape of a sample of `batch` rows."""
        raise NotImplementedError

    def deterministic_kwargs(self, model, rows: Sequence[int]) -> dict[str, Any] | None:
        """Sampler arguments under which every row is drawn independently of the batch (greedy, fixed `latents`), or
        None when the family draws noise for the whole batch (then only `test_sampling_rows_are_independent` runs)."""
        return None

    def guided_first_step(self, model, inputs: dict[str, Any], guidance_scale: float, scale: float, generator):
        """`prepare_image_generation(**inputs)` under `guidance_scale`, then the first `image_generation_step`; return
        its prediction guided at `scale` (B, ...). Families whose step returns the doubled batch's raw prediction
        implement `first_prediction` and keep this."""
        guidance = ClassifierFreeGuidance(guidance_scale)
        state = model.prepare_image_generation(**inputs, guidance=guidance)
        prediction = self.first_prediction(model, state, generator)
        return guidance.combine(prediction, scale) if guidance.enabled else prediction

    def first_prediction(self, model, state, generator) -> torch.Tensor:
        """The first `image_generation_step`'s output (B', ...) for `state` (logits, predicted noise)."""
        raise NotImplementedError

    def cached_and_uncached(self, model) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, cached, uncached reference) pairs of every KV-cached path of the family; none without a cache."""
        return iter(())

    def bad_sampling_inputs(self, model) -> list[tuple[dict[str, Any], str]]:
        """(sampler kwargs, text the ValueError must contain), merged over a guided call of row 0."""
        return []

    def bad_forward_inputs(self, model, inputs: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
        """(forward kwargs, text the ValueError must contain), merged over `inputs` (`forward_inputs(model, [0, 1])`)."""
        return []

    # -- helpers ----------------------------------------------------------------------------------------------------
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def one_thread(cls):
        """Run the tiny models on one thread (restored after the class): on a busy 2-core machine, intra-op threads
        of 32-wide matmuls spin against each other and make the sampling loops ~50x slower."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls):
        """The tiny model, built once per test class (the tests never change it)."""
        return cls().build_model()

    def guided(self, model, rows: Sequence[int], guidance_scale: float = 2.0) -> dict[str, Any]:
        return {**self.generation_inputs(model, rows), **self.negative_inputs(model), "guidance_scale": guidance_scale}

    # -- 1. save / load ---------------------------------------------------------------------------------------------
    def test_save_load_round_trip(self, model, tmp_path):
        model.save_pretrained(tmp_path)
        loaded = self.model_class.from_pretrained(tmp_path).eval()
        assert type(loaded) is self.model_class
        assert comparable(loaded.config) == comparable(model.config)
        state = loaded.state_dict()
        assert state.keys() == model.state_dict().keys()
        for name, value in model.state_dict().items():
            assert torch.equal(state[name], value), name

        inputs = self.guided(model, [0, 1])
        a, b = self.sample(model, seeded(0), **inputs), self.sample(loaded, seeded(0), **inputs)
        assert torch.equal(a, b)
        # equal weights in freshly allocated tensors may take other CPU conv kernels: last-bit differences only
        torch.testing.assert_close(loaded.decode_image_tokens(b), model.decode_image_tokens(a), rtol=1e-5, atol=1e-5)

        expected = self.forward_outputs(model, self.forward_inputs(model, [0, 1]))
        assert expected["loss"].ndim == 0 and torch.isfinite(expected["loss"]) and expected["loss"] > 0
        actual = self.forward_outputs(loaded, self.forward_inputs(loaded, [0, 1]))
        for name, value in expected.items():
            assert torch.equal(actual[name], value), name

    def test_auto_classes_resolve_the_family(self, model, tmp_path):
        model.save_pretrained(tmp_path)
        config = AutoConfig.from_pretrained(tmp_path)
        assert type(config) is type(model.config)
        assert comparable(config) == comparable(model.config)
        base = AutoModel.from_pretrained(tmp_path)
        assert type(base) is self.base_model_class
        reference = model.base_model.state_dict()
        assert base.state_dict().keys() == reference.keys()
        assert all(torch.equal(value, reference[name]) for name, value in base.state_dict().items())
        auto = AutoModelForTextToImage.from_pretrained(tmp_path).eval()
        assert type(auto) is self.model_class
        expected = self.forward_outputs(model, self.forward_inputs(model, [0]))
        actual = self.forward_outputs(auto, self.forward_inputs(auto, [0]))
        for name, value in expected.items():
            assert torch.equal(actual[name], value), name

    def test_implements_the_generation_protocol(self, model):
        assert isinstance(model, ImageGenerator)
        assert issubclass(self.model_class, ImageGenerator)

    # -- 2. batch == singles ----------------------------------------------------------------------------------------
    def test_forward_batch_equals_singles(self, model):
        rows = [0, 1, 2]
        batched = self.forward_outputs(model, self.forward_inputs(model, rows))
        for i, row in enumerate(rows):
            single = self.forward_outputs(model, self.forward_inputs(model, [row]))
            for name, value in single.items():
                if value.ndim:  # the loss is a batch mean
                    assert_same(crop(batched[name][i : i + 1], value.shape), value, msg=f"row {row} {name}")

    def test_sampling_batch_equals_singles(self, model):
        if self.deterministic_kwargs(model, [0]) is None:
            pytest.skip("the family draws noise for the whole batch: see test_sampling_rows_are_independent")
        rows = [0, 1]
        batched = self.sample(model, seeded(0), **self.guided(model, rows), **self.deterministic_kwargs(model, rows))
        assert batched.shape == self.sample_shape(model, 2)
        for i, row in enumerate(rows):
            single = self.sample(
                model, seeded(0), **self.guided(model, [row]), **self.deterministic_kwargs(model, [row])
            )
            assert_same(batched[i : i + 1], single, msg=f"row {row}")

    def test_sampling_rows_are_independent(self, model):
        """With the batch's noise fixed (same seed, same shapes), a row's sample depends on its own condition only."""
        a = self.sample(model, seeded(0), **self.guided(model, [0, 1]))
        b = self.sample(model, seeded(0), **self.guided(model, [0, 2]))
        assert_same(a[:1], b[:1], msg="row 0 changed with row 1's condition")
        assert differs(a[1:], b[1:]), "row 1 ignores its condition"

    # -- 3. seeds ---------------------------------------------------------------------------------------------------
    def test_sampling_is_seeded(self, model):
        inputs = self.guided(model, [0, 1])
        a = self.sample(model, seeded(0), **inputs)
        assert a.shape == self.sample_shape(model, 2)
        assert torch.equal(a, self.sample(model, seeded(0), **inputs))
        assert not torch.equal(a, self.sample(model, seeded(1), **inputs))

    # -- 4. cache == no cache ---------------------------------------------------------------------------------------
    def test_cached_equals_uncached(self, model):
        pairs = list(self.cached_and_uncached(model))
        if not pairs:
            pytest.skip("no KV cache in this family / generation order")
        for name, cached, uncached in pairs:
            assert_same(cached, uncached, msg=name)

    # -- 5. guidance ------------------------------------------------------------------------------------------------
    def test_guidance_scale_one_draws_the_unguided_sample(self, model):
        plain = self.sample(model, seeded(0), **self.generation_inputs(model, [0, 1]))
        assert torch.equal(self.sample(model, seeded(0), **self.guided(model, [0, 1], guidance_scale=1.0)), plain)
        assert differs(self.sample(model, seeded(0), **self.guided(model, [0, 1], guidance_scale=3.0)), plain)

    def test_guided_step_at_scale_one_is_the_conditional_branch(self, model):
        """Through the protocol: the doubled batch's prediction guided at scale 1 is the unguided prediction (the
        conditional rows are computed as if alone), and guidance at scale 3 changes it."""
        plain = self.guided_first_step(model, self.generation_inputs(model, [0, 1]), 1.0, 1.0, seeded(0))
        inputs = {**self.generation_inputs(model, [0, 1]), **self.negative_inputs(model)}
        assert_same(self.guided_first_step(model, inputs, 3.0, 1.0, seeded(0)), plain)
        assert differs(self.guided_first_step(model, inputs, 3.0, 3.0, seeded(0)), plain)

    def test_guidance_without_a_negative_prompt(self, model):
        inputs = {**self.generation_inputs(model, [0, 1]), "guidance_scale": 2.0}
        if self.negative_argument is not None:
            with pytest.raises(ValueError, match=self.negative_argument):
                self.sample(model, seeded(0), **inputs)
            return
        explicit = self.sample(model, seeded(0), **inputs, **self.default_negative_inputs(model))
        assert torch.equal(self.sample(model, seeded(0), **inputs), explicit)

    # -- 6. bad inputs ----------------------------------------------------------------------------------------------
    def test_bad_sampling_inputs_name_the_argument(self, model):
        cases = [
            ({"guidance_scale": -1.0}, "guidance_scale"),
            ({"guidance_scale": math.nan}, "guidance_scale"),
            ({"guidance_scale": math.inf}, "guidance_scale"),
            *self.bad_sampling_inputs(model),
        ]
        base = self.guided(model, [0])
        for case, name in cases:
            assert_value_error(functools.partial(self.sample, model, seeded(0)), {**base, **case}, name, case)

    def test_bad_forward_inputs_name_the_argument(self, model):
        cases = self.bad_forward_inputs(model, self.forward_inputs(model, [0, 1]))
        assert cases, "a family checks its forward inputs: list the bad ones"
        for case, name in cases:
            assert_value_error(model, {**self.forward_inputs(model, [0, 1]), **case}, name, case)

    # -- 7. decode --------------------------------------------------------------------------------------------------
    def test_decode_image_tokens_gives_pixels_in_range(self, model):
        tokens = self.sample(model, seeded(0), **self.generation_inputs(model, [0, 1]))
        pixels = model.decode_image_tokens(tokens)
        assert pixels.shape == (2, 3, self.image_size, self.image_size)
        assert torch.isfinite(pixels).all() and pixels.min() >= -1 and pixels.max() <= 1
        assert differs(pixels[0], pixels[1], atol=0), "two rows decode to the same image"
