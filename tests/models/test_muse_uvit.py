"""Muse with aMUSEd's U-ViT backbone (`MuseConfig(backbone="uvit")`): config checks, shapes, what the backbone reads
(no padding mask, the pooled text and micro-conditions change the logits), batch == singles, save -> load -> same
outputs and draws, the aMUSEd sampling recipe and its errors. Parity against diffusers' own classes is in
tests/conversion/test_amused.py (marked `convert`); the tiny parts are built here and shared with it."""

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTokenizer

from hf_t2i import MusePipeline, MuseProcessor, T2IImageProcessor
from hf_t2i.generation.masked import ConfidenceOrder
from hf_t2i.models.image_tokenizers import DiffusersVQConfig
from hf_t2i.models.muse import MuseConfig, MuseForConditionalGeneration
from hf_t2i.models.muse.generation_muse import AmusedConfidenceOrder


WORDS = ["a", "red", "blue", "circle", "square", "left", "of", "photo", "cat"]
TEXT_LENGTH = 12  # the CLIP tokenizer's model_max_length (aMUSEd: 77)


def clip_tokenizer() -> CLIPTokenizer:
    """A tiny CLIP BPE tokenizer built in code: every letter, alone and word-final, and each word in WORDS."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges = []
    for c in sorted({c for w in WORDS for c in w}):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    for word in WORDS:
        piece = word[0]
        for i, c in enumerate(word[1:], 1):
            last = i == len(word) - 1
            merges.append((piece, c + "</w>" if last else c))
            piece += c + ("</w>" if last else "")
            vocab.setdefault(piece, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=TEXT_LENGTH)


def clip_text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=12,
        max_position_embeddings=TEXT_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def vqmodel_config(sample_size: int = 16) -> dict:
    """A diffusers `VQModel` with aMUSEd's options (codes looked up by the model, no mid-block attention): factor 2."""
    return dict(
        sample_size=sample_size,
        block_out_channels=[8, 8],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=32,
        norm_num_groups=4,
        lookup_from_codebook=True,
        force_upcast=True,
        mid_block_add_attention=False,
    )


def tiny_uvit_config(**kwargs) -> MuseConfig:
    """An 8 x 8 grid of 32 codes; widths 16 (embeddings), 24 (stages), 32 (transformer) so every mapper exists."""
    defaults = dict(
        vq_config=DiffusersVQConfig(vqmodel_config=vqmodel_config(), output_range=[0.0, 1.0]),
        text_encoder_config=clip_text_config(),
        text_seq_len=TEXT_LENGTH,
        backbone="uvit",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        layer_norm_eps=1e-6,
        embedding_size=16,
        conv_channels=24,
        num_res_blocks=2,
        conv_attention_heads=2,
        downsample=True,
        micro_conditioning_size=4,
        use_bias=True,
        sampling_recipe="amused",
        choice_temperature=2.0,
        num_inference_steps=4,
    )
    defaults.update(kwargs)
    return MuseConfig(**defaults)


def tiny_uvit_model(**kwargs) -> MuseForConditionalGeneration:
    torch.manual_seed(0)
    model = MuseForConditionalGeneration(tiny_uvit_config(**kwargs)).eval()
    with torch.no_grad():  # weights ~ N(0, 0.1), norms, GRN and biases off their init: a wrong mapping shows
        for name, p in model.named_parameters():
            if name.startswith(("model.backbone", "lm_head", "model.token_embeddings")):
                p.mul_(5) if p.ndim > 1 else p.add_(torch.randn_like(p) * 0.1)
    return model


