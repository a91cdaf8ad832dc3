import math

import pytest
import torch

from hf_t2i.generation import (
    AutoregressiveDecoder,
    ClassifierFreeGuidance,
    SamplingConfig,
    TokenSampler,
    decode_autoregressive,
    sample_tokens,
)
from hf_t2i.generation.guidance import step_progress
from hf_t2i.generation.masked import MaskedDecoder, RandomOrder, RasterOrder, cosine_training_mask, masked_after


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
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"do_sample": "yes"}, "do_sample"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_scale": math.inf}, "guidance_scale"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"guidance_schedule": "cosine"}, "guidance_schedule"),
    ],
)
def test_bad_sampling_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**kwargs)


def test_unset_settings_take_the_models_generation_config():
    from transformers import GenerationConfig

    from hf_t2i.generation.stock_generate import ImageGenerationMixin

    class Prior(ImageGenerationMixin):  # what the raster priors add: their `generation_config`
        def __init__(self, generation_config):
            self.generation_config = generation_config

    chosen = Prior(GenerationConfig(temperature=0.8, top_k=0, top_p=1.0, do_sample=True))  # a shipped folder's kind
    assert chosen.image_sampling_config() == SamplingConfig(temperature=0.8)  # top_k 0 / top_p 1.0: no filter
    # what the call passes wins; guidance is never read from the generation config
    assert chosen.image_sampling_config(temperature=1.2, top_k=5, guidance_scale=2.0) == SamplingConfig(
        temperature=1.2, top_k=5, guidance_scale=2.0
    )
    greedy = Prior(GenerationConfig(do_sample=False, top_k=7, min_p=0.1))
    assert greedy.image_sampling_config() == SamplingConfig(do_sample=False, top_k=7, min_p=0.1)
    # nothing set (transformers 5's bare GenerationConfig is all None): SamplingConfig's defaults
    assert Prior(GenerationConfig()).image_sampling_config() == SamplingConfig()
    with pytest.raises(ValueError, match="temperature"):  # a bad value in the file is named like a bad argument
        Prior(GenerationConfig(temperature=0.0, do_sample=True)).image_sampling_config()


def test_processors_filter_like_generate():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    out = SamplingConfig(top_k=2).logits_processor()(None, logits.clone())
    assert torch.isinf(out[0, [0, 3]]).all() and torch.isfinite(out[0, [1, 2]]).all()
    assert len(SamplingConfig().logits_processor()) == 0
    greedy = TokenSampler(SamplingConfig(do_sample=False, top_k=2))
    assert greedy(logits).tolist() == [1]


def test_sample_with_log_probs_reports_the_warped_distribution():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]]).repeat(2000, 1)
    sampler = TokenSampler(SamplingConfig(top_k=2, temperature=0.5), torch.Generator().manual_seed(0))
    ids, log_probs = sampler.sample_with_log_probs(logits)
    warped = torch.log_softmax(torch.tensor([-math.inf, 6.0, 4.0, -math.inf]), dim=0)
    assert set(ids.tolist()) == {1, 2}
    assert torch.allclose(log_probs, warped[ids])
    assert (ids == 1).float().mean().item() == pytest.approx(warped[1].exp().item(), abs=0.03)
    greedy_ids, greedy_log_probs = TokenSampler(SamplingConfig(do_sample=False)).sample_with_log_probs(logits[:1])
    assert greedy_ids.tolist() == [1] and torch.allclose(greedy_log_probs, torch.log_softmax(logits[0], 0)[1:2])


def test_training_mask_follows_the_cosine_schedule():
    n = 16
    mask = cosine_training_mask(4000, n, torch.Generator().manual_seed(0), "cpu")
    assert mask.sum(1).min() >= 1
    # E[count] = sum_k P(count >= k), count = ceil(N cos(pi/2 r)) >= k  <=>  r < 2/pi * acos((k - 1) / N)
    expected = sum(2 / math.pi * math.acos((k - 1) / n) for k in range(1, n + 1)) / n
    assert mask.float().mean().item() == pytest.approx(expected, abs=0.01)
    assert torch.equal(mask, cosine_training_mask(4000, n, torch.Generator().manual_seed(0), "cpu"))
    assert mask.float().mean(0).std() < 0.03  # every position equally likely
    assert not torch.equal(mask[0], mask[1])


