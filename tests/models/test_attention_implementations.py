"""Attention implementations and the per-layer outputs, on the tiny priors of every family (the models that
`tests/models/prior_tester.py`'s subclasses build).

- `attn_implementation` is chosen the transformers way (`from_pretrained(..., attn_implementation=...)`,
  `set_attn_implementation`), reaches every attention layer (nested image tokenizers included) and eager == SDPA,
  with and without the KV cache, DALL-E's and Parti's sparse masks included;
- eager attention returns weights whose rows sum to 1 over the keys the mask allows and are 0 elsewhere; SDPA refuses
  `output_attentions=True` with an error that names the fix;
- `output_hidden_states=True` returns one hidden state per layer plus the input; `return_dict=False` returns the dict
  output's `to_tuple()`;
- gradient checkpointing recomputes the blocks in the backward pass and gives the gradients of a plain run.
"""

from __future__ import annotations

import inspect
import logging

import pytest
import torch
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hf_t2i import DalleForConditionalGeneration, PartiForConditionalGeneration
from hf_t2i.layers import Attention, eager_attention, sparse_image_mask
from hf_t2i.layers.transformer import TransformerBlock

from . import test_dalle, test_fluid, test_fluid_class_conditional, test_muse, test_parti, test_transfusion
from .prior_tester import assert_same


PRIORS = {
    "dalle": test_dalle.TestDallePrior,
    "parti": test_parti.TestPartiPrior,
    "fluid-raster": test_fluid.TestFluidDiscreteRasterPrior,
    "fluid-random": test_fluid.TestFluidContinuousRandomPrior,
    "mar": test_fluid_class_conditional.TestMarPrior,
    "transfusion": test_transfusion.TestTransfusionPriorLinearDDPM,
    "muse": test_muse.TestMusePrior,
}
ROWS = [0, 1]  # rows with different caption lengths (padding masks differ within the batch)


def prior_with(name: str, attn_implementation: str):
    """The family's test prior whose every model (also the variants its cache checks build) uses the implementation."""

    class Prior(PRIORS[name]):
        def build_model(self, **config_overrides):
            model = super().build_model(**config_overrides)
            model.set_attn_implementation(attn_implementation)
            return model

    return Prior()


def attention_layers(model) -> list[Attention]:
    return [module for module in model.modules() if isinstance(module, Attention)]


def hidden_state_counts(model) -> dict[str, int]:
    """Output field -> the number of hidden states it must hold: one per block of its stack, plus the stack's input."""
    inner = model.model
    if isinstance(model, PartiForConditionalGeneration):
        encoder = inner.text_encoder
        return {
            "decoder_hidden_states": len(inner.decoder.layers) + 1,
            "encoder_hidden_states": encoder_blocks(encoder),
        }
    if hasattr(inner, "decoder_layers"):  # MAR's MAE encoder and decoder
        return {"hidden_states": len(inner.decoder_layers) + 1, "encoder_hidden_states": len(inner.encoder_layers) + 1}
    counts = {"hidden_states": len(inner.layers) + 1}
    if hasattr(inner, "text_encoder"):
        counts["encoder_hidden_states"] = encoder_blocks(inner.text_encoder)
    return counts


def encoder_blocks(text_encoder) -> int:
    return len(text_encoder.layers) + len(text_encoder.aligner) + 1


def flatten(output) -> list:
    """The leaves of a (nested) tuple output, in order."""
    leaves = []
    for item in output:
        leaves.extend(flatten(item) if isinstance(item, tuple) else [item])
    return leaves


def assert_same_outputs(actual: tuple, expected: tuple, atol: float = 0.0) -> None:
    actual, expected = flatten(actual), flatten(expected)
    assert len(actual) == len(expected), f"{len(actual)} outputs != {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        if isinstance(e, Cache):
            assert a is e or type(a) is type(e), f"output {i}: {type(a).__name__} != {type(e).__name__}"
        else:
            assert_same(a, e, atol=atol, msg=f"output {i}")


