"""The transfusion recipe end to end on tiny sizes: cached latents, interleaved sequences, exported pipeline."""

import logging

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from transformers import pipeline

from hf_t2i import TransfusionPipeline
from hf_t2i.layers import sincos_2d_embedding
from hf_t2i.training import TrainingConfig, train
from hf_t2i.training.recipes.transfusion import TransfusionRecipe, TransfusionRecipeConfig


DATA = {"dataset": "shapes", "dataset_size": 32, "eval_size": 8, "image_size": 32}
FLAGS = dict(
    text_vocab_size=300,
    text_seq_len=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    sample_prompts="a red circle|two blue squares",
    sample_inference_steps=2,
)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny diffusers AutoencoderKL folder (factor 4: 32 px -> 8x8 latents), as `autoencoder_kl` exports one."""
    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[8, 8, 8],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.5,
    )
    out = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(out)
    return out


def run_config(output_dir, **kwargs):
    defaults = dict(output_dir=str(output_dir), max_steps=3, train_batch_size=8, report_to="none", log_steps=1)
    defaults.update(kwargs)
    return TrainingConfig(**defaults)


def test_recipe_trains_and_exports_a_working_pipeline(vae_dir, tmp_path):
    cache = tmp_path / "cache"
    recipe = TransfusionRecipe(TransfusionRecipeConfig(**DATA, **FLAGS, vae_path=str(vae_dir), cache_dir=str(cache)))
    metrics = train(recipe, run_config(tmp_path / "run", eval_steps=3, sample_steps=3))
    assert metrics["eval/loss"] > 0 and metrics["train_loss"] > 0
    assert metrics["eval/loss"] == pytest.approx(
        metrics["eval/lm_loss"] + 5 * metrics["eval/diffusion_loss"], rel=1e-4
    )
    assert any(cache.rglob("*.arrow"))  # latents encoded once, cached on disk
    assert (tmp_path / "run" / "samples").is_dir()

    final = tmp_path / "run" / "final"
    pipe = TransfusionPipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.images.shape == (1, 32, 32, 3)
    # the VAE inside the model is the given one, unchanged by training, with its scaling factor
    vae = AutoencoderKL.from_pretrained(vae_dir)
    for name, value in vae.state_dict().items():
        assert torch.equal(pipe.model.vae.state_dict()[name], value)
    assert pipe.model.vae.config.scaling_factor == 0.5
    image = pipeline("text-to-image", model=str(final))(
        "a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert np.abs(np.asarray(image, dtype=np.float32) / 255 - images.images[0]).max() <= 1 / 255 + 1e-6
    assert isinstance(pipe.caption(image, max_new_tokens=4)[0], str)


def test_training_sequences_follow_the_flags(vae_dir):
    config = TransfusionRecipeConfig(
        **DATA, **FLAGS, vae_path=str(vae_dir), image_first_prob=0.5, caption_dropout=0.5, image_first_max_timestep=300
    )
    recipe = TransfusionRecipe(config)
    processor = recipe.processor
    captions = torch.full((64, 3), -1)
    captions[:, :2] = torch.tensor([40, 41])
    batch = {"caption_ids": captions, "image_latents": torch.zeros(64, 4, 8, 8)}
    out = recipe.sequences(batch, torch.Generator().manual_seed(0), 1000)
    first = out["input_ids"][:, 1] == processor.boi_token_id  # <s> <boi> ...: image first
    assert 10 < first.sum() < 54
    assert torch.equal(out["timestep_limits"], torch.where(first, 300, 1000))
    dropped = ~first & (out["input_ids"][:, 1] == processor.tokenizer.eos_token_id)  # <s> </s> <boi>: no caption
    assert 5 < dropped.sum() < (~first).sum() - 5
    assert not (first & (out["input_ids"] == 40).any(1).logical_not()).any()  # image-first rows keep their caption
    again = recipe.sequences(batch, torch.Generator().manual_seed(0), 1000)
    assert torch.equal(out["input_ids"], again["input_ids"])  # the draws come from the generator only


def test_recipe_requires_a_vae():
    with pytest.raises(ValueError, match="vae_path"):
        TransfusionRecipe(TransfusionRecipeConfig())
    with pytest.raises(ValueError, match="caption_dropout"):
        TransfusionRecipe(TransfusionRecipeConfig(vae_path="x", caption_dropout=1.5))
    with pytest.raises(ValueError, match="`prediction_type` must be one of"):
        TransfusionRecipe(TransfusionRecipeConfig(vae_path="x", prediction_type="v"))
    with pytest.raises(ValueError, match="`position_embedding_init` must be one of"):
        TransfusionRecipe(TransfusionRecipeConfig(vae_path="x", position_embedding_init="sincos"))
    with pytest.raises(ValueError, match="`timestep_sampling` must be one of"):
        TransfusionRecipe(TransfusionRecipeConfig(vae_path="x", timestep_sampling="late"))


def test_prediction_type_position_and_timestep_flags_reach_the_model(vae_dir):
    recipe = TransfusionRecipe(
        TransfusionRecipeConfig(
            **DATA,
            **FLAGS,
            vae_path=str(vae_dir),
            prediction_type="v_prediction",
            position_embedding_init="sincos_2d",
            timestep_sampling="high_noise",
        )
    )
    model = recipe.build_model()
    assert model.config.prediction_type == "v_prediction"
    assert model.config.timestep_sampling == "high_noise"
    assert model.make_scheduler("ddim").config.prediction_type == "v_prediction"
    assert model.config.position_embedding_init == "sincos_2d"
    positions = model.model.patch_positions
    grid = model.config.patch_grid_size
    table = positions(torch.arange(grid * grid))
    assert torch.equal(table, sincos_2d_embedding(grid, grid, model.config.hidden_size))


def test_fine_tuning_starts_from_the_trained_model_and_its_vae(vae_dir, tmp_path, caplog):
    cache = str(tmp_path / "cache")
    train(
        TransfusionRecipe(TransfusionRecipeConfig(**DATA, **FLAGS, vae_path=str(vae_dir), cache_dir=cache)),
        run_config(tmp_path / "run"),
    )
    final = str(tmp_path / "run" / "final")
    pretrained = TransfusionPipeline.from_pretrained(final)
    data = {"dataset": "shapes", "dataset_size": 32, "eval_size": 8}
    with caplog.at_level(logging.WARNING):
        recipe = TransfusionRecipe(
            TransfusionRecipeConfig(**data, pretrained_model_name_or_path=final, cache_dir=cache, sample_prompts="a")
        )
    assert "ignored" not in caplog.text  # no size flags given: nothing to warn about
    c = recipe.config
    assert (c.hidden_size, c.num_hidden_layers, c.image_size, c.text_seq_len) == (32, 2, 32, 16)
    vae = AutoencoderKL.from_pretrained(c.vae_path)  # the model's own VAE, saved once: no --vae-path needed
    assert all(torch.equal(value, pretrained.model.vae.state_dict()[key]) for key, value in vae.state_dict().items())
    assert vae.config.scaling_factor == 0.5
    model = recipe.build_model()
    assert all(torch.equal(value, pretrained.model.state_dict()[key]) for key, value in model.state_dict().items())
    assert not any(p.requires_grad for p in model.vae.parameters())
    metrics = train(recipe, run_config(tmp_path / "tuned", eval_steps=3))
    assert metrics["eval/loss"] > 0
    tuned = TransfusionPipeline.from_pretrained(tmp_path / "tuned" / "final")
    assert tuned.processor.tokenizer.get_vocab() == pretrained.processor.tokenizer.get_vocab()
    moved = [k for k, v in tuned.model.state_dict().items() if not torch.equal(v, pretrained.model.state_dict()[k])]
    assert moved and not any(k.startswith("vae.") for k in moved)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        TransfusionRecipe(TransfusionRecipeConfig(**data, hidden_size=64, pretrained_model_name_or_path=final))
    assert "{'hidden_size': 64} are ignored" in caplog.text and "{'hidden_size': 32}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # what the weights predict is the model's, like its sizes
        kept = TransfusionRecipe(
            TransfusionRecipeConfig(**data, prediction_type="v_prediction", pretrained_model_name_or_path=final)
        )
    assert kept.config.prediction_type == "epsilon" and "'prediction_type': 'v_prediction'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # an initialisation: the pretrained weights already started from theirs
        kept = TransfusionRecipe(
            TransfusionRecipeConfig(**data, position_embedding_init="sincos_2d", pretrained_model_name_or_path=final)
        )
    assert kept.config.position_embedding_init == "normal"
    assert "'position_embedding_init': 'sincos_2d'" in caplog.text
    # how training draws timesteps is a training setting, like lambda: set on the fine-tuned model, no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        recipe = TransfusionRecipe(
            TransfusionRecipeConfig(**data, timestep_sampling="high_noise", pretrained_model_name_or_path=final)
        )
    assert recipe.build_model().config.timestep_sampling == "high_noise" and "timestep_sampling" not in caplog.text
    with pytest.raises(ValueError, match="tokenizer_path"):
        TransfusionRecipe(TransfusionRecipeConfig(**data, tokenizer_path="gpt2", pretrained_model_name_or_path=final))
    other = tmp_path / "other_vae"
    torch.manual_seed(1)
    AutoencoderKL(**{**AutoencoderKL.load_config(vae_dir), "scaling_factor": 0.5}).save_pretrained(other)
    with pytest.raises(ValueError, match="`vae_path` .* is not the image tokenizer of"):
        TransfusionRecipe(TransfusionRecipeConfig(**data, vae_path=str(other), pretrained_model_name_or_path=final))
    # --replace-image-tokenizer swaps in a VAE of the same settings (`other`: other weights), and refuses one whose
    # latents are scaled otherwise
    swapped = TransfusionRecipe(
        TransfusionRecipeConfig(
            **data, vae_path=str(other), pretrained_model_name_or_path=final, replace_image_tokenizer=True
        )
    ).build_model()
    new = AutoencoderKL.from_pretrained(other).state_dict()
    assert all(torch.equal(value, new[key]) for key, value in swapped.vae.state_dict().items())
    rescaled = tmp_path / "rescaled_vae"
    AutoencoderKL(**{**AutoencoderKL.load_config(vae_dir), "scaling_factor": 0.25}).save_pretrained(rescaled)
    with pytest.raises(ValueError, match="cannot replace the image tokenizer .*scaling_factor"):
        TransfusionRecipe(
            TransfusionRecipeConfig(
                **data, vae_path=str(rescaled), pretrained_model_name_or_path=final, replace_image_tokenizer=True
            )
        )
    with pytest.raises(ValueError, match="is not a TransfusionPipeline folder"):
        TransfusionRecipe(TransfusionRecipeConfig(**data, pretrained_model_name_or_path=str(vae_dir)))