def test_guidance_combines_doubled_batch_and_follows_its_schedule():
    cond, uncond = torch.randn(2, 5), torch.randn(2, 5)
    both = torch.cat([cond, uncond])
    assert torch.allclose(ClassifierFreeGuidance(1.0).combine(both), cond, atol=1e-6)
    assert torch.allclose(ClassifierFreeGuidance(3.0).combine(both), uncond + 3 * (cond - uncond))
    linear = ClassifierFreeGuidance(5.0, "linear")
    assert linear.scale_at(0.0) == 1.0 and linear.scale_at(1.0) == 5.0 and linear.scale_at(0.5) == 3.0
    assert ClassifierFreeGuidance(5.0).scale_at(0.0) == 5.0
    # a limited interval (closed at both ends): scale 1 outside it, the schedule's scale inside
    late = ClassifierFreeGuidance(5.0, interval=(0.2, 1.0))
    assert [late.scale_at(p) for p in (0.0, 0.19, 0.2, 0.5, 1.0)] == [1.0, 1.0, 5.0, 5.0, 5.0]
    assert ClassifierFreeGuidance(5.0, "linear", interval=(0.0, 0.5)).scale_at(0.5) == 3.0
    assert ClassifierFreeGuidance(5.0, "linear", interval=(0.0, 0.5)).scale_at(0.75) == 1.0
    assert ClassifierFreeGuidance(5.0, interval=[0, 1]).interval == (0.0, 1.0)
    # one step's guided prediction: outside the interval the conditional rows alone run (cond == uncond + 1 * (...))
    seen, x = [], torch.tensor([[1.0], [2.0]])

    def predict(rows):  # row r of the batch predicts (r + 1) * input: the two branches differ
        seen.append(rows.shape[0])
        return rows * (1 + torch.arange(rows.shape[0]))[:, None]

    late = ClassifierFreeGuidance(3.0, interval=(0.5, 1.0))
    assert torch.equal(late.guided_prediction(predict, x, 0.2), torch.tensor([[1.0], [4.0]]))
    assert torch.equal(late.guided_prediction(predict, x, 1.0), torch.tensor([[-3.0], [-4.0]]))  # 3 + 3 * (1 - 3), ...
    assert seen == [2, 4]
    # the progress every step loop (raster tokens, diffusion steps) feeds `scale_at`: a single step counts as the last
    assert [step_progress(i, 5) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0] and step_progress(0, 1) == 1.0
    for bad in [(0.5, 0.5), (1, 0), (0, 2), (0, 1, 1), None, "01", (True, 1)]:
        with pytest.raises(ValueError, match=r"`guidance_interval` must be a pair"):
            ClassifierFreeGuidance(5.0, interval=bad)
    # learned variance: the first `channels` are guided, the rest are the conditional rows'
    mixed = ClassifierFreeGuidance(2.0).combine(torch.cat([cond, uncond]), channels=3)
    assert torch.allclose(mixed[:, :3], uncond[:, :3] + 2 * (cond[:, :3] - uncond[:, :3]))
    assert torch.equal(mixed[:, 3:], cond[:, 3:])
    # batch doubling only when guidance is on; the negative rows broadcast to the batch
    x = torch.arange(3)[:, None]
    assert ClassifierFreeGuidance(1.0).double(x).shape == (3, 1) and ClassifierFreeGuidance(2.0).double(x).shape == (
        6,
        1,
    )
    doubled = ClassifierFreeGuidance.conditioned(x, torch.tensor([[9]]))
    assert doubled.flatten().tolist() == [0, 1, 2, 9, 9, 9]


def test_raster_loop_feeds_tokens_back_and_doubles_batch_for_guidance():
    seen = []

    def step(tokens):
        seen.append(None if tokens is None else tokens.clone())
        logits = torch.full((4, 6), -10.0)
        logits[:, len(seen)] = 10.0  # token i+1 at step i
        return logits

    decoder = AutoregressiveDecoder(2, 3, SamplingConfig(do_sample=False, guidance_scale=2.0))
    out = decode_autoregressive(step, decoder)
    assert out.tolist() == [[1, 2, 3], [1, 2, 3]]
    assert seen[0] is None and seen[1].shape == (4, 1) and seen[2].flatten().tolist() == [2, 2, 2, 2]


def test_raster_linear_guidance_rises_from_one_to_the_scale():
    decoder = AutoregressiveDecoder(1, 5, SamplingConfig(guidance_scale=3.0, guidance_schedule="linear"))
    scales = [decoder.guidance.scale_at(decoder.progress(i)) for i in range(5)]
    assert scales == [1.0, 1.5, 2.0, 2.5, 3.0]


