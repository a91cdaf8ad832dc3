import math

import pytest
import torch
from transformers import AutoConfig, DynamicCache, EncoderDecoderCache

from hf_t2i.models.dalle_dvae import DalleDVAEConfig
from hf_t2i.models.fluid import FluidConfig, FluidForConditionalGeneration, small_vae_config
from hf_t2i.models.fluid.modeling_fluid import random_training_mask


CELLS = [("continuous", "random"), ("continuous", "raster"), ("discrete", "random"), ("discrete", "raster")]


def tiny_fluid_config(token_type="continuous", generation_order="random", **kwargs) -> FluidConfig:
    """4x4 image tokens: a 16px VAE with one x2 downsampling (8x8x4 latents, 2x2 patches of 16 values), or a 16px
    dVAE with a 4x4 grid of 32 codes."""
    vae = small_vae_config(16)
    vae.update(
        block_out_channels=[16, 16],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    )
    vae.update(norm_num_groups=8)
    vq = DalleDVAEConfig(
        image_size=16, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2, 2], num_blocks_per_group=1
    )
    defaults = dict(
        token_type=token_type,
        generation_order=generation_order,
        vae_config=vae,
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
        diffusion_head_layers=2,
        num_train_timesteps=50,
        num_diffusion_steps=5,
    )
    defaults.update(kwargs)
    return FluidConfig(**defaults)


def tiny_model(token_type="continuous", generation_order="random", **kwargs):
    torch.manual_seed(0)
    return FluidForConditionalGeneration(tiny_fluid_config(token_type, generation_order, **kwargs)).eval()


def batch(model, seed=0, size=2):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, 100, (size, 10), generator=g)
    mask = torch.ones_like(text)
    mask[:, 7:] = 0
    n = model.config.num_image_tokens
    if model.config.is_continuous:
        image = torch.randn(size, n, model.config.token_dim, generator=g)
    else:
        image = torch.randint(0, model.config.image_vocab_size, (size, n), generator=g)
    return text, mask, image


def outputs(model, out):
    return out.last_hidden_state if model.config.is_continuous else out.logits


def test_config_grid_and_token_sizes():
    config = tiny_fluid_config()
    assert (config.image_size, config.latent_size, config.image_grid_size, config.token_dim) == (16, 8, 4, 16)
    assert tiny_fluid_config("discrete").num_image_tokens == 16
    assert small_vae_config()["sample_size"] == 32 and FluidConfig().num_image_tokens == 16  # 32px -> 8x8x4 -> 4x4


@pytest.mark.parametrize("token_type", ["continuous", "discrete"])
def test_bidirectional_outputs_do_not_depend_on_the_order(token_type):
    model = tiny_model(token_type, "random")
    text, mask, image = batch(model)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    kwargs = dict(input_ids=text, attention_mask=mask, return_loss=False)
    raster = outputs(model, model(image_tokens=image, **kwargs))
    permuted = outputs(model, model(image_tokens=image[:, perm], position_ids=perm[None], **kwargs))
    assert torch.allclose(permuted, raster[:, perm], atol=1e-5)
    # and a masked token is hidden from the model: changing it changes nothing
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[:, 5] = True
    other = image.clone()
    other[:, 5] = other[:, 6]
    a = outputs(model, model(image_tokens=image, mask=hidden, **kwargs))
    b = outputs(model, model(image_tokens=other, mask=hidden, **kwargs))
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, raster, atol=1e-4)


@pytest.mark.parametrize("token_type", ["continuous", "discrete"])
def test_raster_cached_equals_uncached(token_type):
    model = tiny_model(token_type, "raster")
    text, mask, image = batch(model)
    full = model(input_ids=text, attention_mask=mask, image_tokens=image, return_loss=False, use_cache=False)
    embeds = model.model.input_embeddings(image)  # [START], t0 .. t14
    encoder = model.get_encoder()(text, mask)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    steps = []
    for start, end in [(0, 5)] + [(t, t + 1) for t in range(5, 16)]:
        steps.append(
            model.model(
                inputs_embeds=embeds[:, start:end], attention_mask=mask, encoder_outputs=encoder, cache=cache
            ).last_hidden_state
        )
    assert torch.allclose(torch.cat(steps, 1), full.last_hidden_state, atol=1e-5)
    # causal: a later token does not change earlier outputs
    later = image.clone()
    later[:, 10:] = later[:, :6]
    changed = model(input_ids=text, attention_mask=mask, image_tokens=later, return_loss=False).last_hidden_state
    assert torch.allclose(changed[:, :11], full.last_hidden_state[:, :11], atol=1e-6)
    assert not torch.allclose(changed[:, 11:], full.last_hidden_state[:, 11:], atol=1e-4)


