import pytest
import torch

from hf_t2i.generation import (
    apply_guidance,
    autoregressive_sample,
    build_logits_processor,
    guidance_scale_at,
    sample_tokens,
    validate_sampling_args,
)


def test_gumbel_sampling_follows_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0, float("-inf")])
    draws = sample_tokens(logits.expand(20000, 4), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / 20000
    assert freq[3] == 0
    assert torch.allclose(freq[:3], torch.softmax(logits[:3], 0), atol=0.015)


def test_sampling_is_seeded_and_greedy_is_argmax():
    logits = torch.randn(8, 50)
    a = sample_tokens(logits, torch.Generator().manual_seed(3))
    b = sample_tokens(logits, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(sample_tokens(logits, do_sample=False), logits.argmax(-1))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_schedule": "cosine"}, "guidance_schedule"),
    ],
)
def test_bad_sampling_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        validate_sampling_args(**kwargs)


def test_processors_filter_like_generate():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    out = build_logits_processor(top_k=2)(None, logits.clone())
    assert torch.isinf(out[0, [0, 3]]).all() and torch.isfinite(out[0, [1, 2]]).all()
    assert len(build_logits_processor()) == 0


def test_guidance_combines_doubled_batch():
    cond, uncond = torch.randn(2, 5), torch.randn(2, 5)
    both = torch.cat([cond, uncond])
    assert torch.allclose(apply_guidance(both, 1.0), cond, atol=1e-6)
    assert torch.allclose(apply_guidance(both, 3.0), uncond + 3 * (cond - uncond))
    assert guidance_scale_at(5.0, 0, 10, "linear") == 1.0 and guidance_scale_at(5.0, 9, 10, "linear") == 5.0


def test_loop_feeds_tokens_back_and_doubles_batch_for_guidance():
    seen = []

    def step(tokens):
        seen.append(None if tokens is None else tokens.clone())
        logits = torch.full((4, 6), -10.0)
        logits[:, len(seen)] = 10.0  # token i+1 at step i
        return logits

    out = autoregressive_sample(step, 2, 3, guidance_scale=2.0, do_sample=False)
    assert out.tolist() == [[1, 2, 3], [1, 2, 3]]
    assert seen[0] is None and seen[1].shape == (4, 1) and seen[2].flatten().tolist() == [2, 2, 2, 2]
