import pytest
import torch
from transformers import DynamicCache, StaticCache

from hf_t2i import DalleConfig, DalleForConditionalGeneration

from ..conftest import tiny_dalle_config


def sequence(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    config = model.config
    text = torch.randint(3, config.text_vocab_size, (batch, config.text_seq_len), generator=g)
    text[:, -4:] = config.text_pad_token_id
    image = torch.randint(0, config.image_vocab_size, (batch, config.num_image_tokens), generator=g)
    return model.build_sequence(text, image)


def incremental_logits(model, ids, cache, prefill=10):
    out = model(ids[:, :prefill], cache=cache, use_cache=True)
    steps = [out.logits]
    for t in range(prefill, ids.shape[1]):
        steps.append(model(ids[:, t : t + 1], cache=cache, use_cache=True).logits)
    return torch.cat(steps, 1)


@pytest.mark.parametrize("cache_class", ["dynamic", "static"])
def test_cached_equals_uncached(dalle_model, cache_class):
    ids = sequence(dalle_model)
    full = dalle_model(ids, use_cache=False).logits
    config = dalle_model.config
    cache = (
        DynamicCache(config=config)
        if cache_class == "dynamic"
        else StaticCache(config=config, max_cache_len=ids.shape[1] + 3)
    )
    inc = incremental_logits(dalle_model, ids, cache)
    assert torch.allclose(full, inc, atol=1e-5)


def test_batch_equals_singles(dalle_model):
    ids = sequence(dalle_model, batch=3)
    batched = dalle_model(ids, use_cache=False).logits
    for i in range(3):
        single = dalle_model(ids[i : i + 1], use_cache=False).logits
        assert torch.allclose(batched[i : i + 1], single, atol=1e-5)


def test_logits_are_restricted_to_the_next_modality(dalle_model):
    logits = dalle_model(sequence(dalle_model), use_cache=False).logits
    config = dalle_model.config
    text_vocab, text_len = config.text_vocab_size, config.text_seq_len
    lowest = torch.finfo(logits.dtype).min
    assert (logits[:, : text_len - 1, text_vocab:] == lowest).all()
    assert (logits[:, : text_len - 1, :text_vocab] > -1e4).all()
    assert (logits[:, text_len - 1 :, :text_vocab] == lowest).all()
    assert (logits[:, text_len - 1 :, text_vocab:] > -1e4).all()


def test_column_attention_ignores_other_columns(tokenizer):
    torch.manual_seed(0)
    config = tiny_dalle_config(len(tokenizer), num_hidden_layers=1, attention_types=["column"])
    model = DalleForConditionalGeneration(config).eval()
    ids = sequence(model, batch=1)
    text_len, grid = config.text_seq_len, config.image_grid_size
    target = text_len + 2 * grid + 3  # image row 2, column 3
    other = ids.clone()
    other[0, text_len + grid + 1] = (
        config.text_vocab_size + (other[0, text_len + grid + 1] - config.text_vocab_size + 1) % 32
    )  # row 1, column 1
    same = ids.clone()
    same[0, text_len + grid + 3] = (
        config.text_vocab_size + (same[0, text_len + grid + 3] - config.text_vocab_size + 1) % 32
    )  # row 1, column 3
    base = model(ids, use_cache=False).logits[0, target]
    assert torch.allclose(model(other, use_cache=False).logits[0, target], base)
    assert not torch.allclose(model(same, use_cache=False).logits[0, target], base)


def test_pad_positions_use_their_own_learned_embeddings(dalle_model):
    inner = dalle_model.model
    ids = torch.full((1, 3), dalle_model.config.text_pad_token_id)
    emb = inner.embed(ids, 0)
    expected = inner.text_pad_embeddings.weight[:3] + inner.text_position_embeddings.weight[:3]
    assert torch.allclose(emb[0], expected)


def test_loss_weights_text_and_image(dalle_model):
    ids = sequence(dalle_model)
    out = dalle_model(ids, labels=ids, use_cache=False)
    expected = 0.125 * out.text_loss + 0.875 * out.image_loss
    assert torch.allclose(out.loss, expected)
    assert out.image_loss > 0 and out.text_loss > 0


def test_generate_greedy_equals_package_loop(dalle_model):
    ids = sequence(dalle_model)
    text = ids[:, : dalle_model.config.text_seq_len]
    generated = dalle_model.generate(text, do_sample=False, max_new_tokens=dalle_model.config.num_image_tokens)
    ours = dalle_model.sample_image_tokens(text, do_sample=False)
    assert torch.equal(generated[:, text.shape[1] :] - dalle_model.config.text_vocab_size, ours)


def test_generate_greedy_with_guidance_equals_package_loop(dalle_model):
    ids = sequence(dalle_model)
    text = ids[:, : dalle_model.config.text_seq_len]
    empty = torch.zeros_like(text)  # generate() needs one negative row per prompt
    generated = dalle_model.generate(
        text,
        do_sample=False,
        max_new_tokens=dalle_model.config.num_image_tokens,
        guidance_scale=3.0,
        negative_prompt_ids=empty,
    )
    ours = dalle_model.sample_image_tokens(text, negative_input_ids=empty, guidance_scale=3.0, do_sample=False)
    assert torch.equal(generated[:, text.shape[1] :] - dalle_model.config.text_vocab_size, ours)


def test_sampling_is_seeded(dalle_model):
    text = sequence(dalle_model)[:, : dalle_model.config.text_seq_len]
    a = dalle_model.sample_image_tokens(text, top_k=8, generator=torch.Generator().manual_seed(0))
    b = dalle_model.sample_image_tokens(text, top_k=8, generator=torch.Generator().manual_seed(0))
    c = dalle_model.sample_image_tokens(text, top_k=8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < dalle_model.config.image_vocab_size


def test_save_load_round_trip(dalle_model, tmp_path):
    dalle_model.save_pretrained(tmp_path)
    loaded = DalleForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids = sequence(dalle_model)
    assert torch.equal(dalle_model(ids, use_cache=False).logits, loaded(ids, use_cache=False).logits)
    codes = dalle_model.image_codes_from_generated(ids)
    assert torch.equal(dalle_model.decode_image_tokens(codes), loaded.decode_image_tokens(codes))
    with pytest.raises(ValueError, match="image_codes_from_generated"):
        dalle_model.decode_image_tokens(ids[:, dalle_model.config.text_seq_len :])
    assert loaded.config.vq_config.vocab_size == 32


def test_bad_inputs(dalle_model):
    with pytest.raises(ValueError, match="input_ids"):
        dalle_model.sample_image_tokens(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="negative_input_ids"):
        dalle_model.sample_image_tokens(torch.zeros(1, 12, dtype=torch.long), guidance_scale=2.0)
    with pytest.raises(ValueError, match="temperature"):
        dalle_model.sample_image_tokens(torch.zeros(1, 12, dtype=torch.long), temperature=-1.0)
    with pytest.raises(ValueError, match="exceed the context"):
        dalle_model(torch.zeros(1, 12 + 64 + 1, dtype=torch.long), use_cache=False)
    with pytest.raises(ValueError, match="text ids"):
        dalle_model(torch.full((1, 12), 10_000), use_cache=False)


def test_config_validation():
    with pytest.raises(ValueError, match="attention_types"):
        DalleConfig(num_hidden_layers=2, attention_types=["row"])
    with pytest.raises(ValueError, match="attention_types"):
        DalleConfig(num_hidden_layers=1, attention_types=["diagonal"])
    with pytest.raises(ValueError, match="num_attention_heads"):
        DalleConfig(hidden_size=30, num_attention_heads=4)
    assert DalleConfig(num_hidden_layers=8).attention_types == [
        "row",
        "column",
        "row",
        "row",
        "row",
        "column",
        "row",
        "conv",
    ]
