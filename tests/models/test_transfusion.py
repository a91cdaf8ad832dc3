"""Transfusion: the mask cell by cell, the loss, LM mode and mode switching, errors; the shared prior behaviour
(save / load, batch == singles, seeds, cached-prefix denoising, guidance, bad inputs) in `TestTransfusionPrior*`."""

import functools

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn
from transformers import DynamicCache

from hf_t2i.image_processing import T2IImageProcessor
from hf_t2i.layers import sincos_2d_embedding
from hf_t2i.layers.masks import causal_with_bidirectional_spans, image_span_ids
from hf_t2i.models.transfusion import (
    TransfusionConfig,
    TransfusionForConditionalGeneration,
    TransfusionModel,
    TransfusionProcessor,
    add_image_tokens,
)
from hf_t2i.tokenization import train_bpe_tokenizer

from .prior_tester import PriorTesterMixin


CAPTIONS = ["a red circle", "two blue squares", "a green triangle left of a red square", "three yellow circles"]
TINY_VAE = {
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 8],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 16,
    "scaling_factor": 1.0,
}


@functools.cache
def tiny_processor() -> TransfusionProcessor:
    tokenizer = add_image_tokens(train_bpe_tokenizer(CAPTIONS * 20, vocab_size=300, model_max_length=12))
    return TransfusionProcessor(T2IImageProcessor(image_size=16), tokenizer, num_image_tokens=16)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def tiny_config(processor, **kwargs) -> TransfusionConfig:
    defaults = dict(
        vae_config=TINY_VAE,
        image_size=16,  # latent 8x8, patch 2 -> 4x4 = 16 patches
        patch_size=2,
        vocab_size=len(processor.tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        unet_channels=8,
        unet_norm_groups=4,
        **processor.special_token_ids(),
    )
    defaults.update(kwargs)
    return TransfusionConfig(**defaults)


@pytest.fixture(scope="module")
def linear_model(processor):
    torch.manual_seed(0)
    return TransfusionForConditionalGeneration(tiny_config(processor)).eval()


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def latents_like(model, n, seed=0):
    c = model.config
    return torch.randn(n, c.latent_channels, c.latent_size, c.latent_size, generator=seeded(seed))


# -- mask -----------------------------------------------------------------------------------------------------------
# t = text, B = <boi>, i = image patch, E = <eoi>; two images of 2 patches (a toy N = 2).
MASK_SEQUENCE = "t B i i E t B i i E"
MASK_EXPECTED = """
1 0 0 0 0 0 0 0 0 0
1 1 0 0 0 0 0 0 0 0
1 1 1 1 0 0 0 0 0 0
1 1 1 1 0 0 0 0 0 0
1 1 1 1 1 0 0 0 0 0
1 1 1 1 1 1 0 0 0 0
1 1 1 1 1 1 1 0 0 0
1 1 1 1 1 1 1 1 1 0
1 1 1 1 1 1 1 1 1 0
1 1 1 1 1 1 1 1 1 1
"""


def expected_mask() -> torch.Tensor:
    rows = [[int(x) for x in line.split()] for line in MASK_EXPECTED.strip().splitlines()]
    return torch.tensor(rows, dtype=torch.bool)


def test_mask_is_causal_plus_bidirectional_within_each_image_cell_by_cell():
    is_image = torch.tensor([[tok == "i" for tok in MASK_SEQUENCE.split()]])
    mask = causal_with_bidirectional_spans(image_span_ids(is_image))
    assert mask.shape == (1, 1, 10, 10)
    expected = expected_mask()
    for i in range(10):
        for j in range(10):
            assert mask[0, 0, i, j] == expected[i, j], (i, j)


def test_mask_with_left_padding_and_cache():
    # row 0: two pads then "t B i i"; row 1: "t t B i i E"
    is_image = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    padding = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    mask = causal_with_bidirectional_spans(image_span_ids(is_image), key_padding_mask=padding)[:, 0]
    assert not mask[0, 2:, :2].any()  # nobody sees a pad
    assert mask[0, 0, 0] and not mask[0, 0, 1]  # a pad query only sees itself (no empty softmax)
    assert mask[0, 4, 5] and mask[0, 5, 4]  # bidirectional inside the image
    assert mask[1, 3, 4] and not mask[1, 2, 3] and not mask[1, 4, 5]
    # new positions after 3 cached ones see all of them (the last cached one is padding)
    cached = causal_with_bidirectional_spans(
        image_span_ids(is_image[:1, 2:]), past_length=3, key_padding_mask=torch.tensor([[1, 1, 0, 1, 1, 1, 1]])
    )[0, 0]
    assert cached[:, :2].all() and not cached[:, 2].any()
    assert cached[2:, 5:].all() and not cached[0, 4:].any()


def test_model_attends_causally_and_bidirectionally_inside_images(linear_model, processor):
    model, n = linear_model, linear_model.config.num_image_tokens
    batch = processor.build_training_batch(["a red circle"], latents_like(model, 1), image_first=[True])
    ids, latents = batch["input_ids"], batch["image_latents"]
    first_patch, last_patch = 2, 1 + n  # <s> <boi> i ... i <eoi> caption </s>
    base = model.model(ids, image_latents=latents, use_cache=False).last_hidden_state

    changed = latents.clone()
    changed[..., -1, -1] += 1.0  # only the last patch's values change
    out = model.model(ids, image_latents=changed, use_cache=False).last_hidden_state
    assert not torch.allclose(out[0, first_patch], base[0, first_patch])  # earlier patch sees the later one
    assert torch.allclose(out[0, :first_patch], base[0, :first_patch])  # the text before does not
    assert not torch.allclose(out[0, last_patch + 2], base[0, last_patch + 2])  # the caption after does

    other = ids.clone()
    other[0, -2] = (other[0, -2] + 1) % 250 + 3  # a later caption token
    out = model.model(other, image_latents=latents, use_cache=False).last_hidden_state
    assert torch.allclose(out[0, :-2], base[0, :-2], atol=1e-6)


# -- loss -----------------------------------------------------------------------------------------------------------
def test_loss_is_lm_plus_lambda_times_per_image_ddpm(linear_model, processor):
    model = linear_model
    batch = processor.build_training_batch(CAPTIONS[:3], latents_like(model, 3), image_first=[False, True, False])
    noise, timesteps = latents_like(model, 3, seed=1), torch.tensor([10, 500, 999])
    out = model(**batch, noise=noise, timesteps=timesteps)
    assert torch.allclose(out.loss, out.lm_loss + 5.0 * out.diffusion_loss)

    # the diffusion term: noise added to the latent before patchifying with the cosine DDPM schedule
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    noisy = scheduler.add_noise(batch["image_latents"], noise, timesteps)
    pred = model(batch["input_ids"], batch["attention_mask"], image_latents=noisy, timesteps=timesteps).noise_pred
    per_image = ((pred - noise) ** 2).flatten(1).mean(1)
    assert torch.allclose(out.diffusion_loss, per_image.mean(), atol=1e-6)

    # the LM term: next-token CE on text targets only (placeholders, <eoi> and pads are ignored)
    logits = model(batch["input_ids"], batch["attention_mask"], image_latents=noisy, timesteps=timesteps).logits
    labels = batch["labels"]
    assert (labels[batch["input_ids"] == processor.image_token_id] == -100).all()
    assert (labels[batch["input_ids"] == processor.eoi_token_id] == -100).all()
    full = model.lm_head(
        model.model(
            batch["input_ids"], batch["attention_mask"], image_latents=noisy, timesteps=timesteps, use_cache=False
        ).last_hidden_state
    )
    ce = nn.functional.cross_entropy(full[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert torch.allclose(out.lm_loss, ce, atol=1e-5)
    assert logits.shape[:2] == batch["input_ids"].shape


def test_v_prediction_loss_targets_the_velocity_and_its_scheduler_samples_it(processor):
    torch.manual_seed(0)
    model = TransfusionForConditionalGeneration(tiny_config(processor, prediction_type="v_prediction")).eval()
    batch = processor.build_training_batch(CAPTIONS[:2], latents_like(model, 2), image_first=[False, False])
    noise, timesteps = latents_like(model, 2, seed=1), torch.tensor([50, 900])
    out = model(**batch, noise=noise, timesteps=timesteps)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    clean = batch["image_latents"]
    noisy = scheduler.add_noise(clean, noise, timesteps)
    pred = model(batch["input_ids"], batch["attention_mask"], image_latents=noisy, timesteps=timesteps).noise_pred
    bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    velocity = bar.sqrt() * noise - (1 - bar).sqrt() * clean
    assert torch.allclose(out.diffusion_loss, ((pred - velocity) ** 2).flatten(1).mean(1).mean(), atol=1e-6)
    assert not torch.allclose(out.diffusion_loss, ((pred - noise) ** 2).flatten(1).mean(1).mean(), atol=1e-3)

    # the model's schedulers read it; one that expects the noise is refused with the reason
    assert model.make_scheduler("ddim").config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match=r"prediction_type='epsilon'.*predicts 'v_prediction'"):
        model.check_scheduler(DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"))
    inputs = processor.image_generation_inputs(["a red circle"])
    latents = model.generate_image_latents(**inputs, num_inference_steps=3, generator=seeded(0))
    assert latents.shape == (1, model.config.latent_channels, 8, 8) and torch.isfinite(latents).all()


def test_position_embedding_init_sincos_2d_starts_the_patch_positions_from_the_grid_table(processor, tmp_path):
    model = TransfusionForConditionalGeneration(tiny_config(processor, position_embedding_init="sincos_2d"))
    positions = model.model.patch_positions
    table = positions(torch.arange(16))  # the 4 x 4 patch grid in raster order
    assert torch.equal(table, sincos_2d_embedding(4, 4, 32)) and positions.row.weight.requires_grad
    default = TransfusionForConditionalGeneration(tiny_config(processor)).model.patch_positions
    assert default.row.weight.std() < 0.05  # the default: N(0, initializer_range)
    with torch.no_grad():
        positions.row.weight.add_(0.5)  # as after training: a checkpoint loads its tables, it is not initialised again
    model.save_pretrained(tmp_path)
    reloaded = TransfusionForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.config.position_embedding_init == "sincos_2d"
    assert torch.equal(reloaded.model.patch_positions.row.weight, positions.row.weight)

    with pytest.raises(ValueError, match="`position_embedding_init` must be one of .*'sincos'"):
        tiny_config(processor, position_embedding_init="sincos")
    with pytest.raises(ValueError, match="divisible by 4, got 34"):
        tiny_config(processor, position_embedding_init="sincos_2d", hidden_size=34, num_attention_heads=2)


def test_training_timesteps_respect_noise_limits_and_the_generator(linear_model):
    latents = latents_like(linear_model, 64)
    limits = torch.tensor([500] * 32 + [1000] * 32)
    _, t, noise = linear_model.sample_training_noise(latents, timestep_limits=limits, generator=seeded(0))
    assert t[:32].max() < 500 and t[32:].max() >= 500
    _, t2, noise2 = linear_model.sample_training_noise(latents, timestep_limits=limits, generator=seeded(0))
    assert torch.equal(t, t2) and torch.equal(noise, noise2)


@pytest.mark.parametrize(
    ("sampling", "share_above_600", "mean"),
    [("high_noise", 0.64, 667), ("high_noise_quadratic", 0.784, 750)],  # density 2u: 1 - 0.6^2; 3u^2: 1 - 0.6^3
)
def test_high_noise_timestep_sampling_moves_training_to_high_noise_and_keeps_limits(
    processor, sampling, share_above_600, mean
):
    model = TransfusionForConditionalGeneration(tiny_config(processor, timestep_sampling=sampling)).train()
    latents = latents_like(model, 4000)
    _, t, _ = model.sample_training_noise(latents, generator=seeded(0))
    assert abs((t >= 600).float().mean() - share_above_600) < 0.02  # uniform: 0.40
    assert abs(t.float().mean() - mean) < 25  # uniform: 500
    _, limited, _ = model.sample_training_noise(latents, timestep_limits=torch.full((4000,), 500), generator=seeded(0))
    assert limited.max() < 500 and abs((limited >= 300).float().mean() - share_above_600) < 0.02
    _, held_out, _ = model.eval().sample_training_noise(latents, generator=seeded(0))
    assert 0.37 < (held_out >= 600).float().mean() < 0.43  # evaluation draws uniformly: held-out losses compare
    with pytest.raises(ValueError, match="`timestep_sampling` must be one of .*'late'"):
        tiny_config(processor, timestep_sampling="late")


def test_a_few_steps_of_training_lower_the_loss(processor):
    torch.manual_seed(0)
    model = TransfusionForConditionalGeneration(tiny_config(processor)).train()
    batch = processor.build_training_batch(CAPTIONS, latents_like(model, 4), image_first=[False, True] * 2)
    noise, timesteps = latents_like(model, 4, seed=2), torch.tensor([100, 300, 600, 900])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(**batch, noise=noise, timesteps=timesteps).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert all(p.grad is None for p in model.vae.parameters())  # the VAE stays frozen


# -- LM mode and mode switching -------------------------------------------------------------------------------------
def test_captioning_with_stock_generate_matches_the_package_loop(linear_model, processor):
    image = (torch.rand(16, 16, 3, generator=seeded(0)).numpy() * 255).astype("uint8")
    inputs = processor(images=[image, image[::-1]], text=["", "a"])
    assert inputs["input_ids"][0, 1] == processor.boi_token_id or inputs["input_ids"][0, 2] == processor.boi_token_id
    ours = linear_model.generate_text(**inputs, max_new_tokens=6, do_sample=False)
    stock = linear_model.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    assert torch.equal(ours, stock[:, : ours.shape[1]])
    # the image conditions the caption
    other = processor(images=[image[:, ::-1], image[::-1]], text=["", "a"])
    logits = linear_model(**inputs).logits[0, -1]
    assert not torch.allclose(logits, linear_model(**other).logits[0, -1])


def test_lm_mode_cached_equals_uncached(linear_model, processor):
    batch = processor.build_training_batch(CAPTIONS[:2], latents_like(linear_model, 2), image_first=[True, True])
    ids, mask, latents = batch["input_ids"], batch["attention_mask"], batch["image_latents"]
    full = linear_model(ids, mask, image_latents=latents, use_cache=False).logits
    prefix = 2 + linear_model.config.num_image_tokens + 1  # <s> <boi> image <eoi>
    cache = DynamicCache(config=linear_model.config)
    steps = [linear_model(ids[:, :prefix], mask[:, :prefix], image_latents=latents, cache=cache).logits]
    for t in range(prefix, ids.shape[1]):
        steps.append(linear_model(ids[:, t : t + 1], mask[:, : t + 1], cache=cache).logits)
    incremental = torch.cat(steps, 1)
    real = mask.bool()
    assert torch.allclose(full[real], incremental[real], atol=1e-5)


def test_text_continuation_is_seeded(linear_model, processor):
    inputs = processor(text=["a red", "two"])
    a = linear_model.generate_text(**inputs, max_new_tokens=5, generator=seeded(0), top_k=20)
    b = linear_model.generate_text(**inputs, max_new_tokens=5, generator=seeded(0), top_k=20)
    assert torch.equal(a, b)
    assert processor.boi_token_id not in a  # LM-only mode never opens an image


def test_interleaved_generation_switches_to_diffusion_at_boi(processor):
    torch.manual_seed(0)
    model = TransfusionForConditionalGeneration(tiny_config(processor)).eval()
    config = model.config
    head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)  # make <boi> the greedy choice
    head.weight.data.copy_(model.lm_head.weight.data)
    head.bias.data.zero_()
    head.bias.data[config.boi_token_id] = 100.0
    model.lm_head = head
    prompt = processor(text=["a red circle"])
    out = model.generate_interleaved(
        **prompt, max_new_tokens=3, num_inference_steps=3, guidance_scale=2.0, do_sample=False, generator=seeded(5)
    )
    seq, n = out.sequences[0].tolist(), config.num_image_tokens
    assert seq[0] == config.boi_token_id
    assert seq[1 : 1 + n] == [config.image_token_id] * n and seq[1 + n] == config.eoi_token_id
    assert config.boi_token_id not in seq[2 + n :]  # max_images=1: LM mode afterwards
    assert len(seq) == n + 4  # 3 sampled tokens, one of which opened the image
    # the image is the one text -> image draws after the same context with the same seed
    direct = model.generate_image_latents(
        input_ids=torch.cat([prompt["input_ids"], torch.tensor([[config.boi_token_id]])], 1),
        num_inference_steps=3,
        guidance_scale=2.0,
        generator=seeded(5),
    )
    assert torch.allclose(out.image_latents[0], direct, atol=1e-5)


# -- errors ---------------------------------------------------------------------------------------------------------
def test_bad_config_errors(processor):
    with pytest.raises(ValueError, match="not a multiple of `patch_size`"):
        tiny_config(processor, image_size=16, patch_size=3)
    with pytest.raises(ValueError, match="VAE's downsampling factor"):
        tiny_config(processor, image_size=15)
    with pytest.raises(ValueError, match="`boi_token_id` is required"):
        tiny_config(processor, boi_token_id=None)
    with pytest.raises(ValueError, match="`eoi_token_id` is required"):
        tiny_config(processor, eoi_token_id=None)
    with pytest.raises(ValueError, match="distinct"):
        tiny_config(processor, eoi_token_id=processor.boi_token_id)
    with pytest.raises(ValueError, match="patch_encoder"):
        tiny_config(processor, patch_encoder="conv")
    with pytest.raises(ValueError, match="`prediction_type` must be one of"):
        tiny_config(processor, prediction_type="sample")


def test_encode_images_checks_the_size(linear_model):
    with pytest.raises(ValueError, match="pixel_values"):
        linear_model.encode_images(torch.zeros(1, 3, 20, 20))


def test_processor_requires_the_image_tokens(processor):
    plain = train_bpe_tokenizer(CAPTIONS * 20, vocab_size=300, model_max_length=12)
    with pytest.raises(ValueError, match="lacks the image tokens"):
        TransfusionProcessor(T2IImageProcessor(image_size=16), plain, num_image_tokens=16)
    with pytest.raises(ValueError, match="tokens long"):
        processor.image_generation_inputs(["a red circle " * 10])


# -- the shared prior behaviour -------------------------------------------------------------------------------------
PROMPTS = ["a red circle", "a green triangle left of a red square", "two blue squares"]  # of different lengths


def renamed_negative(inputs) -> dict[str, torch.Tensor]:
    return {"negative_input_ids": inputs["input_ids"], "negative_attention_mask": inputs["attention_mask"]}


class _TransfusionPrior(PriorTesterMixin):
    """The shared prior behaviour (tests/models/prior_tester.py) on a 2-layer Transfusion (4x4 latent patches) with one
    patch encoder and one scheduler; the cached-prefix check runs both schedulers."""

    model_class = TransfusionForConditionalGeneration
    base_model_class = TransfusionModel
    sampler_name = "generate_image_latents"
    negative_argument = None  # the default unconditional branch is the caption-dropped prompt `<s> </s> <boi>`
    image_size = 16
    patch_encoder: str
    scheduler: str

    @property
    def sampling_kwargs(self):
        return {"num_inference_steps": 3, "scheduler": self.scheduler}

    def build_model(self, **config_overrides):
        torch.manual_seed(0)
        config = tiny_config(tiny_processor(), patch_encoder=self.patch_encoder, **config_overrides)
        return TransfusionForConditionalGeneration(config).eval()

    @staticmethod
    def latents(model, seeds):
        return torch.cat([latents_like(model, 1, seed=seed) for seed in seeds])

    def forward_inputs(self, model, rows):
        captions, first = [CAPTIONS[row % len(CAPTIONS)] for row in rows], [row % 2 == 1 for row in rows]
        batch = tiny_processor().build_training_batch(captions, self.latents(model, rows), image_first=first)
        noise = self.latents(model, [10 + row for row in rows])
        return {**batch, "noise": noise, "timesteps": torch.tensor([(100 + 300 * row) % 1000 for row in rows])}

    def forward_outputs(self, model, inputs):
        out = model(**inputs)
        valid = inputs["labels"][:, 1:] != -100  # the logits of the text targets, back at their positions
        logits = out.logits.new_zeros(*valid.shape, out.logits.shape[-1])
        logits[valid] = out.logits
        return {"loss": out.loss, "logits": logits, "noise_pred": out.noise_pred}

    def generation_inputs(self, model, rows):
        return dict(tiny_processor().image_generation_inputs([PROMPTS[row] for row in rows]))

    def negative_inputs(self, model):
        return renamed_negative(tiny_processor().image_generation_inputs(["three yellow circles"]))

    def default_negative_inputs(self, model):
        return renamed_negative(tiny_processor().image_generation_inputs([""]))

    def sample_shape(self, model, batch):
        return model.image_latent_shape(batch)

    def deterministic_kwargs(self, model, rows):
        return {"latents": self.latents(model, [50 + row for row in rows]), "scheduler": "ddim"}

    def first_prediction(self, model, state, generator):
        latents = torch.randn(model.image_latent_shape(state.batch_size), generator=generator)
        return model.image_generation_step(state, state.guidance.double(latents), torch.tensor(500))

    def cached_and_uncached(self, model):
        inputs = self.generation_inputs(model, [0, 1])
        assert inputs["attention_mask"][0, 0] == 0  # the short prompt is left-padded
        for scheduler in ("ddpm", "ddim"):
            kwargs = dict(guidance_scale=3.0, num_inference_steps=4, scheduler=scheduler)
            cached = model.generate_image_latents(**inputs, generator=seeded(1), **kwargs)
            full = model.generate_image_latents(**inputs, generator=seeded(1), use_cache=False, **kwargs)
            yield f"{scheduler} cached prefix", cached, full

    def bad_sampling_inputs(self, model):
        processor = tiny_processor()
        no_boi = processor(text=["a red circle"])  # LM-mode prompt: does not end with <boi>
        return [
            ({"num_inference_steps": -1}, "num_inference_steps"),
            ({"num_inference_steps": 0}, "num_inference_steps"),
            ({"input_ids": no_boi["input_ids"], "attention_mask": no_boi["attention_mask"]}, "boi_token_id"),
            (renamed_negative(no_boi), "negative_input_ids"),
            ({"input_ids": no_boi["input_ids"][0]}, "input_ids"),
            ({"latents": torch.zeros(model.image_latent_shape(2))}, "latents"),
            ({"scheduler": "euler"}, "scheduler"),
        ]

    def bad_forward_inputs(self, model, inputs):
        config, ids = model.config, inputs["input_ids"]
        no_boi, no_eoi, short = ids.clone(), ids.clone(), ids.clone()
        no_boi[no_boi == config.boi_token_id] = 5
        no_eoi[no_eoi == config.eoi_token_id] = 5
        short[0, (ids[0] == config.image_token_id).nonzero()[-1]] = 5  # row 0's image one placeholder short
        return [
            ({"image_latents": None}, "no `image_latents`"),
            # without labels: with them, the training noise is added first and fails on the shapes (RuntimeError)
            ({"image_latents": self.latents(model, [0, 1, 2]), "labels": None}, "shape"),
            ({"input_ids": no_boi}, "not preceded by `boi_token_id`"),
            ({"input_ids": no_eoi}, "not followed by `eoi_token_id`"),
            ({"input_ids": short}, f"exactly {config.num_image_tokens}"),
            ({"labels": inputs["labels"][:, :-1]}, "labels"),
            ({"timesteps": torch.tensor([0, config.num_train_timesteps])}, "timesteps"),
        ]


class TestTransfusionPriorLinearDDPM(_TransfusionPrior):
    patch_encoder, scheduler = "linear", "ddpm"


class TestTransfusionPriorUNetDDIM(_TransfusionPrior):
    patch_encoder, scheduler = "unet", "ddim"
