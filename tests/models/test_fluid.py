import pytest
import torch
from transformers import AutoConfig, DynamicCache, EncoderDecoderCache

from hf_t2i.generation.masked import cosine_training_mask
from hf_t2i.layers import sincos_2d_embedding, sinusoidal_embedding
from hf_t2i.models.dalle_dvae import DalleDVAEConfig
from hf_t2i.models.fluid import FluidConfig, FluidForConditionalGeneration, FluidModel, MarConfig, small_vae_config

from .prior_tester import PriorTesterMixin, seeded


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
def test_raster_order_is_causal(token_type):
    model = tiny_model(token_type, "raster")
    text, mask, image = batch(model)
    kwargs = dict(input_ids=text, attention_mask=mask, return_loss=False)
    full = model(image_tokens=image, **kwargs).last_hidden_state
    later = image.clone()
    later[:, 10:] = later[:, :6]  # a later token does not change earlier outputs
    changed = model(image_tokens=later, **kwargs).last_hidden_state
    assert torch.allclose(changed[:, :11], full[:, :11], atol=1e-6)
    assert not torch.allclose(changed[:, 11:], full[:, 11:], atol=1e-4)


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


def test_head_temperature_zero_is_the_mean_path():
    model = tiny_model("continuous", "raster")
    torch.nn.init.normal_(model.diffusion_head.output.weight, std=0.1)
    text, mask, _ = batch(model, size=1)
    a = model.sample_image_tokens(text, mask, temperature=0.0, generator=torch.Generator().manual_seed(0))
    b = model.sample_image_tokens(text, mask, temperature=0.0, generator=torch.Generator().manual_seed(1))
    hot = model.sample_image_tokens(text, mask, temperature=1.0, generator=torch.Generator().manual_seed(1))
    # only the initial noise differs between a and b; the added noise of every reverse step is gone
    assert not torch.equal(a, b) and hot.std() > b.std()


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


