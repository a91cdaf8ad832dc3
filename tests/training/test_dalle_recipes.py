"""The DALL-E recipes end to end on tiny sizes: dVAE stage, cached tokens, prior stage, exported pipeline, and a
two-process launch of the prior."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import pipeline

from hf_t2i import DallePipeline
from hf_t2i.training import TrainingConfig, train
from hf_t2i.training.recipes.dalle import (
    DalleDVAERecipe,
    DalleDVAERecipeConfig,
    DallePriorRecipe,
    DallePriorRecipeConfig,
)

from .training_toy import TORCHRUN


DATA = {"dataset": "shapes", "dataset_size": 48, "eval_size": 16, "image_size": 32}
PRIOR_FLAGS = dict(
    text_vocab_size=300,
    text_seq_len=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_kernel_size=3,
    sample_prompts="a red circle|two blue squares",
)


def run_config(output_dir, **kwargs):
    defaults = dict(output_dir=str(output_dir), max_steps=3, train_batch_size=8, report_to="none", log_steps=1)
    defaults.update(kwargs)
    return TrainingConfig(**defaults)


@pytest.fixture(scope="module")
def dvae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("dvae")
    config = DalleDVAERecipeConfig(
        **DATA, vocab_size=32, hidden_size=8, channel_multipliers="1,2,4", num_blocks_per_group=1
    )
    metrics = train(DalleDVAERecipe(config), run_config(out, eval_steps=3, sample_steps=3))
    assert {"eval/mse", "eval/perplexity", "eval/codebook_usage"} <= set(metrics)
    assert (out / "samples").is_dir()
    return out / "final"


def test_prior_recipe_exports_a_working_pipeline(dvae_dir, tmp_path):
    cache = tmp_path / "cache"
    config = DallePriorRecipeConfig(**DATA, dvae_path=str(dvae_dir), cache_dir=str(cache), **PRIOR_FLAGS)
    recipe = DallePriorRecipe(config)
    metrics = train(recipe, run_config(tmp_path / "prior", eval_steps=3, sample_steps=3))
    assert metrics["eval/image_loss"] > 0 and metrics["eval/text_loss"] > 0
    # the image tokens were encoded once and cached on disk
    assert any(cache.rglob("*.arrow"))

    final = tmp_path / "prior" / "final"
    pipe = DallePipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 32, 32, 3)
    # the frozen dVAE inside the prior is the stage-1 model, unchanged by training
    from hf_t2i import DalleDVAE

    dvae = DalleDVAE.from_pretrained(dvae_dir)
    for name, value in dvae.state_dict().items():
        assert torch.equal(pipe.model.vqmodel.state_dict()[name], value)
    image = pipeline("text-to-image", model=str(final))("a red circle", generator=torch.Generator().manual_seed(0))
    assert np.abs(np.asarray(image, dtype=np.float32) / 255 - images[0]).max() <= 1 / 255 + 1e-6


def test_decoder_fine_tune_keeps_the_encoder_and_lowers_the_argmax_reconstruction_loss(dvae_dir, tmp_path):
    """`train_encoder=False` continues a trained dVAE, training its decoder alone on the codes `encode` gives."""
    from hf_t2i.models.dalle_dvae import DalleDVAE

    before = DalleDVAE.from_pretrained(dvae_dir)
    config = DalleDVAERecipeConfig(**DATA, pretrained_model_name_or_path=str(dvae_dir), train_encoder=False)
    config.hidden_size = 99  # a size flag the pretrained model overrides, with a warning
    recipe = DalleDVAERecipe(config)
    assert (config.hidden_size, config.vocab_size) == (8, 32)
    pixels = torch.stack([recipe.build_eval_dataset()[i]["pixel_values"] for i in range(8)])

    def argmax_loss(model):
        with torch.no_grad():
            return model(pixels, sample_codes=False).reconstruction_loss.item()

    train(recipe, run_config(tmp_path, max_steps=8, learning_rate=3e-3, lr_warmup_steps=0, ema_decay=None))
    after = DalleDVAE.from_pretrained(tmp_path / "final")
    for name, value in before.encoder.state_dict().items():
        assert torch.equal(after.encoder.state_dict()[name], value), name
    assert any(not torch.equal(after.decoder.state_dict()[n], v) for n, v in before.decoder.state_dict().items())
    assert argmax_loss(after) < argmax_loss(before)
    loss, metrics = recipe.training_step(after.eval(), {"pixel_values": pixels}, step=0)
    assert loss == metrics["reconstruction_loss"] and metrics["kl_weight"] == 0  # no term the decoder cannot train


def test_argmax_codes_decode_what_encode_and_decode_give(dvae_dir):
    from hf_t2i.models.dalle_dvae import DalleDVAE

    model = DalleDVAE.from_pretrained(dvae_dir).eval()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(pixels, sample_codes=False)
        torch.testing.assert_close(out.reconstruction, model.decode(model.encode(pixels)))


def test_decoder_fine_tune_needs_a_trained_dvae(tmp_path):
    with pytest.raises(ValueError, match="train_encoder=False.*pretrained_model_name_or_path"):
        DalleDVAERecipe(DalleDVAERecipeConfig(**DATA, train_encoder=False))
    with pytest.raises(ValueError, match="is not a DalleDVAE folder"):
        DalleDVAERecipe(DalleDVAERecipeConfig(**DATA, pretrained_model_name_or_path=str(tmp_path)))


def test_prior_recipe_requires_a_dvae():
    with pytest.raises(ValueError, match="dvae_path"):
        DallePriorRecipe(DallePriorRecipeConfig())


def test_two_process_launch_of_the_prior(dvae_dir, tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root / "src"), HF_T2I_CACHE=str(tmp_path / "cache"))
    flags = {**DATA, **PRIOR_FLAGS, "dvae_path": str(dvae_dir)}
    command = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "hf_t2i.training", "dalle_prior"]
    command += ["--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--train-batch-size", "4"]
    command += ["--report-to", "none", "--log-steps", "1", "--checkpointing-steps", "2"]
    for key, value in flags.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    checkpoint = tmp_path / "run" / "checkpoint-000002"
    # one RNG state per process: both ranks trained
    assert sorted(p.name for p in checkpoint.glob("rng_state_*.safetensors")) == [
        "rng_state_0.safetensors",
        "rng_state_1.safetensors",
    ]
    assert (tmp_path / "run" / "final" / "model_index.json").is_file()
    assert json.loads((tmp_path / "run" / "recipe_config.json").read_text())["recipe"] == "dalle_prior"


def test_prior_recipe_fine_tunes_a_shipped_checkpoint_by_name(tmp_path):
    """`pretrained_model_name_or_path="dalle"`: the shipped prior's weights, tokenizer, text length and dVAE."""
    from hf_t2i import DalleDVAE
    from hf_t2i.checkpoints import resolve_checkpoint

    shipped = DallePipeline.from_pretrained(resolve_checkpoint("dalle"), dtype=torch.float32)
    config = DallePriorRecipeConfig(**DATA, pretrained_model_name_or_path="dalle", cache_dir=str(tmp_path))
    recipe = DallePriorRecipe(config)
    assert config.text_seq_len == shipped.model.config.text_seq_len
    assert recipe.processor.tokenizer.get_vocab() == shipped.processor.tokenizer.get_vocab()
    dvae = DalleDVAE.from_pretrained(config.dvae_path)
    assert all(torch.equal(value, shipped.model.vqmodel.state_dict()[key]) for key, value in dvae.state_dict().items())
    model = recipe.build_model()
    assert all(torch.equal(value, shipped.model.state_dict()[key]) for key, value in model.state_dict().items())
    assert model.dtype == torch.float32 and not any(p.requires_grad for p in model.vqmodel.parameters())