def tiny_pipeline(**kwargs) -> MusePipeline:
    model = tiny_uvit_model(**kwargs)
    processor = MuseProcessor(T2IImageProcessor(image_size=model.config.image_size), clip_tokenizer())
    pipe = MusePipeline(model=model, processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_inputs(pipe, prompts):
    encoded = pipe.processor(text=prompts)
    return encoded["input_ids"], encoded["attention_mask"]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


# -- config ----------------------------------------------------------------------------------------------------------
def test_config_defaults_keep_the_transformer_backbone_and_maskgit_recipe():
    config = MuseConfig()
    assert (config.backbone, config.sampling_recipe) == ("transformer", "maskgit")
    restored = MuseConfig.from_dict(tiny_uvit_config().to_dict())
    assert (restored.backbone, restored.downsample, restored.image_grid_size) == ("uvit", True, 8)
    assert isinstance(restored.vq_config, DiffusersVQConfig) and restored.text_encoder_config.projection_dim == 12


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(backbone="unet"), "`backbone` must be one of"),
        (dict(sampling_recipe="random"), "`sampling_recipe` must be one of"),
        (dict(text_encoder_config=None), "needs `text_encoder_config` to be a `CLIPTextConfig`"),
        (dict(conv_channels=25), "`conv_channels` (25) must be divisible by `conv_attention_heads` (2)"),
        (dict(micro_conditioning_size=3), "`micro_conditioning_size` must be even"),
        (dict(micro_conditioning_crop_coord=[0]), "`micro_conditioning_crop_coord` must be two numbers"),
        (dict(downsample="yes"), "`downsample` must be a bool"),
    ],
)
def test_bad_uvit_configs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("`", "`")):
        tiny_uvit_config(**kwargs)


def test_an_odd_grid_cannot_be_downsampled():
    vq = DiffusersVQConfig(vqmodel_config=vqmodel_config(sample_size=14))  # 7 x 7 grid
    with pytest.raises(ValueError, match="grid is 7"):
        tiny_uvit_config(vq_config=vq)
    assert tiny_uvit_config(vq_config=vq, downsample=False).image_grid_size == 7


# -- forward ---------------------------------------------------------------------------------------------------------
def test_forward_shapes_and_a_loss_on_the_masked_positions(pipe):
    model = pipe.model
    ids, mask = text_inputs(pipe, ["a red circle", "a cat"])
    codes = torch.randint(0, 32, (2, 64), generator=seeded(0))
    out = model(input_ids=ids, attention_mask=mask, image_token_ids=codes, generator=seeded(1))
    assert out.logits.shape == (2, 64, 32) and out.mask.shape == (2, 64)
    assert torch.isfinite(out.loss) and out.mask.sum() >= 2
    hidden = model.model(ids, image_token_ids=codes, output_hidden_states=True)
    assert hidden.last_hidden_state.shape == (2, 64, 24)  # the up stage's width, on the full grid
    assert len(hidden.hidden_states) == 3 and hidden.hidden_states[0].shape == (2, 16, 32)  # 4 x 4 after downsampling
    with pytest.raises(ValueError, match="`output_attentions` is not supported by the U-ViT"):
        model.model(ids, image_token_ids=codes, output_attentions=True)


def test_the_padding_mask_is_not_read_but_the_pooled_text_and_micro_conditions_are(pipe):
    model = pipe.model
    ids, mask = text_inputs(pipe, ["a red circle"])
    codes = torch.randint(0, 32, (1, 64), generator=seeded(0))
    with torch.no_grad():
        logits = model(ids, mask, image_token_ids=codes, return_loss=False).logits
        unmasked = model(ids, torch.ones_like(mask), image_token_ids=codes, return_loss=False).logits
        torch.testing.assert_close(logits, unmasked, rtol=0, atol=0)  # aMUSEd attends to the padding too
        text = model.model.encode_text(ids)
        other_pool = (text.last_hidden_state, text.pooler_output + 1)
        pooled = model(encoder_outputs=other_pool, image_token_ids=codes, return_loss=False).logits
        older = torch.tensor([[16.0, 16.0, 0.0, 0.0, 2.0]])
        micro = model(ids, image_token_ids=codes, micro_conditioning=older, return_loss=False).logits
        default = torch.tensor([[16.0, 16.0, 0.0, 0.0, 6.0]])
        same = model(ids, image_token_ids=codes, micro_conditioning=default, return_loss=False).logits
    assert (pooled - logits).abs().max() > 1e-3 and (micro - logits).abs().max() > 1e-3
    torch.testing.assert_close(same, logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"`micro_conditioning` must be \(1, 5\)"):
        model(ids, image_token_ids=codes, micro_conditioning=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="pooled text"):
        model(encoder_outputs=(text.last_hidden_state,), image_token_ids=codes, return_loss=False)