@pytest.mark.parametrize("steps", [1, 3, 7, 16])
def test_random_order_reveals_every_position_once_on_the_cosine_schedule(steps):
    n = 16
    decoder = MaskedDecoder(2, n, steps, RandomOrder(), generator=torch.Generator().manual_seed(0))
    counts = []
    for i in range(steps):
        positions, _ = decoder.plan(i)
        counts.append(positions.shape[1])
        if positions.shape[1]:
            assert not decoder.known.gather(1, positions).any()  # never revealed twice
            decoder.reveal(positions, positions + 100)
    assert decoder.known.all() and sum(counts) == n
    assert torch.equal(decoder.tokens, torch.arange(n).expand(2, n) + 100)  # each value landed at its position
    assert all(c >= 1 for c in counts)
    # rows reveal different positions, and the same seed the same ones
    again = MaskedDecoder(2, n, steps, RandomOrder(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.reveal_rule.orders, decoder.reveal_rule.orders)
    assert not torch.equal(decoder.reveal_rule.orders[0], decoder.reveal_rule.orders[1])


def test_random_order_linear_guidance_follows_the_known_share():
    n, steps = 16, 4
    guidance = ClassifierFreeGuidance(3.0, "linear")
    decoder = MaskedDecoder(1, n, steps, RandomOrder(), guidance, torch.Generator().manual_seed(0))
    for i in range(steps):
        kept = masked_after(i, steps, n, decoder.revealed)
        positions, scale = decoder.plan(i)
        assert scale == pytest.approx(1 + 2 * (n - kept) / n)
        decoder.reveal(positions, positions)


def test_raster_order_reveals_left_to_right():
    decoder = MaskedDecoder(3, 4, 4, RasterOrder(), token_shape=(2,), dtype=torch.float32)
    for i in range(4):
        positions, _ = decoder.plan(i)
        assert positions.tolist() == [[i]] * 3
        decoder.reveal(positions, torch.full((3, 1, 2), float(i)))
    assert decoder.tokens[0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_every_prior_implements_the_generation_protocol():
    from hf_t2i import (
        DalleForConditionalGeneration,
        FluidForConditionalGeneration,
        MuseForConditionalGeneration,
        PartiForConditionalGeneration,
        TransfusionForConditionalGeneration,
    )
    from hf_t2i.generation import ImageGenerator

    for cls in (
        DalleForConditionalGeneration,
        PartiForConditionalGeneration,
        FluidForConditionalGeneration,
        TransfusionForConditionalGeneration,
        MuseForConditionalGeneration,
    ):
        for name in ("prepare_image_generation", "image_generation_step", "decode_image_tokens"):
            assert callable(getattr(cls, name, None)), f"{cls.__name__} lacks {name}"
        assert issubclass(cls, ImageGenerator)


@pytest.mark.parametrize("choice_temperature", [0.0, 4.5])
def test_confidence_order_keeps_the_most_confident_and_reveals_every_position_once(choice_temperature):
    from hf_t2i.generation.masked import ConfidenceOrder

    n, steps = 16, 5
    rule = ConfidenceOrder(choice_temperature)
    decoder = MaskedDecoder(2, n, steps, rule, generator=torch.Generator().manual_seed(0))
    # position p always gets confidence p: without noise the highest positions are revealed first
    first = None
    for i in range(steps):
        positions, _ = decoder.plan(i)
        if not positions.shape[1]:
            continue
        assert positions.shape[1] == n - decoder.revealed  # every unknown position is a candidate
        assert not decoder.known.gather(1, positions).any()
        before = decoder.known.clone()
        decoder.reveal(positions, positions + 100, confidence=positions.float())
        newly = (decoder.known & ~before).sum(1)
        assert (newly == decoder.count).all()
        if first is None:
            first = (decoder.known & ~before)[0].nonzero().flatten().tolist()
    assert decoder.known.all()
    assert torch.equal(decoder.tokens, torch.arange(n).expand(2, n) + 100)
    if choice_temperature == 0:
        assert first == list(range(n - len(first), n))


def test_confidence_order_needs_confidence_and_a_valid_temperature():
    from hf_t2i.generation.masked import ConfidenceOrder

    decoder = MaskedDecoder(1, 4, 2, ConfidenceOrder())
    positions, _ = decoder.plan(0)
    with pytest.raises(ValueError, match="confidence"):
        decoder.reveal(positions, positions)
    with pytest.raises(ValueError, match="choice_temperature"):
        ConfidenceOrder(-1.0)
