"""aMUSEd (diffusers `AmusedPipeline`: `UVit2DModel` + `VQModel` + CLIP) -> `MusePipeline`: a tiny random original
built in code with diffusers' own classes, saved as diffusers saves it, converted, and compared: the transformer's
logits, the codes `AmusedPipeline` draws, the decoded pixels."""

import pytest
import torch

from ..models.test_muse_uvit import TEXT_LENGTH, clip_text_config, clip_tokenizer, vqmodel_config


pytestmark = pytest.mark.convert

PROMPTS = ["a red circle left of a blue square", "a photo of a cat"]


def uvit_config(downsample: bool, use_bias: bool) -> dict:
    """Widths that differ everywhere (embedding 16, stages 24, transformer 32, text 16): every mapper exists."""
    return dict(
        hidden_size=32,
        use_bias=use_bias,
        cond_embed_dim=12,
        micro_cond_encode_dim=4,
        micro_cond_embed_dim=20,
        encoder_hidden_size=16,
        vocab_size=40,  # 32 codes + [MASK], rounded up as aMUSEd's 8256 for 8192
        codebook_size=32,
        in_channels=16,
        block_out_channels=24,
        num_res_blocks=2,
        downsample=downsample,
        upsample=downsample,
        block_num_heads=2,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        layer_norm_eps=1e-6,
        sample_size=8,
    )


def amused_folder(path, downsample=True, use_bias=True, seed=0):
    """A random `AmusedPipeline` saved with `save_pretrained`; weights scaled to ~N(0, 0.1), norms off 1."""
    from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel, VQModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = UVit2DModel(**uvit_config(downsample, use_bias))
    with torch.no_grad():
        for p in transformer.parameters():
            p.mul_(5) if p.ndim > 1 and p.shape[-1] > 1 else p.add_(torch.randn_like(p) * 0.1)
    pipe = AmusedPipeline(
        vqvae=VQModel(**vqmodel_config()),
        tokenizer=clip_tokenizer(),
        text_encoder=CLIPTextModelWithProjection(clip_text_config()),
        transformer=transformer,
        scheduler=AmusedScheduler(mask_token_id=39),
    )
    pipe.save_pretrained(path)
    return AmusedPipeline.from_pretrained(path)


@pytest.mark.parametrize("downsample, use_bias", [(True, True), (False, False)])
def test_amused_converts_with_identical_logits_codes_and_pixels(tmp_path, downsample, use_bias):
    import convert_amused_to_hf_t2i as script

    original = amused_folder(tmp_path / "amused", downsample, use_bias)
    original.set_progress_bar_config(disable=True)
    result = script.convert(tmp_path / "amused", tmp_path / "out")
    parity = result["parity"]
    assert parity["transformer logits"] <= 1e-5, parity
    assert parity["tokens_identical"] == 1.0 and parity["decoded pixels"] <= 1e-5, parity

    from transformers import pipeline

    from hf_t2i import MuseForConditionalGeneration, MusePipeline, T2IPipeline

    for loader in (MusePipeline, T2IPipeline):
        converted = loader.from_pretrained(tmp_path / "out")
        assert type(converted) is MusePipeline
    model = MuseForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert model.config.backbone == "uvit"
    image = pipeline("text-to-image", model=str(tmp_path / "out"))(PROMPTS[0], num_inference_steps=2)
    assert image.size == (16, 16)
    converted.set_progress_bar_config(disable=True)
    # more steps, a batch, other seeds and scales: the same codes as AmusedPipeline, then the same pixels
    for steps, scale, seed in ((6, 5.0, 1), (8, 1.0, 2), (1, 10.0, 3)):
        expected = original(
            PROMPTS,
            num_inference_steps=steps,
            guidance_scale=scale,
            output_type="latent",
            generator=torch.Generator().manual_seed(seed),
        ).images.flatten(1)
        drawn = converted(
            PROMPTS,
            num_inference_steps=steps,
            guidance_scale=scale,
            output_type="latent",
            generator=torch.Generator().manual_seed(seed),
        ).images
        assert torch.equal(drawn, expected), (steps, scale, seed, (drawn != expected).sum())
    call = dict(num_inference_steps=4, guidance_scale=4.0, output_type="np")  # AmusedPipeline's default scale is 10
    reference = original(PROMPTS[0], **call, generator=torch.Generator().manual_seed(4))
    ours = converted(PROMPTS[0], **call, generator=torch.Generator().manual_seed(4))
    assert abs(ours.images - reference.images).max() <= 1e-5


