"""Options of the shared `TransformerBlock` / `FeedForward` that converted checkpoints need: off by default (same
modules and outputs as before), and each computes what it documents."""

import torch

from hf_t2i.layers import TransformerBlock
from hf_t2i.layers.mlp import FeedForward


def _block(**kwargs):
    torch.manual_seed(0)
    return TransformerBlock(16, 2, 32, layer_idx=0, cross_attention=True, **kwargs).eval()


def test_defaults_add_no_modules():
    names = set(_block().state_dict())
    assert not any("post" in n or "scale" in n or "inner_norm" in n for n in names)


def test_sandwich_norm_and_layer_scale_match_a_manual_computation():
    block = _block(sandwich_norm=True, layer_scale_init=0.5, glu=True, mlp_inner_norm=True, bias=False)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x, enc = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        h = x + block.scale1 * block.norm1_post(block.self_attn(block.norm1(x))[0])
        h = h + block.scale_cross * block.norm_cross_post(
            block.cross_attn(block.norm_cross(h), encoder_hidden_states=enc)[0]
        )
        z = block.norm2(h)
        gate, up = block.mlp.fc1(z).chunk(2, dim=-1)
        mlp = block.mlp.fc2(block.mlp.inner_norm(torch.nn.functional.gelu(gate) * up))
        expected = h + block.scale2 * block.norm2_post(mlp)
        torch.testing.assert_close(block(x, encoder_hidden_states=enc), expected)


def test_feed_forward_inner_norm_is_optional():
    assert FeedForward(8, 16).inner_norm is None
    assert FeedForward(8, 16, inner_norm=True).inner_norm.normalized_shape == (16,)