def test_batch_equals_singles(pipe):
    model = pipe.model
    ids, mask = text_inputs(pipe, ["a red circle", "a photo of a cat", "blue square"])
    codes = torch.randint(0, 32, (3, 64), generator=seeded(2))
    masked = torch.rand(3, 64, generator=seeded(3)) < 0.5
    with torch.no_grad():
        batch = model(ids, mask, image_token_ids=codes, mask=masked, return_loss=False).logits
        singles = torch.cat(
            [
                model(
                    ids[i : i + 1], image_token_ids=codes[i : i + 1], mask=masked[i : i + 1], return_loss=False
                ).logits
                for i in range(3)
            ]
        )
    torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-5)


def test_a_masked_code_is_never_read(pipe):
    model = pipe.model
    ids, _ = text_inputs(pipe, ["a cat"])
    codes = torch.randint(0, 32, (1, 64), generator=seeded(4))
    masked = torch.zeros(1, 64, dtype=torch.bool)
    masked[0, 10] = True
    changed = codes.clone()
    changed[0, 10] = (codes[0, 10] + 1) % 32
    with torch.no_grad():
        a = model(ids, image_token_ids=codes, mask=masked, return_loss=False).logits
        b = model(ids, image_token_ids=changed, mask=masked, return_loss=False).logits
        c = model(ids, image_token_ids=changed, return_loss=False).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-4


# -- save / load, sampling -----------------------------------------------------------------------------------------
def test_save_load_round_trip_keeps_logits_draws_and_pixels(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "uvit")
    loaded = MusePipeline.from_pretrained(tmp_path / "uvit")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.model.config.backbone == "uvit" and loaded.model.config.sampling_recipe == "amused"
    reloaded = MuseForConditionalGeneration.from_pretrained(tmp_path / "uvit").eval()
    ids, mask = text_inputs(pipe, ["a red circle"])
    codes = torch.randint(0, 32, (1, 64), generator=seeded(5))
    with torch.no_grad():
        expected = pipe.model(ids, mask, image_token_ids=codes, return_loss=False).logits
        for model in (loaded.model, reloaded):
            torch.testing.assert_close(model(ids, mask, image_token_ids=codes, return_loss=False).logits, expected)
    call = dict(guidance_scale=3.0, output_type="latent", generator=seeded(6))
    drawn = pipe("a red circle", **call).images
    torch.testing.assert_close(loaded("a red circle", **{**call, "generator": seeded(6)}).images, drawn)
    torch.testing.assert_close(loaded.model.decode_image_tokens(drawn), pipe.model.decode_image_tokens(drawn))


def test_amused_recipe_is_seeded_guided_and_keeps_each_images_draws_in_a_batch(pipe):
    first = pipe(["a red circle", "a cat"], guidance_scale=3.0, output_type="latent", generator=seeded(7)).images
    again = pipe(["a red circle", "a cat"], guidance_scale=3.0, output_type="latent", generator=seeded(7)).images
    assert first.shape == (2, 64) and torch.equal(first, again) and first.min() >= 0 and first.max() < 32
    unguided = pipe(["a red circle", "a cat"], output_type="latent", generator=seeded(7)).images
    assert not torch.equal(first, unguided)
    singles = [
        pipe(p, guidance_scale=3.0, output_type="latent", generator=seeded(s)).images
        for p, s in (("a red circle", 8), ("a cat", 9))
    ]
    listed = pipe(
        ["a red circle", "a cat"], guidance_scale=3.0, output_type="latent", generator=[seeded(8), seeded(9)]
    ).images
    torch.testing.assert_close(listed, torch.cat(singles), rtol=0, atol=0)


