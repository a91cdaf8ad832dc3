import pytest
import torch
from transformers import AutoConfig, DynamicCache, EncoderDecoderCache

from hf_t2i.models.parti import PartiConfig, PartiForConditionalGeneration
from hf_t2i.models.vit_vqgan import ViTVQGANConfig


def tiny_parti_config(**kwargs) -> PartiConfig:
    vq = ViTVQGANConfig(
        image_size=32,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=64,
        code_dim=8,
    )
    defaults = dict(
        vq_config=vq,
        text_vocab_size=100,
        text_seq_len=10,
        encoder_layers=1,
        encoder_attention_heads=4,
        encoder_intermediate_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    defaults.update(kwargs)
    return PartiConfig(**defaults)


@pytest.fixture
def parti():
    torch.manual_seed(0)
    return PartiForConditionalGeneration(tiny_parti_config()).eval()


def batch(seed=0, size=2):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, 100, (size, 10), generator=g)
    mask = torch.ones_like(text)
    mask[:, 7:] = 0
    return text, mask, torch.randint(0, 64, (size, 64), generator=g)


@pytest.mark.parametrize("attention", ["full", "conv"])
def test_cached_equals_uncached(attention):
    torch.manual_seed(0)
    model = PartiForConditionalGeneration(tiny_parti_config(decoder_attention_types=[attention, "row"])).eval()
    text, mask, image = batch()
    full = model(input_ids=text, attention_mask=mask, labels=image, use_cache=False).logits
    decoder_inputs = model.decoder_inputs(image)
    encoder = model.get_encoder()(text, mask)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    steps = [
        model(
            attention_mask=mask,
            decoder_input_ids=decoder_inputs[:, :5],
            encoder_outputs=encoder,
            cache=cache,
        ).logits
    ]
    for t in range(5, 64):
        steps.append(
            model(
                attention_mask=mask,
                decoder_input_ids=decoder_inputs[:, t : t + 1],
                encoder_outputs=encoder,
                cache=cache,
            ).logits
        )
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_batch_equals_singles(parti):
    text, mask, image = batch(size=3)
    batched = parti(input_ids=text, attention_mask=mask, labels=image, use_cache=False).logits
    for i in range(3):
        single = parti(
            input_ids=text[i : i + 1], attention_mask=mask[i : i + 1], labels=image[i : i + 1], use_cache=False
        ).logits
        assert torch.allclose(batched[i : i + 1], single, atol=1e-5)


def test_padding_is_masked(parti):
    text, mask, image = batch(size=1)
    other = text.clone()
    other[:, 8] = 5  # a padded position
    a = parti(input_ids=text, attention_mask=mask, labels=image, use_cache=False).logits
    b = parti(input_ids=other, attention_mask=mask, labels=image, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_generate_greedy_equals_package_loop(parti):
    text, mask, _ = batch()
    generated = parti.generate(input_ids=text, attention_mask=mask, do_sample=False, max_new_tokens=64)
    assert (generated[:, 0] == parti.config.bos_token_id).all()
    assert torch.equal(generated[:, 1:], parti.sample_image_tokens(text, mask, do_sample=False))


def test_guidance_scale_one_equals_unguided_logits(parti):
    from hf_t2i.generation import ClassifierFreeGuidance

    text, mask, image = batch(size=1)
    negative, negative_mask = torch.zeros_like(text), torch.zeros_like(mask)
    negative_mask[:, 0] = 1
    unguided = parti(input_ids=text, attention_mask=mask, labels=image).logits
    doubled = parti(
        input_ids=torch.cat([text, negative]),
        attention_mask=torch.cat([mask, negative_mask]),
        labels=image.repeat(2, 1),
    ).logits  # the conditional and unconditional rows as one batch, as sampling runs them
    assert torch.allclose(ClassifierFreeGuidance(1.0).combine(doubled), unguided, atol=1e-5)
    assert not torch.allclose(ClassifierFreeGuidance(3.0).combine(doubled), unguided, atol=1e-3)
    # and the loop at scale 1.0 draws exactly the unguided tokens
    guided = parti.sample_image_tokens(
        text,
        mask,
        negative_input_ids=negative,
        negative_attention_mask=negative_mask,
        guidance_scale=1.0,
        do_sample=False,
    )
    assert torch.equal(parti.sample_image_tokens(text, mask, do_sample=False), guided)


def test_cross_attention_keys_values_computed_once_per_prompt(parti):
    calls = []
    hooks = [
        layer.cross_attn.kv_proj.register_forward_hook(lambda *a: calls.append(1))
        for layer in parti.model.decoder.layers
    ]
    text, mask, _ = batch()
    negative, negative_mask = torch.zeros_like(text[:1]), torch.ones_like(mask[:1])
    parti.sample_image_tokens(
        text, mask, negative_input_ids=negative, negative_attention_mask=negative_mask, guidance_scale=3.0
    )
    for hook in hooks:
        hook.remove()
    # one projection per decoder layer for the whole 64-token image (both guidance branches in one batch)
    assert len(calls) == parti.config.num_hidden_layers


def test_sampling_is_seeded(parti):
    text, mask, _ = batch()
    a = parti.sample_image_tokens(text, mask, top_k=8, generator=torch.Generator().manual_seed(0))
    b = parti.sample_image_tokens(text, mask, top_k=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_save_load_round_trip(parti, tmp_path):
    parti.save_pretrained(tmp_path)
    loaded = PartiForConditionalGeneration.from_pretrained(tmp_path).eval()
    text, mask, image = batch()
    assert torch.equal(
        parti(input_ids=text, attention_mask=mask, labels=image).logits,
        loaded(input_ids=text, attention_mask=mask, labels=image).logits,
    )


def test_pretrained_frozen_text_encoder(tmp_path):
    bert = AutoConfig.for_model(
        "bert",
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = PartiForConditionalGeneration(
        tiny_parti_config(text_encoder_config=bert.to_dict(), num_aligner_layers=1, text_vocab_size=50)
    )
    encoder = model.model.text_encoder
    assert not any(p.requires_grad for p in encoder.pretrained.parameters())
    assert all(p.requires_grad for p in encoder.aligner.parameters())
    model.train()
    assert not encoder.pretrained.training  # frozen encoder stays in eval mode
    text, mask, image = batch()
    text = text % 50
    model(input_ids=text, attention_mask=mask, labels=image).loss.backward()
    assert encoder.pretrained.embeddings.word_embeddings.weight.grad is None
    model.save_pretrained(tmp_path)
    loaded = PartiForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(
        loaded.model.text_encoder.pretrained.embeddings.word_embeddings.weight,
        encoder.pretrained.embeddings.word_embeddings.weight,
    )


def test_bad_inputs(parti):
    text, mask, image = batch()
    with pytest.raises(ValueError, match="negative_input_ids"):
        parti.sample_image_tokens(text, mask, guidance_scale=2.0)
    with pytest.raises(ValueError, match="top_p"):
        parti.sample_image_tokens(text, mask, top_p=0.0)
    with pytest.raises(ValueError, match="decoder_input_ids"):
        parti(input_ids=text, attention_mask=mask)
    with pytest.raises(ValueError, match="decoder_attention_types"):
        tiny_parti_config(decoder_attention_types=["full"])
    with pytest.raises(ValueError, match="exceed"):
        parti(input_ids=text, attention_mask=mask, decoder_input_ids=torch.zeros(2, 65, dtype=torch.long))