def test_config_and_encode_errors():
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model("continuous", "random").encode_images(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model("discrete", "raster").encode_images(torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="token_type"):
        tiny_fluid_config(token_type="mixed")
    with pytest.raises(ValueError, match="generation_order"):
        tiny_fluid_config(generation_order="spiral")
    with pytest.raises(ValueError, match="patch_size"):
        tiny_fluid_config(patch_size=3)
    with pytest.raises(ValueError, match="vq_config"):
        tiny_fluid_config("discrete", vq_config={"model_type": "bert"})
    for bad in (0, -1.0, True, "5"):
        with pytest.raises(ValueError, match=f"`snr_gamma` must be a number > 0 .* got {bad!r}"):
            tiny_fluid_config(snr_gamma=bad)
    assert tiny_fluid_config(snr_gamma=5).snr_gamma == 5.0


def test_sincos_2d_table_encodes_rows_then_columns():
    table = sincos_2d_embedding(3, 4, 8)  # a 3 x 4 grid in raster order
    assert table.shape == (12, 8) and table.abs().max() <= 1
    for index in range(12):
        row, col = divmod(index, 4)
        assert torch.equal(table[index, :4], sinusoidal_embedding(torch.tensor([row]), 4)[0])
        assert torch.equal(table[index, 4:], sinusoidal_embedding(torch.tensor([col]), 4)[0])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_embedding(2, 2, 6)


def test_position_embedding_init_sincos_2d_starts_from_the_grid_table_and_trains(tmp_path):
    model = tiny_model(position_embedding_init="sincos_2d")
    table = model.model.position_embeddings.weight
    assert torch.equal(table, sincos_2d_embedding(4, 4, 32)) and table.requires_grad
    assert tiny_model().model.position_embeddings.weight.std() < 0.05  # the default: N(0, initializer_range)
    with torch.no_grad():
        table.add_(0.5)  # as after training: a checkpoint loads its table, it is not initialised again
    model.save_pretrained(tmp_path)
    reloaded = FluidForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.config.position_embedding_init == "sincos_2d"
    assert torch.equal(reloaded.model.position_embeddings.weight, table)

    with pytest.raises(ValueError, match="`position_embedding_init` must be one of .*'sincos'"):
        tiny_fluid_config(position_embedding_init="sincos")
    with pytest.raises(ValueError, match="divisible by 4 \\(got 34\\)"):
        tiny_fluid_config(
            position_embedding_init="sincos_2d", hidden_size=34, num_attention_heads=2, encoder_attention_heads=2
        )
    with pytest.raises(ValueError, match="MAR's layout keeps its own position tables"):
        MarConfig(num_classes=10, position_embedding_init="sincos_2d")


class _FluidPrior(PriorTesterMixin):
    """The shared prior behaviour (tests/models/prior_tester.py) on one cell of text-conditional Fluid (4x4 tokens);
    one subclass per cell below."""

    model_class = FluidForConditionalGeneration
    base_model_class = FluidModel
    image_size = 16
    token_type: str
    generation_order: str

    @property
    def sampling_kwargs(self):
        return {"num_inference_steps": 4} if self.generation_order == "random" else {}

    def build_model(self, **config_overrides):
        model = tiny_model(self.token_type, self.generation_order, **config_overrides)
        # heads that depend on their input (at init the condition barely moves the samples of a tiny model)
        head = model.diffusion_head.output if model.diffusion_head is not None else model.lm_head
        torch.nn.init.normal_(head.weight, std=0.2 if model.diffusion_head is not None else 0.5)
        return model

    @staticmethod
    def text(rows):
        """(B, 10) captions with 2 to 4 padded positions, and their mask."""
        text = torch.cat([torch.randint(3, 100, (1, 10), generator=seeded(100 + row)) for row in rows])
        mask = torch.ones_like(text)
        for i, row in enumerate(rows):
            mask[i, 6 + row % 3 :] = 0
        return text, mask

    def forward_inputs(self, model, rows):
        config = model.config
        n = config.num_image_tokens
        if config.is_continuous:
            image = [torch.randn(1, n, config.token_dim, generator=seeded(row)) for row in rows]
        else:
            image = [torch.randint(0, config.image_vocab_size, (1, n), generator=seeded(row)) for row in rows]
        text, mask = self.text(rows)
        inputs = {"input_ids": text, "attention_mask": mask, "image_tokens": torch.cat(image), "generator": seeded(0)}
        if not config.is_causal:  # the tokens to predict, per row
            inputs["mask"] = torch.cat([cosine_training_mask(1, n, seeded(200 + row), "cpu") for row in rows])
        return inputs

    def forward_outputs(self, model, inputs):
        out = model(**inputs)
        outputs = {"loss": out.loss, "last_hidden_state": out.last_hidden_state}
        if out.logits is not None:
            outputs["logits"] = out.logits
        return outputs

    def generation_inputs(self, model, rows):
        text, mask = self.text(rows)
        return {"input_ids": text, "attention_mask": mask}

    def negative_inputs(self, model):
        return {"negative_input_ids": torch.zeros(1, 10, dtype=torch.long)}

    def sample_shape(self, model, batch):
        config = model.config
        return (batch, config.num_image_tokens) + ((config.token_dim,) if config.is_continuous else ())

    def deterministic_kwargs(self, model, rows):
        # random order draws the orders, continuous tokens the head's noise, for the whole batch
        return {"do_sample": False} if self.token_type == "discrete" and self.generation_order == "raster" else None

    def guided_first_step(self, model, inputs, guidance_scale, scale, generator):
        settings = model.check_sampling(guidance_scale=guidance_scale, **self.sampling_kwargs)
        state = model.prepare_image_generation(**inputs, settings=settings, generator=generator)
        decoder = model.start_image_tokens(state, num_steps=settings.num_steps)
        positions, _ = decoder.plan(0)
        # Fluid's step draws the tokens itself, guided at `scale`: (B, M, D) latents or (B, M) ids
        return model.image_generation_step(state, decoder.tokens, decoder.known, positions, scale)

    def cached_and_uncached(self, model):
        if not model.config.is_causal:
            return
        inputs = self.forward_inputs(model, [0, 1])
        text, mask, image = inputs["input_ids"], inputs["attention_mask"], inputs["image_tokens"]
        full = model(input_ids=text, attention_mask=mask, image_tokens=image, return_loss=False, use_cache=False)
        embeds = model.model.input_embeddings(image)  # [START], t0 .. t14
        encoder = model.get_encoder()(text, mask)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        steps = []
        for start, end in [(0, 5)] + [(t, t + 1) for t in range(5, image.shape[1])]:
            step = model.model(
                inputs_embeds=embeds[:, start:end], attention_mask=mask, encoder_outputs=encoder, cache=cache
            )
            steps.append(step.last_hidden_state)
        yield "forward", torch.cat(steps, 1), full.last_hidden_state
        # the sampler: the backbone outputs its head reads at each step (through the preallocated cache) are those of
        # one uncached pass over the drawn tokens
        head = model.diffusion_head if model.config.is_continuous else model.lm_head
        seen = []

        def record(module, args):
            hidden = args[-1] if model.config.is_continuous else args[0]  # (B, C) condition or (B, 1, C)
            # the diffusion head reads one condition (or its leading rows: views of it) for all its steps
            if not seen or hidden.data_ptr() != seen[-1].data_ptr():
                seen.append(hidden)

        hook = head.register_forward_pre_hook(record)
        try:
            tokens = self.sample(model, seeded(0), **self.generation_inputs(model, [0, 1]))
        finally:
            hook.remove()
        cached = torch.stack([hidden.reshape(2, -1) for hidden in seen], 1)  # (B, N, C)
        uncached = model(
            input_ids=text, attention_mask=mask, image_tokens=tokens, return_loss=False, use_cache=False
        ).last_hidden_state
        yield "sample_image_tokens", cached, uncached

    def bad_sampling_inputs(self, model):
        config = model.config
        cases = [
            ({"negative_input_ids": torch.zeros(1, 5, dtype=torch.long)}, "negative_input_ids"),
            ({"guidance_schedule": "cosine"}, "guidance_schedule"),
            ({"num_inference_steps": config.num_image_tokens + 1}, "num_inference_steps"),
        ]
        if config.is_causal:
            cases.append(({"num_inference_steps": 4}, "num_inference_steps"))
        else:
            cases.append(({"num_inference_steps": 0}, "num_inference_steps"))
        if config.is_continuous:
            cases += [
                ({"top_k": 4}, "top_k"),
                ({"do_sample": False}, "do_sample"),
                ({"temperature": -1.0}, "temperature"),
                ({"num_diffusion_steps": 0}, "num_diffusion_steps"),
                ({"num_diffusion_steps": config.num_train_timesteps + 1}, "num_diffusion_steps"),
            ]
        else:
            cases += [({"temperature": 0}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p")]
        return cases

    def bad_forward_inputs(self, model, inputs):
        config, image = model.config, inputs["image_tokens"]
        cases = [
            ({"image_tokens": image[:, :8]}, "image_tokens"),
            ({"input_ids": None}, "input_ids"),
            ({"input_ids": inputs["input_ids"][:1]}, "one caption per image"),
        ]
        if config.is_continuous:
            cases.append(({"image_tokens": image.argmax(-1)}, "image_tokens"))
        else:
            cases.append(({"image_tokens": torch.full_like(image, config.image_vocab_size)}, "ids must be in"))
        if config.is_causal:
            cases.append(({"mask": torch.ones(image.shape[:2], dtype=torch.bool)}, "mask"))
        else:
            cases.append(({"mask": torch.ones(image.shape[:2])}, "mask"))
        return cases


class TestFluidContinuousRandomPrior(_FluidPrior):
    token_type, generation_order = "continuous", "random"


class TestFluidContinuousRasterPrior(_FluidPrior):
    token_type, generation_order = "continuous", "raster"


class TestFluidDiscreteRandomPrior(_FluidPrior):
    token_type, generation_order = "discrete", "random"


class TestFluidDiscreteRasterPrior(_FluidPrior):
    token_type, generation_order = "discrete", "raster"
