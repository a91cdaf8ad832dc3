import pytest
import torch
from transformers import AutoConfig, DynamicCache, EncoderDecoderCache

from hf_t2i.models.parti import PartiConfig, PartiForConditionalGeneration, PartiModel
from hf_t2i.models.vit_vqgan import ViTVQGANConfig

from .prior_tester import PriorTesterMixin, seeded


def tiny_parti_config(image_size: int = 32, **kwargs) -> PartiConfig:
    """A ViT-VQGAN with 4x4 patches: an 8x8 grid at 32px (the pipeline tests), 4x4 at 16px (the model tests)."""
    vq = ViTVQGANConfig(
        image_size=image_size,
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
    return PartiForConditionalGeneration(tiny_parti_config(16)).eval()


def batch(seed=0, size=2):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, 100, (size, 10), generator=g)
    mask = torch.ones_like(text)
    mask[:, 7:] = 0
    return text, mask, torch.randint(0, 64, (size, 16), generator=g)


def test_padding_is_masked(parti):
    text, mask, image = batch(size=1)
    other = text.clone()
    other[:, 8] = 5  # a padded position
    a = parti(input_ids=text, attention_mask=mask, labels=image, use_cache=False).logits
    b = parti(input_ids=other, attention_mask=mask, labels=image, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_generate_greedy_equals_package_loop(parti):
    text, mask, _ = batch()
    generated = parti.generate(
        input_ids=text, attention_mask=mask, do_sample=False, max_new_tokens=parti.config.num_image_tokens
    )
    assert (generated[:, 0] == parti.config.bos_token_id).all()
    assert torch.equal(generated[:, 1:], parti.sample_image_tokens(text, mask, do_sample=False))


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
    # one projection per decoder layer for the whole image (both guidance branches in one batch)
    assert len(calls) == parti.config.num_hidden_layers


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
        tiny_parti_config(16, text_encoder_config=bert.to_dict(), num_aligner_layers=1, text_vocab_size=50)
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


def test_config_validation():
    with pytest.raises(ValueError, match="decoder_attention_types"):
        tiny_parti_config(decoder_attention_types=["full"])
    with pytest.raises(ValueError, match="decoder_attention_types"):
        tiny_parti_config(decoder_attention_types=["full", "diagonal"])


class TestPartiPrior(PriorTesterMixin):
    """The shared prior behaviour (tests/models/prior_tester.py) on a 2-layer Parti with a 4x4 grid."""

    model_class = PartiForConditionalGeneration
    base_model_class = PartiModel
    sampling_kwargs = {"top_k": 8}
    image_size = 16

    def build_model(self, **config_overrides):
        torch.manual_seed(0)
        config = {"decoder_attention_types": ["conv", "row"], "conv_kernel_size": 3, **config_overrides}
        return PartiForConditionalGeneration(tiny_parti_config(16, **config)).eval()

    @staticmethod
    def text(rows):
        """(B, 10) captions with 2 to 4 padded positions, and their mask."""
        text = torch.cat([torch.randint(3, 100, (1, 10), generator=seeded(100 + row)) for row in rows])
        mask = torch.ones_like(text)
        for i, row in enumerate(rows):
            mask[i, 6 + row % 3 :] = 0
        return text, mask

    def forward_inputs(self, model, rows):
        text, mask = self.text(rows)
        n = model.config.num_image_tokens
        image = torch.cat([torch.randint(0, model.config.image_vocab_size, (1, n), generator=seeded(r)) for r in rows])
        return {"input_ids": text, "attention_mask": mask, "labels": image, "use_cache": False}

    def generation_inputs(self, model, rows):
        text, mask = self.text(rows)
        return {"input_ids": text, "attention_mask": mask}

    def negative_inputs(self, model):
        negative_mask = torch.zeros(1, 10, dtype=torch.long)
        negative_mask[:, 0] = 1
        return {"negative_input_ids": torch.zeros(1, 10, dtype=torch.long), "negative_attention_mask": negative_mask}

    def sample_shape(self, model, batch):
        return (batch, model.config.num_image_tokens)

    def deterministic_kwargs(self, model, rows):
        return {"do_sample": False}

    def first_prediction(self, model, state, generator):
        return model.image_generation_step(state, None)  # (B', image_vocab) logits of the first image code

    def cached_and_uncached(self, model):
        for variant in (model, self.build_model(decoder_attention_types=["full", "row"])):
            attention = "+".join(variant.config.decoder_attention_types)
            inputs = self.forward_inputs(variant, [0, 1])
            text, mask, image = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
            full = variant(**inputs).logits
            decoder_inputs = variant.decoder_inputs(image)
            encoder = variant.get_encoder()(text, mask)
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            steps = []
            for start, end in [(0, 5)] + [(t, t + 1) for t in range(5, image.shape[1])]:
                step = variant(
                    attention_mask=mask,
                    decoder_input_ids=decoder_inputs[:, start:end],
                    encoder_outputs=encoder,
                    cache=cache,
                )
                steps.append(step.logits)
            yield f"{attention} forward", torch.cat(steps, 1), full
            # the generation protocol: <bos>, then one image code per step, through the preallocated cache
            state = variant.prepare_image_generation(text, mask)
            steps = [variant.image_generation_step(state, None)]
            steps += [variant.image_generation_step(state, image[:, i - 1 : i]) for i in range(1, image.shape[1])]
            yield (
                f"{attention} image_generation_step",
                torch.stack(steps, 1),
                full[..., : variant.config.image_vocab_size],
            )

    def bad_sampling_inputs(self, model):
        short = torch.zeros(1, 5, dtype=torch.long)
        return [
            ({"negative_input_ids": short}, "negative_input_ids"),
            ({"negative_attention_mask": short}, "negative_attention_mask"),
            ({"temperature": 0}, "temperature"),
            ({"top_k": 0}, "top_k"),
            ({"top_p": 0.0}, "top_p"),
            ({"min_p": 2.0}, "min_p"),
        ]

    def bad_forward_inputs(self, model, inputs):
        too_long = torch.zeros(2, model.config.num_image_tokens + 1, dtype=torch.long)
        return [
            ({"labels": None}, "decoder_input_ids"),
            ({"decoder_input_ids": too_long, "labels": None}, "exceed"),
        ]
