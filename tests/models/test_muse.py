"""Muse / MaskGIT: config validation, the masked-token loss, bidirectional attention that never reads a masked code,
batch == singles, save / load, seeded confidence-ordered sampling, guidance, and a tiny model that learns."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel

from hf_t2i import AutoModelForTextToImage, T2IImageProcessor
from hf_t2i.generation import ImageGenerator
from hf_t2i.generation.masked import cosine_training_mask
from hf_t2i.models.dalle_dvae import DalleDVAEConfig
from hf_t2i.models.muse import (
    MuseConfig,
    MuseForConditionalGeneration,
    MuseModel,
    MuseProcessor,
)
from hf_t2i.models.vit_vqgan import ViTVQGANConfig

from .prior_tester import PriorTesterMixin


def tiny_vq_config() -> DalleDVAEConfig:
    """A 16px dVAE with a 4x4 grid of 32 codes."""
    return DalleDVAEConfig(
        image_size=16, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2, 2], num_blocks_per_group=1
    )


def tiny_muse_config(**kwargs) -> MuseConfig:
    defaults = dict(
        vq_config=tiny_vq_config(),
        text_vocab_size=300,
        text_seq_len=12,
        encoder_layers=1,
        encoder_attention_heads=4,
        encoder_intermediate_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    defaults.update(kwargs)
    return MuseConfig(**defaults)


def tiny_model(**kwargs) -> MuseForConditionalGeneration:
    torch.manual_seed(0)
    return MuseForConditionalGeneration(tiny_muse_config(**kwargs)).eval()


def batch(seed=0, size=2):
    """Captions (B, 12) with padding after 7 tokens in row 0 and after 4 in the others, and (B, 16) codes."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, 300, (size, 12), generator=g)
    attention_mask = torch.ones_like(text)
    attention_mask[:, 4:] = 0
    attention_mask[0, :7] = 1
    codes = torch.randint(0, 32, (size, 16), generator=g)
    return text, attention_mask, codes


def seeded(seed):
    return torch.Generator().manual_seed(seed)


# -- config ----------------------------------------------------------------------------------------------------------
def test_config_derives_the_mask_id_and_grid_from_the_tokenizer():
    config = tiny_muse_config()
    assert (config.image_vocab_size, config.mask_token_id, config.image_grid_size) == (32, 32, 4)
    assert (config.num_image_tokens, config.image_size) == (16, 16)
    assert (config.num_inference_steps, config.choice_temperature) == (12, 4.5)
    model = MuseModel(config)
    assert model.token_embeddings.num_embeddings == 33  # 32 codes + [MASK]
    vit = ViTVQGANConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    vit = vit.to_dict()
    assert MuseConfig(vq_config=vit).num_image_tokens == 16 and isinstance(
        MuseConfig(vq_config=vit).vq_config, ViTVQGANConfig
    )


def test_config_round_trips_through_auto_config(tmp_path):
    config = tiny_muse_config(position_embedding_type="axial", choice_temperature=2.0)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MuseConfig and type(loaded.vq_config) is DalleDVAEConfig
    ignore = {"_name_or_path"}
    assert {k: v for k, v in loaded.to_dict().items() if k not in ignore} == {
        k: v for k, v in config.to_dict().items() if k not in ignore
    }
    assert type(AutoModel.from_config(loaded)) is MuseModel


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"hidden_size": 30}, "hidden_size"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"encoder_attention_heads": 3}, "encoder_attention_heads"),
        ({"encoder_layers": 0}, "encoder_layers"),
        ({"num_aligner_layers": -1}, "num_aligner_layers"),
        ({"intermediate_size": 0}, "intermediate_size"),
        ({"hidden_dropout": 1.0}, "hidden_dropout"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"position_embedding_type": "rope"}, "position_embedding_type"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": True}, "num_inference_steps"),
        ({"choice_temperature": -1.0}, "choice_temperature"),
        ({"choice_temperature": float("nan")}, "choice_temperature"),
        ({"initializer_range": 0.0}, "initializer_range"),
        ({"vq_config": {"model_type": "bert"}}, "vq_config"),
        ({"vq_config": AutoConfig.for_model("bert")}, "vq_config"),
        ({"text_encoder_config": {"hidden_size": 8}}, "text_encoder_config"),
    ],
)
def test_config_errors_name_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tiny_muse_config(**kwargs)


