import pytest
import torch
from transformers import DynamicCache, StaticCache

from hf_t2i import DalleConfig, DalleDVAEConfig, DalleForConditionalGeneration, DalleModel

from ..conftest import tiny_dalle_config
from .prior_tester import PriorTesterMixin, seeded


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


def test_decode_rejects_generate_output(dalle_model):
    ids = sequence(dalle_model)
    with pytest.raises(ValueError, match="image_codes_from_generated"):
        dalle_model.decode_image_tokens(ids[:, dalle_model.config.text_seq_len :])  # still offset by the text vocab
    codes = dalle_model.image_codes_from_generated(ids)
    assert torch.equal(codes + dalle_model.config.text_vocab_size, ids[:, dalle_model.config.text_seq_len :])


class TestDallePrior(PriorTesterMixin):
    """The shared prior behaviour (tests/models/prior_tester.py) on a 2-layer DALL-E with a 4x4 grid."""

    model_class = DalleForConditionalGeneration
    base_model_class = DalleModel
    sampling_kwargs = {"top_k": 8}
    image_size = 16

    def build_model(self, **config_overrides):
        vq = DalleDVAEConfig(
            image_size=16, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2, 2], num_blocks_per_group=1
        )  # 4x4 grid
        torch.manual_seed(0)
        config = tiny_dalle_config(100, vq_config=vq, num_hidden_layers=2, **config_overrides)  # row, conv
        return DalleForConditionalGeneration(config).eval()

    @staticmethod
    def text(config, rows):
        """(B, L) captions: random ids, then 2 to 4 pads."""
        texts = []
        for row in rows:
            text = torch.randint(3, config.text_vocab_size, (1, config.text_seq_len), generator=seeded(100 + row))
            text[:, config.text_seq_len - 2 - row % 3 :] = config.text_pad_token_id
            texts.append(text)
        return torch.cat(texts)

    def forward_inputs(self, model, rows):
        config = model.config
        codes = [
            torch.randint(0, config.image_vocab_size, (1, config.num_image_tokens), generator=seeded(r)) for r in rows
        ]
        ids = model.build_sequence(self.text(config, rows), torch.cat(codes))
        return {"input_ids": ids, "labels": ids, "use_cache": False}

    def generation_inputs(self, model, rows):
        return {"input_ids": self.text(model.config, rows)}

    def negative_inputs(self, model):
        return {"negative_input_ids": torch.full((1, model.config.text_seq_len), model.config.text_pad_token_id)}

    def sample_shape(self, model, batch):
        return (batch, model.config.num_image_tokens)

    def deterministic_kwargs(self, model, rows):
        return {"do_sample": False}

    def first_prediction(self, model, state, generator):
        return model.image_generation_step(state, None)  # (B', image_vocab) logits of the first image code

    def cached_and_uncached(self, model):
        for variant in (model, self.build_model(attention_types=["column", "full"])):
            config, types = variant.config, "+".join(variant.config.attention_types)
            ids = self.forward_inputs(variant, [0, 1])["input_ids"]
            full = variant(ids, use_cache=False).logits
            for name, cache in (
                ("DynamicCache", DynamicCache(config=config)),
                ("StaticCache", StaticCache(config=config, max_cache_len=ids.shape[1] + 3)),
            ):
                yield f"{types} forward, {name}", incremental_logits(variant, ids, cache), full
            # the generation protocol: the prefix, then one image code per step, through the preallocated cache
            text_len, offset = config.text_seq_len, config.text_vocab_size
            codes = ids[:, text_len:] - offset
            state = variant.prepare_image_generation(ids[:, :text_len])
            steps = [variant.image_generation_step(state, None)]
            steps += [variant.image_generation_step(state, codes[:, i - 1 : i]) for i in range(1, codes.shape[1])]
            uncached = full[:, text_len - 1 : -1, offset:]  # the image-code logits at every image position
            yield f"{types} image_generation_step", torch.stack(steps, 1), uncached

    def bad_sampling_inputs(self, model):
        short = torch.zeros(1, 5, dtype=torch.long)
        return [
            ({"input_ids": short}, "input_ids"),
            ({"negative_input_ids": short}, "negative_input_ids"),
            ({"temperature": -1.0}, "temperature"),
            ({"temperature": 0}, "temperature"),
            ({"top_k": 0}, "top_k"),
            ({"top_p": 0.0}, "top_p"),
            ({"guidance_schedule": "cosine"}, "guidance_schedule"),
        ]

    def bad_forward_inputs(self, model, inputs):
        config = model.config
        too_long = torch.zeros(1, config.max_position_embeddings + 1, dtype=torch.long)
        return [
            ({"input_ids": too_long, "labels": None}, "exceed the context"),
            ({"input_ids": torch.full((1, config.text_seq_len), 10_000), "labels": None}, "text ids"),
            ({"labels": inputs["labels"][:, :-1]}, "labels"),
        ]