def test_one_step_equals_the_scheduler_step_on_the_same_logits(tmp_path):
    """The reveal arithmetic alone: from the same half-known codes and seed, one `AmusedScheduler.step` and one
    iteration of our loop keep the same codes (mid-schedule, where noise and re-masking both act)."""
    import convert_amused_to_hf_t2i as script

    original = amused_folder(tmp_path / "amused", seed=1)
    pipe = script.build_pipeline(script.convert_model(script.read_checkpoint(tmp_path / "amused")), clip_tokenizer())
    model = pipe.model
    encoded = pipe.processor(text=PROMPTS[:1])
    settings = model.check_sampling(num_inference_steps=5)
    state = model.prepare_image_generation(**encoded, settings=settings, generator=torch.Generator().manual_seed(5))
    decoder = model.start_image_tokens(state)
    positions, scale = decoder.plan(0)
    drawn, confidence = model.image_generation_step(state, decoder.tokens, decoder.known, positions, scale)
    decoder.reveal(positions, drawn, confidence=confidence)

    scheduler = original.scheduler
    scheduler.set_timesteps(5, (2.0, 0.0))
    ids = original.tokenizer(PROMPTS[:1], padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt").input_ids
    out = original.text_encoder(ids, output_hidden_states=True)
    latents = torch.full((1, 8, 8), 39)
    logits = original.transformer(
        latents,
        micro_conds=torch.tensor([[16.0, 16.0, 0.0, 0.0, 6.0]]),
        pooled_text_emb=out.text_embeds,
        encoder_hidden_states=out.hidden_states[-2],
    )
    step = scheduler.step(logits, scheduler.timesteps[0], latents, generator=torch.Generator().manual_seed(5))
    expected = step.prev_sample.flatten(1)
    known = expected != 39
    assert torch.equal(known, decoder.known) and torch.equal(decoder.tokens[known], expected[known])


def test_a_linear_masking_schedule_and_a_mismatched_resampling_are_refused(tmp_path):
    import json

    import convert_amused_to_hf_t2i as script
    from conversion_utils import ConversionError

    amused_folder(tmp_path / "amused", downsample=False)
    config_file = tmp_path / "amused" / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "masking_schedule": "linear"}))
    with pytest.raises(ConversionError, match="cosine schedule only"):
        script.convert(tmp_path / "amused", check=False)
    config_file.write_text(json.dumps(config))
    transformer_file = tmp_path / "amused" / "transformer" / "config.json"
    transformer = json.loads(transformer_file.read_text())
    transformer_file.write_text(json.dumps({**transformer, "upsample": True}))
    with pytest.raises(ConversionError, match="upsample=True"):
        script.convert(tmp_path / "amused", check=False)
    with pytest.raises(ConversionError, match="not an AmusedPipeline|model_index.json not found"):
        script.convert(tmp_path / "amused" / "transformer", check=False)


def test_the_command_line_converts_without_parity_and_refuses_in_one_line(tmp_path, capsys):
    import convert_amused_to_hf_t2i as script
    from conversion_utils import run_main

    from hf_t2i import MusePipeline

    amused_folder(tmp_path / "amused", downsample=False)
    args = ["--checkpoint-path", str(tmp_path / "amused"), "--output-dir", str(tmp_path / "out"), "--skip-parity"]
    assert script.main(args) == 0
    assert MusePipeline.from_pretrained(tmp_path / "out").model.config.sampling_recipe == "amused"
    assert "Converted from aMUSEd" in (tmp_path / "out" / "README.md").read_text()
    bad = ["--checkpoint-path", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "out2")]
    assert run_main(script.main, bad) == 2
    assert "must be the folder of a saved AmusedPipeline" in capsys.readouterr().err