# -- training forward -----------------------------------------------------------------------------------------------
def test_forward_shapes_and_the_loss_reads_masked_positions_only():
    model = tiny_model()
    text, attention_mask, codes = batch()
    out = model(input_ids=text, attention_mask=attention_mask, image_token_ids=codes, generator=seeded(1))
    assert out.logits.shape == (2, 16, 32) and out.mask.shape == (2, 16) and out.loss.ndim == 0
    again = model(input_ids=text, attention_mask=attention_mask, image_token_ids=codes, generator=seeded(1))
    assert torch.equal(out.mask, again.mask) and torch.equal(out.loss, again.loss)  # the mask comes from the seed
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 5, 9]] = True
    mask[1, [0, 15]] = True
    kwargs = dict(input_ids=text, attention_mask=attention_mask, mask=mask)
    ref = model(image_token_ids=codes, **kwargs)
    manual = F.cross_entropy(ref.logits[mask], codes[mask])  # mean over the 5 masked positions of the batch
    assert torch.allclose(ref.loss, manual)
    unmasked_target = codes.clone()
    unmasked_target[0, 2] = (codes[0, 2] + 1) % 32
    changed = model(image_token_ids=unmasked_target, **kwargs)
    # the input changed, so the logits do; the loss must not see the unmasked target itself
    recomputed = F.cross_entropy(changed.logits[mask], codes[mask])
    assert torch.allclose(changed.loss, recomputed)
    masked_target = codes.clone()
    masked_target[0, 5] = (codes[0, 5] + 1) % 32
    moved = model(image_token_ids=masked_target, **kwargs)
    assert torch.equal(moved.logits, ref.logits)  # the input at a masked position is never read ...
    assert not torch.allclose(moved.loss, ref.loss)  # ... but it is the target there


def test_masked_codes_are_never_read():
    model = tiny_model()
    text, attention_mask, codes = batch()
    mask = cosine_training_mask(2, 16, seeded(3), "cpu")
    other = torch.where(mask, (codes + 7) % 32, codes)
    kwargs = dict(input_ids=text, attention_mask=attention_mask, mask=mask, return_loss=False)
    assert torch.equal(model(image_token_ids=codes, **kwargs).logits, model(image_token_ids=other, **kwargs).logits)


def test_attention_is_bidirectional():
    model = tiny_model()
    text, attention_mask, codes = batch()
    later = codes.clone()
    later[:, 15] = (codes[:, 15] + 1) % 32
    kwargs = dict(input_ids=text, attention_mask=attention_mask, return_loss=False)
    a = model(image_token_ids=codes, **kwargs).logits
    b = model(image_token_ids=later, **kwargs).logits
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-5)  # the first output reads the last token


def test_text_conditions_the_outputs_and_padding_is_ignored():
    model = tiny_model()
    text, attention_mask, codes = batch()
    kwargs = dict(image_token_ids=codes, return_loss=False)
    ref = model(input_ids=text, attention_mask=attention_mask, **kwargs).logits
    other_pads = torch.where(attention_mask.bool(), text, torch.full_like(text, 5))
    assert torch.allclose(model(input_ids=other_pads, attention_mask=attention_mask, **kwargs).logits, ref, atol=1e-6)
    other_text = torch.where(attention_mask.bool(), (text + 1) % 300, text)
    assert not torch.allclose(model(input_ids=other_text, attention_mask=attention_mask, **kwargs).logits, ref)


@pytest.mark.parametrize("position_embedding_type", ["learned", "axial"])
def test_batch_equals_singles(position_embedding_type):
    model = tiny_model(position_embedding_type=position_embedding_type)
    text, attention_mask, codes = batch(size=3)
    mask = cosine_training_mask(3, 16, seeded(0), "cpu")
    full = model(input_ids=text, attention_mask=attention_mask, image_token_ids=codes, mask=mask)
    losses = []
    for i in range(3):
        single = model(
            input_ids=text[i : i + 1],
            attention_mask=attention_mask[i : i + 1],
            image_token_ids=codes[i : i + 1],
            mask=mask[i : i + 1],
        )
        assert torch.allclose(full.logits[i : i + 1], single.logits, atol=1e-5)
        losses.append(single.loss * mask[i].sum())
    assert torch.allclose(full.loss, sum(losses) / mask.sum(), atol=1e-5)


