"""`Attention` with a preallocated cache attends only to the slots its mask covers."""

import torch
from transformers import PreTrainedConfig
from transformers.cache_utils import DynamicCache, StaticCache

from hf_t2i.layers import Attention, additive_mask, slice_mask


def test_a_static_cache_attends_only_to_the_slots_its_mask_covers():
    torch.manual_seed(0)
    config = PreTrainedConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1)
    config._attn_implementation = "eager"  # returns the weights, whose width is the keys attended to
    attention = Attention(16, 2, layer_idx=0, config=config).eval()
    causal = additive_mask(torch.ones(8, 8, dtype=torch.bool).tril(), torch.float32)
    inputs = torch.randn(2, 5, 16)
    static, dynamic = StaticCache(config=config, max_cache_len=8), DynamicCache(config=config)
    with torch.no_grad():
        for start in range(5):
            step = inputs[:, start : start + 1]
            mask = slice_mask(causal, start, 1)  # (1, 1, 1, start + 1): the filled slots only
            out, weights = attention(step, mask, static, output_attentions=True)
            expected, _ = attention(step, mask, dynamic, output_attentions=True)
            assert weights.shape == (2, 2, 1, start + 1)  # not the 8 preallocated slots
            torch.testing.assert_close(out, expected)
        full, _ = attention(inputs, causal[None, None, :5, :5])
    torch.testing.assert_close(out, full[:, -1:])  # the last decode step equals the uncached pass