def test_fine_tuning_onto_a_retrained_dvae_replaces_the_prior_s_dvae(dvae_dir, tmp_path):
    """`replace_image_tokenizer`: the pretrained prior is fine-tuned on the codes of a dVAE of the same architecture
    and other weights, and exported with it; without the flag such a dVAE is refused, naming the flag."""
    from hf_t2i import DalleDVAE

    train(
        DallePriorRecipe(
            DallePriorRecipeConfig(**DATA, dvae_path=str(dvae_dir), cache_dir=str(tmp_path), **PRIOR_FLAGS)
        ),
        run_config(tmp_path / "prior"),
    )
    prior = tmp_path / "prior" / "final"
    torch.manual_seed(1)
    retrained = DalleDVAE(DalleDVAE.from_pretrained(dvae_dir).config)  # same architecture, other weights
    retrained.save_pretrained(tmp_path / "retrained")
    base = dict(**DATA, pretrained_model_name_or_path=str(prior), dvae_path=str(tmp_path / "retrained"))
    base["cache_dir"] = str(tmp_path)
    with pytest.raises(ValueError, match="is not the image tokenizer of .*--replace-image-tokenizer"):
        DallePriorRecipe(DallePriorRecipeConfig(**base))

    recipe = DallePriorRecipe(DallePriorRecipeConfig(**base, replace_image_tokenizer=True))
    model = recipe.build_model()
    new = retrained.state_dict()
    assert all(torch.equal(value, new[key]) for key, value in model.vqmodel.state_dict().items())
    assert not any(p.requires_grad for p in model.vqmodel.parameters())
    before = DallePipeline.from_pretrained(prior).model
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in model.state_dict().items() if "vqmodel" not in k)
    train(recipe, run_config(tmp_path / "tuned", max_steps=2))
    tuned = DallePipeline.from_pretrained(tmp_path / "tuned" / "final").model
    assert all(torch.equal(value, new[key]) for key, value in tuned.vqmodel.state_dict().items())

    with pytest.raises(ValueError, match="pretrained_model_name_or_path` is empty"):
        DallePriorRecipe(
            DallePriorRecipeConfig(**{**base, "pretrained_model_name_or_path": None}, replace_image_tokenizer=True)
        )
    with pytest.raises(ValueError, match="`dvae_path` is empty"):
        DallePriorRecipe(DallePriorRecipeConfig(**{**base, "dvae_path": ""}, replace_image_tokenizer=True))
    wider = DalleDVAE.from_pretrained(dvae_dir).config
    wider.hidden_size *= 2
    DalleDVAE(wider).save_pretrained(tmp_path / "wider")
    with pytest.raises(ValueError, match="cannot replace the image tokenizer .*hidden_size"):
        DallePriorRecipe(
            DallePriorRecipeConfig(**{**base, "dvae_path": str(tmp_path / "wider")}, replace_image_tokenizer=True)
        )