@pytest.mark.parametrize("position_embedding_type", ["learned", "axial"])
def test_save_load_round_trip(tmp_path, position_embedding_type):
    model = tiny_model(position_embedding_type=position_embedding_type)
    text, attention_mask, codes = batch()
    mask = cosine_training_mask(2, 16, seeded(0), "cpu")
    kwargs = dict(input_ids=text, attention_mask=attention_mask, image_token_ids=codes, mask=mask)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForTextToImage.from_pretrained(tmp_path).eval()
    assert type(loaded) is MuseForConditionalGeneration
    assert torch.equal(loaded(**kwargs).logits, model(**kwargs).logits)
    sample = dict(input_ids=text, attention_mask=attention_mask, num_inference_steps=4)
    assert torch.equal(
        loaded.sample_image_tokens(**sample, generator=seeded(2)),
        model.sample_image_tokens(**sample, generator=seeded(2)),
    )
    assert torch.equal(loaded.decode_image_tokens(codes), model.decode_image_tokens(codes))


def test_gradients_reach_the_backbone_but_not_through_masked_inputs():
    model = tiny_model().train()
    text, attention_mask, codes = batch()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :8] = True
    model(input_ids=text, attention_mask=attention_mask, image_token_ids=codes, mask=mask).loss.backward()
    grad = model.model.token_embeddings.weight.grad
    assert grad[32].abs().sum() > 0  # [MASK] is used
    unmasked_codes = set(codes[:, 8:].flatten().tolist())
    unused = [i for i in range(32) if i not in unmasked_codes]
    assert grad[unused].abs().sum() == 0  # codes only seen at masked positions get no gradient


# -- generation ------------------------------------------------------------------------------------------------------
def test_is_an_image_generator():
    assert isinstance(tiny_model(), ImageGenerator)


def test_step_draws_every_candidate_with_its_log_probability():
    model = tiny_model()
    text, attention_mask, _ = batch()
    settings = model.check_sampling(do_sample=False)
    state = model.prepare_image_generation(text, attention_mask, settings=settings)
    decoder = model.start_image_tokens(state)
    positions, scale = decoder.plan(0)
    assert positions.shape == (2, 16)  # every position is a candidate at the start
    drawn, confidence = model.image_generation_step(state, decoder.tokens, decoder.known, positions, scale)
    logits = model(
        input_ids=text, attention_mask=attention_mask, image_token_ids=decoder.tokens, mask=~decoder.known
    ).logits
    log_probs = torch.log_softmax(logits.float(), -1).gather(1, positions[..., None].expand(-1, -1, 32))
    assert torch.equal(drawn, log_probs.argmax(-1))
    assert torch.allclose(confidence, log_probs.max(-1).values, atol=1e-6)


def test_default_steps_are_capped_at_the_image_tokens():
    vq = DalleDVAEConfig(
        image_size=8, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2, 2], num_blocks_per_group=1
    )
    model = tiny_model(vq_config=vq)  # a 2x2 grid: 4 tokens, fewer than the default 12 iterations
    assert model.check_sampling().num_steps == 4
    assert tiny_model().check_sampling().num_steps == 12
    assert tiny_model(num_inference_steps=5).check_sampling().num_steps == 5
    text, attention_mask, _ = batch()
    assert model.sample_image_tokens(text, attention_mask, generator=seeded(0)).shape == (2, 4)


def test_sampling_is_seeded_and_reveals_every_code():
    model = tiny_model()
    text, attention_mask, _ = batch()
    kwargs = dict(input_ids=text, attention_mask=attention_mask, num_inference_steps=5, temperature=2.0)
    a = model.sample_image_tokens(**kwargs, generator=seeded(1))
    assert a.shape == (2, 16) and a.dtype == torch.long and a.min() >= 0 and a.max() < 32
    assert torch.equal(a, model.sample_image_tokens(**kwargs, generator=seeded(1)))
    assert not torch.equal(a, model.sample_image_tokens(**kwargs, generator=seeded(2)))
    # the choice noise alone changes which draws are kept
    greedy = dict(kwargs, do_sample=False)
    b = model.sample_image_tokens(**greedy, choice_temperature=0.0, generator=seeded(1))
    assert torch.equal(b, model.sample_image_tokens(**greedy, choice_temperature=0.0, generator=seeded(2)))
    assert not torch.equal(b, model.sample_image_tokens(**greedy, choice_temperature=50.0, generator=seeded(2)))


def test_batched_sampling_equals_single_sampling_when_greedy():
    model = tiny_model()
    text, attention_mask, _ = batch(size=3)
    kwargs = dict(num_inference_steps=4, do_sample=False, choice_temperature=0.0)
    both = model.sample_image_tokens(text, attention_mask, **kwargs)
    for i in range(3):
        assert torch.equal(
            both[i : i + 1], model.sample_image_tokens(text[i : i + 1], attention_mask[i : i + 1], **kwargs)
        )