def base_model_inputs(model, inputs: dict) -> dict:
    """The base model's part of the head's inputs (its named arguments); Parti's decoder inputs from the labels."""
    parameters = inspect.signature(model.model.forward).parameters
    named = {k for k, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    base = {k: v for k, v in inputs.items() if k in named}
    if isinstance(model, PartiForConditionalGeneration):
        base["decoder_input_ids"] = model.decoder_inputs(inputs["labels"])
    return base


@pytest.fixture(params=list(PRIORS), scope="module")
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def models(name):
    """(prior, SDPA model, eager model) of one family, the same weights."""
    prior = PRIORS[name]()
    return prior, prior_with(name, "sdpa").build_model(), prior_with(name, "eager").build_model()


# -- choosing the implementation ------------------------------------------------------------------------------------
def test_default_is_sdpa_and_set_attn_implementation_reaches_every_layer(name):
    model = PRIORS[name]().build_model()
    layers = attention_layers(model)
    assert layers and {layer.attn_implementation for layer in layers} == {"sdpa"}
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    assert {layer.attn_implementation for layer in layers} == {"eager"}  # nested tokenizers and encoders too
    inputs = prior_with(name, "eager").forward_inputs(model, ROWS)
    assert model(**inputs, output_attentions=True).to_tuple()  # eager returns weights
    model.set_attn_implementation("sdpa")
    assert {layer.attn_implementation for layer in layers} == {"sdpa"}


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_from_pretrained_takes_attn_implementation(name, attn_implementation, tmp_path):
    """Also the composites whose nested image tokenizer has no attention (DALL-E's dVAE) or its own (Parti's
    ViT-VQGAN): an explicit implementation used to be refused by the nested model."""
    prior = PRIORS[name]()
    model = prior.build_model()
    model.save_pretrained(tmp_path)
    loaded = prior.model_class.from_pretrained(tmp_path, attn_implementation=attn_implementation).eval()
    assert loaded.config._attn_implementation == attn_implementation
    assert {layer.attn_implementation for layer in attention_layers(loaded)} == {attn_implementation}
    expected = prior.forward_outputs(model, prior.forward_inputs(model, ROWS))
    actual = prior.forward_outputs(loaded, prior.forward_inputs(loaded, ROWS))
    for key in expected:
        assert_same(actual[key], expected[key], msg=key)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("sdpaa", 'attn_implementation="sdpaa"` is not supported'),
        ("flash_attention_2", "does not support Flash Attention 2"),  # the 4-D sparse masks: see `_supports_*`
        ("flex_attention", "does not support an attention implementation through torch's flex_attention"),
    ],
)
def test_unsupported_attn_implementation_is_a_clear_error(bad, message, tmp_path):
    prior = PRIORS["dalle"]()
    model = prior.build_model()
    with pytest.raises(ValueError, match=message):
        model.set_attn_implementation(bad)
    assert model.config._attn_implementation == "sdpa"  # unchanged
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        prior.model_class.from_pretrained(tmp_path, attn_implementation=bad)