def test_batch_equals_singles():
    model = tiny_model("continuous", "random")
    text, mask, image = batch(model, size=3)
    masked = random_training_mask(3, 16, torch.Generator().manual_seed(0), "cpu")
    batched = model(input_ids=text, attention_mask=mask, image_tokens=image, mask=masked, return_loss=False)
    for i in range(3):
        single = model(
            input_ids=text[i : i + 1],
            attention_mask=mask[i : i + 1],
            image_tokens=image[i : i + 1],
            mask=masked[i : i + 1],
            return_loss=False,
        )
        assert torch.allclose(batched.last_hidden_state[i : i + 1], single.last_hidden_state, atol=1e-5)


def test_training_mask_follows_the_cosine_schedule():
    mask = random_training_mask(4000, 16, torch.Generator().manual_seed(0), "cpu")
    assert mask.sum(1).min() >= 1
    # E[ceil(16 cos(pi/2 r))] / 16 with r ~ U(0, 1): 2/pi plus the rounding up (about 1/32)
    assert abs(mask.float().mean().item() - (2 / math.pi + 1 / 32)) < 0.02
    assert not torch.equal(mask[0], mask[1])


@pytest.mark.parametrize(("token_type", "order"), CELLS)
def test_loss_seeded_and_trainable(token_type, order):
    model = tiny_model(token_type, order).train()
    text, mask, image = batch(model)

    def loss(seed):
        return model(
            input_ids=text, attention_mask=mask, image_tokens=image, generator=torch.Generator().manual_seed(seed)
        ).loss

    assert torch.equal(loss(0), loss(0))
    # the generator draws the mask (random order) and the diffusion noise (continuous); discrete raster has neither
    assert torch.equal(loss(0), loss(1)) == (token_type == "discrete" and order == "raster")
    loss(0).backward()
    head = model.diffusion_head.output if token_type == "continuous" else model.lm_head
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert model.model.layers[0].cross_attn.kv_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("token_type", "order"), CELLS)
def test_sampling_is_seeded(token_type, order):
    model = tiny_model(token_type, order)
    text, mask, _ = batch(model)
    kwargs = dict(num_inference_steps=4 if order == "random" else None, guidance_scale=2.0)
    kwargs["negative_input_ids"] = torch.zeros(1, 10, dtype=torch.long)
    a = model.sample_image_tokens(text, mask, generator=torch.Generator().manual_seed(0), **kwargs)
    b = model.sample_image_tokens(text, mask, generator=torch.Generator().manual_seed(0), **kwargs)
    c = model.sample_image_tokens(text, mask, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    model.model.check_image_tokens(a)
    pixels = model.decode_image_tokens(a)
    assert pixels.shape == (2, 3, 16, 16) and pixels.abs().max() <= 1


@pytest.mark.parametrize("steps", [1, 5, 16])
def test_random_order_reveals_each_token_once_on_a_cosine_schedule(steps):
    model = tiny_model("discrete", "random")
    text, mask, _ = batch(model, size=1)
    # count through the model's own bookkeeping: every iteration reveals at least one token, none twice
    calls = []
    original = model._draw

    def draw(hidden, *args, **kwargs):
        calls.append(hidden.shape[1])
        return original(hidden, *args, **kwargs)

    model._draw = draw
    model.sample_image_tokens(text, mask, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    assert sum(calls) == 16 and len(calls) == steps and min(calls) >= 1
    if steps == 5:  # N cos(pi/2 k/K) still masked after iteration k: 15, 12, 9, 4, 0 -> reveal 1, 3, 3, 5, 4
        assert calls == [1, 3, 3, 5, 4]


def test_guidance_scale_one_equals_unguided():
    model = tiny_model("continuous", "random")
    text, mask, _ = batch(model)
    negative = torch.zeros(1, 10, dtype=torch.long)
    plain = model.sample_image_tokens(text, mask, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    one = model.sample_image_tokens(
        text, mask, negative, num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(0)
    )
    guided = model.sample_image_tokens(
        text, mask, negative, num_inference_steps=3, guidance_scale=4.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(plain, one) and not torch.allclose(plain, guided, atol=1e-4)


def test_head_temperature_zero_is_the_mean_path():
    model = tiny_model("continuous", "raster")
    torch.nn.init.normal_(model.diffusion_head.output.weight, std=0.1)
    text, mask, _ = batch(model, size=1)
    a = model.sample_image_tokens(text, mask, temperature=0.0, generator=torch.Generator().manual_seed(0))
    b = model.sample_image_tokens(text, mask, temperature=0.0, generator=torch.Generator().manual_seed(1))
    hot = model.sample_image_tokens(text, mask, temperature=1.0, generator=torch.Generator().manual_seed(1))
    # only the initial noise differs between a and b; the added noise of every reverse step is gone
    assert not torch.equal(a, b) and hot.std() > b.std()


@pytest.mark.parametrize(("token_type", "order"), CELLS)
def test_save_load_round_trip(token_type, order, tmp_path):
    model = tiny_model(token_type, order)
    model.save_pretrained(tmp_path)
    loaded = FluidForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.token_type == token_type and loaded.config.generation_order == order
    text, mask, image = batch(model)
    for m in (model, loaded):
        m.train()  # diffusion_batch_mul applies
    a = model(input_ids=text, attention_mask=mask, image_tokens=image, generator=torch.Generator().manual_seed(0))
    b = loaded(input_ids=text, attention_mask=mask, image_tokens=image, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.last_hidden_state, b.last_hidden_state)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(model.eval().encode_images(pixels), loaded.eval().encode_images(pixels))


def test_pretrained_frozen_text_encoder_with_aligner(tmp_path):
    bert = AutoConfig.for_model(
        "bert",
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    model = tiny_model(text_encoder_config=bert.to_dict(), num_aligner_layers=1).train()
    encoder = model.model.text_encoder
    assert not any(p.requires_grad for p in encoder.pretrained.parameters())
    assert not encoder.pretrained.training
    text, mask, image = batch(model)
    model(input_ids=text, attention_mask=mask, image_tokens=image).loss.backward()
    assert encoder.pretrained.embeddings.word_embeddings.weight.grad is None
    assert encoder.aligner[0].mlp.fc1.weight.grad is not None
    model.save_pretrained(tmp_path)
    assert FluidForConditionalGeneration.from_pretrained(tmp_path).config.text_encoder_config.model_type == "bert"


def test_bad_inputs():
    model = tiny_model("continuous", "random")
    text, mask, image = batch(model)
    with pytest.raises(ValueError, match="image_tokens"):
        model(input_ids=text, image_tokens=image[:, :8])
    with pytest.raises(ValueError, match="image_tokens"):
        model(input_ids=text, image_tokens=image.argmax(-1))
    with pytest.raises(ValueError, match="mask"):
        model(input_ids=text, image_tokens=image, mask=torch.ones(2, 16))
    with pytest.raises(ValueError, match="num_inference_steps"):
        model.sample_image_tokens(text, num_inference_steps=17)
    with pytest.raises(ValueError, match="negative_input_ids"):
        model.sample_image_tokens(text, guidance_scale=3.0)
    with pytest.raises(ValueError, match="top_k"):
        model.sample_image_tokens(text, top_k=4)
    with pytest.raises(ValueError, match="num_diffusion_steps"):
        model.sample_image_tokens(text, num_diffusion_steps=0)
    with pytest.raises(ValueError, match="guidance_schedule"):
        model.sample_image_tokens(text, guidance_schedule="cosine")
    with pytest.raises(ValueError, match="pixel_values"):
        model.encode_images(torch.zeros(1, 3, 32, 32))
    raster = tiny_model("discrete", "raster")
    with pytest.raises(ValueError, match="num_inference_steps"):
        raster.sample_image_tokens(text, num_inference_steps=64)
    with pytest.raises(ValueError, match="mask"):
        raster(input_ids=text, image_tokens=torch.zeros(2, 16, dtype=torch.long), mask=torch.ones(2, 16).bool())
    with pytest.raises(ValueError, match="ids must be in"):
        raster(input_ids=text, image_tokens=torch.full((2, 16), 32))
    with pytest.raises(ValueError, match="token_type"):
        tiny_fluid_config(token_type="mixed")
    with pytest.raises(ValueError, match="generation_order"):
        tiny_fluid_config(generation_order="spiral")
    with pytest.raises(ValueError, match="patch_size"):
        tiny_fluid_config(patch_size=3)
    with pytest.raises(ValueError, match="vq_config"):
        tiny_fluid_config("discrete", vq_config={"model_type": "bert"})