def test_guidance_scale_one_and_self_guidance_equal_unguided_sampling():
    model = tiny_model()
    text, attention_mask, _ = batch()
    kwargs = dict(input_ids=text, attention_mask=attention_mask, num_inference_steps=4)
    plain = model.sample_image_tokens(**kwargs, generator=seeded(4))
    empty = torch.zeros_like(text[:1])
    one = model.sample_image_tokens(**kwargs, guidance_scale=1.0, negative_input_ids=empty, generator=seeded(4))
    assert torch.equal(plain, one)
    # the unconditional branch equal to the conditional one: uncond + s (cond - uncond) == cond at any scale
    same = model.sample_image_tokens(
        **kwargs,
        guidance_scale=5.0,
        negative_input_ids=text,
        negative_attention_mask=attention_mask,
        generator=seeded(4),
    )
    assert torch.equal(plain, same)
    guided = model.sample_image_tokens(**kwargs, guidance_scale=5.0, negative_input_ids=empty, generator=seeded(4))
    assert not torch.equal(plain, guided)
    # linear schedule: scale 1 at progress 0 runs the conditional rows only, and still matches
    scheduled = model.sample_image_tokens(
        **kwargs,
        guidance_scale=5.0,
        guidance_schedule="linear",
        negative_input_ids=text,
        negative_attention_mask=attention_mask,
        generator=seeded(4),
    )
    assert torch.equal(plain, scheduled)


def test_tiny_model_learns_four_examples_and_samples_them_back(tokenizer):
    """60 AdamW steps on 4 (caption, codes) pairs: the held-out-mask loss falls from ~ln 32 and greedy decoding at
    choice_temperature 0 writes each caption's codes exactly."""
    processor = MuseProcessor(T2IImageProcessor(image_size=16), tokenizer)
    inputs = processor(text=["a red circle", "two blue squares", "three yellow circles", "a green triangle"])
    torch.manual_seed(0)
    model = MuseForConditionalGeneration(tiny_muse_config(text_vocab_size=len(tokenizer)))
    codes = torch.randint(0, 32, (4, 16), generator=seeded(0))
    trainable = [p for name, p in model.named_parameters() if not name.startswith("vqmodel.")]
    optimizer = torch.optim.AdamW(trainable, lr=5e-3, weight_decay=0.0)

    def held_out_loss():
        model.eval()
        with torch.no_grad():
            return model(**inputs, image_token_ids=codes, generator=seeded(5)).loss.item()

    before = held_out_loss()
    model.train()
    generator = seeded(1)
    for _ in range(60):
        loss = model(**inputs, image_token_ids=codes, generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert before > 3.0 and after < 0.6, (before, after)
    drawn = model.sample_image_tokens(**inputs, num_inference_steps=4, do_sample=False, choice_temperature=0.0)
    assert torch.equal(drawn, codes)


# -- errors ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "name"),
    [
        (lambda kw: kw.update(image_token_ids=kw["image_token_ids"].float()), "image_token_ids"),
        (lambda kw: kw.update(image_token_ids=kw["image_token_ids"][:, :15]), "image_token_ids"),
        (lambda kw: kw.update(image_token_ids=torch.full((2, 16), 32)), "image_token_ids"),  # the [MASK] id
        (lambda kw: kw.pop("image_token_ids"), "image_token_ids"),
        (lambda kw: kw.pop("input_ids"), "input_ids"),
        (lambda kw: kw.update(mask=torch.ones(2, 16)), "mask"),
        (lambda kw: kw.update(mask=torch.ones(2, 15, dtype=torch.bool)), "mask"),
        (lambda kw: kw.update(mask=torch.zeros(2, 16, dtype=torch.bool)), "mask"),
        (lambda kw: kw.update(input_ids=kw["input_ids"][:1], attention_mask=kw["attention_mask"][:1]), "batch size"),
    ],
)
def test_bad_forward_inputs_name_the_argument(change, name):
    model = tiny_model()
    text, attention_mask, codes = batch()
    kwargs = dict(input_ids=text, attention_mask=attention_mask, image_token_ids=codes)
    change(kwargs)
    with pytest.raises(ValueError, match=name):
        model(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_inference_steps": 17}, "num_inference_steps"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 2.0}, "num_inference_steps"),
        ({"choice_temperature": -0.5}, "choice_temperature"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 33}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"guidance_scale": -2.0}, "guidance_scale"),
        ({"guidance_schedule": "cosine"}, "guidance_schedule"),
        ({"guidance_scale": 3.0}, "negative_input_ids"),
        ({"guidance_scale": 3.0, "negative_input_ids": torch.zeros(1, 5, dtype=torch.long)}, "negative_input_ids"),
        ({"input_ids": torch.zeros(2, 12)}, "input_ids"),
        ({"attention_mask": torch.ones(2, 11)}, "attention_mask"),
        (
            {
                "guidance_scale": 2.0,
                "negative_input_ids": torch.zeros(1, 12, dtype=torch.long),
                "negative_attention_mask": torch.ones(1, 3),
            },
            "negative_attention_mask",
        ),
    ],
)
def test_bad_sampling_inputs_name_the_argument(kwargs, name):
    model = tiny_model()
    text, attention_mask, _ = batch()
    with pytest.raises(ValueError, match=name):
        model.sample_image_tokens(**{"input_ids": text, "attention_mask": attention_mask, **kwargs})


