"""`DalleConfig(shift_tokens=True)`: DALLE-pytorch's token shifting, in the full forward and while decoding (the
shifted channels of the last image row kept as conv states of the cache's "hybrid" layers)."""

import pytest
import torch
from transformers import DynamicCache, StaticCache

from hf_t2i import DalleConfig, DalleForConditionalGeneration
from hf_t2i.models.dalle.token_shift import shift_tokens

from ..conftest import tiny_dalle_config
from . import test_dalle
from .prior_tester import assert_same, seeded


def reference_shift(x: torch.Tensor, text_length: int, grid: int) -> torch.Tensor:
    """DALLE-pytorch's PreShiftToken written position by position: (B, S, C) whole sequence -> shifted."""
    channels = x.shape[-1]
    quarter, half = -(-channels // 4), -(-channels // 2)
    out = x.clone()
    for p in range(x.shape[1]):
        if p < text_length:
            out[:, p, :half] = x[:, p - 1, :half] if p > 0 else 0
            continue
        row, col = divmod(p - text_length, grid)
        out[:, p, :quarter] = x[:, p - grid, :quarter] if row > 0 else 0
        out[:, p, quarter : 2 * quarter] = x[:, p - 1, quarter : 2 * quarter] if col > 0 else 0
    return out


@pytest.mark.parametrize("channels", [8, 6, 5, 3])
def test_shift_layout_matches_a_position_by_position_reference(channels):
    text_length, grid = 3, 3
    x = torch.randn(2, text_length + grid * grid, channels, generator=seeded(0))
    kept = min(2 * -(-channels // 4), channels)
    expected = reference_shift(x, text_length, grid)
    whole = torch.cat([x.new_zeros(2, grid, kept), x[..., :kept]], dim=1)
    assert torch.equal(shift_tokens(x, whole, 0, text_length, grid), expected)
    # any later chunk, given the kept channels of the W positions before it, computes the same
    for start in (1, 3, 4, 7, 11):
        context = torch.cat([x.new_zeros(2, grid, kept), x[..., :kept]], dim=1)[:, start : start + grid + 2]
        assert torch.equal(
            shift_tokens(x[:, start : start + 2], context, start, text_length, grid), expected[:, start : start + 2]
        )


class TestDalleShiftTokensPrior(test_dalle.TestDallePrior):
    """Every shared prior test (batch == singles, seeds, cache == no cache through DynamicCache, StaticCache and the
    generation protocol, guidance, save / load, bad inputs) on the tiny DALL-E with token shifting on."""

    def build_model(self, **config_overrides):
        return super().build_model(shift_tokens=True, **config_overrides)

    def cached_and_uncached(self, model):
        yield from super().cached_and_uncached(model)
        # prefills that end inside the text, at the first image token, mid-row and at a row's end
        config = model.config
        ids = self.forward_inputs(model, [0, 1])["input_ids"]
        full = model(ids, use_cache=False).logits
        grid = config.image_grid_size
        for prefill in (1, config.text_seq_len, config.text_seq_len + grid + 1, config.text_seq_len + 2 * grid):
            for cache in (DynamicCache(config=config), StaticCache(config=config, max_cache_len=ids.shape[1])):
                cached = test_dalle.incremental_logits(model, ids, cache, prefill=prefill)
                yield f"prefill {prefill}, {type(cache).__name__}", cached, full


@pytest.fixture(scope="module")
def shift_model():
    torch.manual_seed(0)
    return DalleForConditionalGeneration(tiny_dalle_config(100, num_hidden_layers=2, shift_tokens=True)).eval()


def test_shifting_is_off_by_default_and_changes_the_function(shift_model):
    config = shift_model.config
    assert not DalleConfig().shift_tokens and getattr(DalleConfig(), "layer_types", None) is None
    assert config.layer_types == ["hybrid", "hybrid"] and config.number_of_conv_states == 2
    plain = DalleForConditionalGeneration(DalleConfig(**{**config.to_dict(), "shift_tokens": False})).eval()
    assert getattr(plain.config, "layer_types", None) is None
    plain.load_state_dict(shift_model.state_dict())
    ids = test_dalle.sequence(shift_model)
    with torch.no_grad():
        shifted, unshifted = shift_model(ids, use_cache=False).logits, plain(ids, use_cache=False).logits
    assert (shifted - unshifted).abs().max() > 1e-3


def test_generate_equals_the_package_loop(shift_model):
    """Stock generate() (a DynamicCache built from the config) and the package's loop (a StaticCache), greedy,
    unguided and guided."""
    config = shift_model.config
    text = test_dalle.sequence(shift_model)[:, : config.text_seq_len]
    empty = torch.zeros_like(text)
    n = config.num_image_tokens
    for guided in ({}, {"guidance_scale": 3.0, "negative_prompt_ids": empty}):
        generated = shift_model.generate(text, do_sample=False, max_new_tokens=n, **guided)
        negative = {"negative_input_ids": empty, "guidance_scale": 3.0} if guided else {}
        ours = shift_model.sample_image_tokens(text, do_sample=False, **negative)
        assert torch.equal(generated[:, config.text_seq_len :] - config.text_vocab_size, ours)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(shift_model):
    ids = test_dalle.sequence(shift_model)
    grads = []
    for checkpointing in (False, True):
        model = DalleForConditionalGeneration(shift_model.config)
        model.load_state_dict(shift_model.state_dict())
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads.append((loss.detach(), model.model.layers[0].norm1.weight.grad.clone()))
    assert_same(grads[1][0], grads[0][0])
    assert_same(grads[1][1], grads[0][1])


def test_a_cache_without_shift_states_is_refused(shift_model):
    ids = test_dalle.sequence(shift_model)[:, :5]
    with pytest.raises(ValueError, match=r"DynamicCache\(config=model.config\)"):
        shift_model(ids, cache=DynamicCache(), use_cache=True)
