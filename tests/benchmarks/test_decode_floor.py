"""benchmarks/bench_decode_floor.py's bare decode step is the model's arithmetic: on a tiny random DALL-E prior, fed
the same codes after the same prefill, its logits (and those of its static-shape form) equal
`image_generation_step`'s at every step, with and without guidance rows."""

from __future__ import annotations

import pytest
import torch

from hf_t2i import DalleForConditionalGeneration

from ..conftest import tiny_dalle_config


@pytest.fixture
def floor(monkeypatch):
    from .test_dalle_pytorch_cache import BENCHMARKS

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_decode_floor

    return bench_decode_floor


@pytest.mark.parametrize("batch", [1, 3])
def test_bare_step_equals_the_model_step(floor, batch):
    torch.manual_seed(0)
    # the paper's layer pattern (row, column, row, conv): every sparse mask kind of the benchmark config
    model = DalleForConditionalGeneration(tiny_dalle_config(40)).eval()
    bare = floor.BareDecoder(model)
    generator = torch.Generator().manual_seed(1)
    text = torch.randint(3, 40, (batch, model.config.text_seq_len), generator=generator)
    negative = torch.zeros(1, model.config.text_seq_len, dtype=torch.long)
    codes = torch.randint(
        0, model.config.image_vocab_size, (2 * batch, model.config.num_image_tokens), generator=generator
    )
    with torch.no_grad():
        state, _, _ = floor.prefill(model, text, negative)
        _, caches, _ = floor.prefill(model, text, negative)
        _, static_caches, _ = floor.prefill(model, text, negative)
        for i in range(codes.shape[1] - 1):
            position = model.config.text_seq_len + i
            ours = model.image_generation_step(state, codes[:, i : i + 1])
            torch.testing.assert_close(bare.step(caches, codes[:, i : i + 1], position), ours, rtol=0, atol=1e-6)
            static = bare.static_step(static_caches, codes[:, i : i + 1], torch.tensor([position]))
            torch.testing.assert_close(static, ours, rtol=1e-5, atol=1e-5)
        assert torch.equal(
            floor.decode_bare(model, bare, text, negative, codes), floor.decode_ours(model, text, negative, codes)
        )


def test_bare_decoder_refuses_configs_it_does_not_mirror(floor):
    model = DalleForConditionalGeneration(tiny_dalle_config(40, position_embedding_type="rotary")).eval()
    with pytest.raises(ValueError, match="learned positions"):
        floor.BareDecoder(model)