def test_pixels_come_from_the_vqmodel_in_minus_one_to_one(pipe):
    images = pipe("a red circle", output_type="pt", generator=seeded(10)).images
    assert images.shape == (1, 3, 16, 16)
    codes = pipe.model.encode_images(torch.rand(2, 3, 16, 16, generator=seeded(11)) * 2 - 1)
    assert codes.shape == (2, 64) and codes.dtype == torch.long and codes.max() < 32
    pixels = pipe.model.decode_image_tokens(codes)
    assert pixels.shape == (2, 3, 16, 16) and pixels.min() >= -1 and pixels.max() <= 1


def test_the_recipes_pick_their_reveal_rules_and_maskgit_still_works_on_the_uvit():
    maskgit = tiny_pipeline(sampling_recipe="maskgit")
    ids, mask = text_inputs(maskgit, ["a cat"])
    model = maskgit.model
    state = model.prepare_image_generation(ids, mask, settings=model.check_sampling(), generator=seeded(0))
    assert type(model.start_image_tokens(state).reveal_rule) is ConfidenceOrder
    amused = tiny_pipeline()
    state = amused.model.prepare_image_generation(
        ids, mask, settings=amused.model.check_sampling(), generator=seeded(0)
    )
    assert type(amused.model.start_image_tokens(state).reveal_rule) is AmusedConfidenceOrder
    codes = maskgit("a cat", guidance_scale=2.0, output_type="latent", generator=seeded(1)).images
    assert codes.shape == (1, 64) and codes.max() < 32


def test_amused_rule_keeps_the_cosine_count_and_never_remasks_a_known_token():
    rule = AmusedConfidenceOrder(2.0)
    rule.start(2, 16, seeded(0), "cpu")
    revealed, known = 0, torch.zeros(2, 16, dtype=torch.bool)
    for step in range(4):
        plan = rule.plan(step, 4, 16, revealed)
        unknown = 16 - revealed
        confidence = torch.rand(2, unknown, generator=seeded(step)).log()
        keep = rule.select(confidence, plan.count)
        positions = (~known).nonzero()[:, 1].view(2, unknown)
        known.scatter_(1, positions.gather(1, keep), True)
        revealed += plan.count
        torch.testing.assert_close(rule.known, known, rtol=0, atol=0)
    # AmusedScheduler: floor(16 cos(pi/2 k/4)) stay masked after steps 1..3 -> 14, 11, 6, then all are revealed
    assert revealed == 16 and known.all()


def test_prompt_embeds_are_refused_by_the_uvit(pipe):
    ids, mask = text_inputs(pipe, ["a cat"])
    embeds = pipe.model.model.encode_text(ids).last_hidden_state
    with pytest.raises(ValueError, match="also reads the pooled text"):
        pipe.model.prepare_image_generation(prompt_embeds=embeds, attention_mask=mask)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    ids = torch.randint(2, 40, (2, TEXT_LENGTH), generator=seeded(12))
    codes = torch.randint(0, 32, (2, 64), generator=seeded(13))
    results = []
    for checkpointing in (False, True):
        model = tiny_uvit_model(hidden_dropout=0.0).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.model.backbone.gradient_checkpointing
        loss = model(input_ids=ids, image_token_ids=codes, generator=seeded(14)).loss
        loss.backward()
        results.append((loss.detach(), model.model.backbone.layers[0].mlp.fc1.weight.grad.clone()))
    torch.testing.assert_close(results[0], results[1])
    assert results[0][1].abs().sum() > 0