def test_a_registered_attention_function_is_used():
    """A function added to transformers' attention interface runs in every layer, chosen by its name."""
    calls = []

    def counting_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append(module)
        return eager_attention(module, query, key, value, attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS["hf_t2i_test_counting"] = counting_attention
    try:
        prior = PRIORS["parti"]()
        model = prior.build_model()
        model.set_attn_implementation("hf_t2i_test_counting")
        with torch.no_grad():
            model(**prior.forward_inputs(model, ROWS))
    finally:
        del ALL_ATTENTION_FUNCTIONS["hf_t2i_test_counting"]
    decoder, encoder = model.model.decoder.layers, model.model.text_encoder.layers
    assert len(calls) == 2 * len(decoder) + len(encoder)  # decoder self + cross, encoder self


# -- eager == SDPA --------------------------------------------------------------------------------------------------
def test_eager_matches_sdpa(models):
    prior, sdpa, eager = models
    with torch.no_grad():
        expected = prior.forward_outputs(sdpa, prior.forward_inputs(sdpa, ROWS))
        actual = prior.forward_outputs(eager, prior.forward_inputs(eager, ROWS))
    for key in expected:
        assert_same(actual[key], expected[key], atol=1e-5, msg=key)


def test_eager_matches_sdpa_with_cache(name):
    """Every KV-cached path of the family (forward with a dynamic and a static cache, the generation steps), eager
    against SDPA and against its own uncached pass; DALL-E's include its row / conv and column / full masks."""
    with torch.no_grad():
        sdpa_prior, eager_prior = prior_with(name, "sdpa"), prior_with(name, "eager")
        sdpa_paths = list(sdpa_prior.cached_and_uncached(sdpa_prior.build_model()))
        eager_paths = list(eager_prior.cached_and_uncached(eager_prior.build_model()))
    if not sdpa_paths:
        pytest.skip(f"{name} has no KV cache")
    assert [path[0] for path in eager_paths] == [path[0] for path in sdpa_paths]
    for (path, cached, uncached), (_, sdpa_cached, _) in zip(eager_paths, sdpa_paths):
        assert_same(cached, sdpa_cached, atol=1e-5, msg=f"{path}: eager vs SDPA")
        assert_same(cached, uncached, atol=1e-5, msg=f"{path}: eager cached vs uncached")


# -- attention weights ----------------------------------------------------------------------------------------------
def record_attention(model):
    """Hooks that record (mask, weights) of every attention call."""
    calls, hooks = [], []

    def hook(module, args, output):
        calls.append((args[1], output[1]))

    for layer in attention_layers(model.model):
        hooks.append(layer.register_forward_hook(hook))
    return calls, hooks


def test_eager_attention_weights_follow_the_masks(models):
    prior, _, eager = models
    inputs = prior.forward_inputs(eager, ROWS)
    calls, hooks = record_attention(eager)
    try:
        with torch.no_grad():
            out = eager(**inputs, output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    returned = [
        w
        for field in ("attentions", "cross_attentions", "decoder_attentions", "encoder_attentions")
        for w in (getattr(out, field, None) or ())
    ]
    assert len(returned) == len(calls), "every attention call's weights come back, once"
    assert {id(w) for w in returned} == {id(w) for _, w in calls}
    for mask, weights in calls:
        batch, heads, queries, keys = weights.shape
        assert batch == len(ROWS) and heads > 1
        allowed = torch.ones(weights.shape, dtype=torch.bool)
        if mask is not None:
            allowed = (mask if mask.dtype == torch.bool else mask > float("-inf")).expand(weights.shape)
        assert_same(weights.sum(-1), torch.ones(batch, heads, queries), atol=1e-5, msg="row sums")
        assert (weights[~allowed] == 0).all(), "weight on a masked key"
        assert (weights[allowed] > 0).all(), "no weight on an allowed key"


@pytest.mark.parametrize("attention_types", [["row", "column"], ["conv", "full"]])
def test_dalle_weights_show_the_sparse_patterns(attention_types):
    """Independently of the masks the model builds: layer i's weights are nonzero exactly on `sparse_image_mask` of
    its attention type."""
    model = prior_with("dalle", "eager").build_model(attention_types=attention_types)
    config = model.config
    ids = PRIORS["dalle"]().forward_inputs(model, ROWS)["input_ids"]
    with torch.no_grad():
        attentions = model(ids, use_cache=False, output_attentions=True).attentions
    grid = config.image_grid_size
    assert len(attentions) == config.num_hidden_layers
    for kind, weights in zip(config.attention_types, attentions):
        pattern = sparse_image_mask(kind, config.text_seq_len, grid, grid, config.conv_kernel_size)
        assert torch.equal(weights > 0, pattern.expand(weights.shape)), kind


def test_parti_cross_attention_ignores_padded_text():
    prior = prior_with("parti", "eager")
    model = prior.build_model()
    inputs = prior.forward_inputs(model, ROWS)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    padded = inputs["attention_mask"] == 0  # (B, S)
    assert len(out.cross_attentions) == model.config.num_hidden_layers
    for weights in out.cross_attentions:  # (B, H, N, S)
        assert (weights.permute(0, 3, 1, 2)[padded] == 0).all() and (weights.permute(0, 3, 1, 2)[~padded] > 0).all()


def test_sdpa_warns_and_returns_no_weights(models, caplog):
    """As transformers' models: asking SDPA for weights is not an error (transformers' common tests ask any model),
    it warns once, naming the fix, and the outputs are those of a plain call."""
    prior, sdpa, _ = models
    logging.Logger.warning_once.cache_clear()
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        out = sdpa(**prior.forward_inputs(sdpa, ROWS), output_attentions=True)
        plain = sdpa(**prior.forward_inputs(sdpa, ROWS))
    assert 'attn_implementation="eager"' in caplog.text
    for field in ("attentions", "cross_attentions", "decoder_attentions", "encoder_attentions"):
        assert getattr(out, field, None) is None, field
    assert_same_outputs(out.to_tuple(), plain.to_tuple())


def test_parti_base_model_names_missing_decoder_inputs():
    model = PRIORS["parti"]().build_model()
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model.model(input_ids=torch.ones(1, 10, dtype=torch.long))


def test_no_attentions_or_hidden_states_unless_asked(models):
    prior, _, eager = models
    with torch.no_grad():
        out = eager(**prior.forward_inputs(eager, ROWS))
    for field in ("attentions", "cross_attentions", "hidden_states", "decoder_hidden_states", "encoder_hidden_states"):
        assert getattr(out, field, None) is None, field


# -- hidden states --------------------------------------------------------------------------------------------------
def test_hidden_states_one_per_layer_plus_the_input(models):
    prior, sdpa, _ = models
    base_outputs = []
    hook = sdpa.model.register_forward_hook(lambda module, args, output: base_outputs.append(output))
    try:
        with torch.no_grad():
            out = sdpa(**prior.forward_inputs(sdpa, ROWS), output_hidden_states=True)
    finally:
        hook.remove()
    (base,) = base_outputs
    for field, count in hidden_state_counts(sdpa).items():
        states = getattr(out, field)
        assert states is not None and len(states) == count, f"{field}: {None if states is None else len(states)}"
        assert all(s.shape[0] == len(ROWS) and s.ndim == 3 for s in states)
        assert all(not torch.equal(a, b) for a, b in zip(states, states[1:])), f"{field}: a layer changed nothing"
        assert getattr(base, field) is states, f"{field}: not the base model's"
    if not hasattr(sdpa.model, "decoder_layers"):  # MAR's last hidden state is the decoder's, buffer included
        key = "decoder_hidden_states" if isinstance(sdpa, PartiForConditionalGeneration) else "hidden_states"
        assert getattr(base, key)[-1] is base.last_hidden_state, "the last hidden state is `last_hidden_state`"


# -- tuples ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, {"output_hidden_states": True, "output_attentions": True}])
def test_tuple_output_is_the_dict_output_to_tuple(models, extra):
    prior, _, eager = models
    with torch.no_grad():
        as_dict = eager(**prior.forward_inputs(eager, ROWS), **extra, return_dict=True)
        as_tuple = eager(**prior.forward_inputs(eager, ROWS), **extra, return_dict=False)
        base_dict = eager.model(**base_model_inputs(eager, prior.forward_inputs(eager, ROWS)), **extra)
        base_tuple = eager.model(
            **base_model_inputs(eager, prior.forward_inputs(eager, ROWS)), **extra, return_dict=False
        )
    assert isinstance(as_tuple, tuple) and isinstance(base_tuple, tuple)
    assert_same_outputs(as_tuple, as_dict.to_tuple())
    assert_same_outputs(base_tuple, base_dict.to_tuple())


# -- gradient checkpointing -----------------------------------------------------------------------------------------
def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(name):
    prior = PRIORS[name]()

    def gradients(model) -> tuple[dict[str, torch.Tensor], int]:
        blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
        runs = []  # the MLP runs inside a block's forward: once more per block when it is recomputed
        hooks = [block.mlp.register_forward_pre_hook(lambda *_: runs.append(1)) for block in blocks]
        model.train()
        torch.manual_seed(0)
        try:
            model(**prior.forward_inputs(model, ROWS)).loss.backward()
        finally:
            for hook in hooks:
                hook.remove()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        return grads, len(runs)

    plain, plain_runs = gradients(prior.build_model())
    model = prior.build_model()
    model.activation_checkpointing_enable()  # `gradient_checkpointing_enable()`, its deprecated alias, does the same
    assert model.is_activation_checkpointing
    checkpointed, checkpointed_runs = gradients(model)
    assert plain and checkpointed.keys() == plain.keys()
    assert checkpointed_runs > plain_runs, "no block was recomputed: checkpointing was not used"
    for key in plain:
        assert_same(checkpointed[key], plain[key], atol=1e-6, msg=key)


def test_dalle_weights_in_a_batch_equal_single_rows():
    """The eager path broadcasts DALL-E's one (1, 1, T, K) mask over the batch like SDPA."""
    prior = prior_with("dalle", "eager")
    model = prior.build_model()
    assert isinstance(model, DalleForConditionalGeneration)
    with torch.no_grad():
        batch = model(**prior.forward_inputs(model, ROWS), output_attentions=True).attentions
        single = model(**prior.forward_inputs(model, ROWS[1:]), output_attentions=True).attentions
    for b, s in zip(batch, single):
        assert_same(b[1:], s, atol=1e-6)
