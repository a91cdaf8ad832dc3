"""`past_key_values`, transformers' name for the cache before 5.24, still reaches the cache with a deprecation warning
(as in transformers' own models until 5.40), for every model whose `forward` takes a cache."""

import pytest
import torch
from transformers import DynamicCache, EncoderDecoderCache

from . import test_dalle, test_parti  # modules, not classes: importing the classes would collect their tests here


def empty_cache(config, encoder_decoder: bool):
    cache = DynamicCache(config=config)
    return EncoderDecoderCache(cache, DynamicCache(config=config)) if encoder_decoder else cache


@pytest.mark.parametrize(
    "prior_test, encoder_decoder", [(test_dalle.TestDallePrior, False), (test_parti.TestPartiPrior, True)]
)
@pytest.mark.parametrize("head", [True, False])
def test_past_key_values_is_the_cache_under_its_old_name(prior_test, encoder_decoder, head):
    tester = prior_test()
    model = tester.build_model()
    inputs = {k: v for k, v in tester.forward_inputs(model, [0, 1]).items() if k not in ("labels", "use_cache")}
    if encoder_decoder:  # the base model needs the decoder's inputs (the head builds them from labels)
        inputs["decoder_input_ids"] = model.decoder_inputs(tester.forward_inputs(model, [0, 1])["labels"])
    model = model if head else model.model
    with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
        old = model(**inputs, past_key_values=empty_cache(model.config, encoder_decoder), use_cache=True)
    new = model(**inputs, cache=empty_cache(model.config, encoder_decoder), use_cache=True)
    first = "logits" if head else "last_hidden_state"
    torch.testing.assert_close(old[first], new[first], atol=0, rtol=0)
    assert old.cache.get_seq_length() == new.cache.get_seq_length() > 0