def test_bad_pixels_name_the_argument():
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model().encode_images(torch.zeros(1, 3, 32, 32))
    assert tiny_model().encode_images(torch.zeros(1, 3, 16, 16)).shape == (1, 16)


# -- the shared prior behaviour ----------------------------------------------------------------------------------------
class TestMusePrior(PriorTesterMixin):
    """The shared prior behaviour (tests/models/prior_tester.py) on a 2-layer Muse with a 4x4 grid of 32 codes."""

    model_class = MuseForConditionalGeneration
    base_model_class = MuseModel
    sampling_kwargs = {"num_inference_steps": 4}
    image_size = 16

    def build_model(self, **config_overrides):
        model = tiny_model(**config_overrides)
        torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # a head whose draws depend on the condition
        return model

    @staticmethod
    def text(rows):
        """(B, 12) captions with 3 to 5 padded positions, and their mask."""
        text = torch.cat([torch.randint(3, 300, (1, 12), generator=seeded(100 + row)) for row in rows])
        mask = torch.ones_like(text)
        for i, row in enumerate(rows):
            mask[i, 7 + row % 3 :] = 0
        return text, mask

    def forward_inputs(self, model, rows):
        text, mask = self.text(rows)
        codes = torch.cat([torch.randint(0, 32, (1, 16), generator=seeded(row)) for row in rows])
        masked = torch.cat([cosine_training_mask(1, 16, seeded(200 + row), "cpu") for row in rows])
        return {"input_ids": text, "attention_mask": mask, "image_token_ids": codes, "mask": masked}

    def generation_inputs(self, model, rows):
        text, mask = self.text(rows)
        return {"input_ids": text, "attention_mask": mask}

    def negative_inputs(self, model):
        return {"negative_input_ids": torch.zeros(1, 12, dtype=torch.long)}

    def sample_shape(self, model, batch):
        return (batch, model.config.num_image_tokens)

    def deterministic_kwargs(self, model, rows):
        return {"do_sample": False, "choice_temperature": 0.0}

    def guided_first_step(self, model, inputs, guidance_scale, scale, generator):
        settings = model.check_sampling(guidance_scale=guidance_scale, do_sample=False, **self.sampling_kwargs)
        state = model.prepare_image_generation(**inputs, settings=settings, generator=generator)
        decoder = model.start_image_tokens(state)
        positions, _ = decoder.plan(0)
        # Muse's step draws a code at every candidate and returns it with its log-probability: (B, M) each
        drawn, confidence = model.image_generation_step(state, decoder.tokens, decoder.known, positions, scale)
        return torch.cat([drawn.float(), confidence], dim=1)  # (B, 2M)

    def bad_sampling_inputs(self, model):
        return [
            ({"negative_input_ids": torch.zeros(1, 5, dtype=torch.long)}, "negative_input_ids"),
            ({"guidance_schedule": "cosine"}, "guidance_schedule"),
            ({"num_inference_steps": 17}, "num_inference_steps"),
            ({"num_inference_steps": 0}, "num_inference_steps"),
            ({"choice_temperature": -1.0}, "choice_temperature"),
            ({"top_k": 33}, "top_k"),
            ({"temperature": 0.0}, "temperature"),
        ]

    def bad_forward_inputs(self, model, inputs):
        codes = inputs["image_token_ids"]
        return [
            ({"image_token_ids": codes.float()}, "image_token_ids"),
            ({"image_token_ids": torch.full_like(codes, 32)}, "image_token_ids"),
            ({"mask": inputs["mask"].long()}, "mask"),
            ({"input_ids": None}, "input_ids"),
        ]
