"""`muse` end to end on tiny sizes: cached dVAE codes, seeded masks in the loss, an exported pipeline that loads and
generates; ViT-VQGAN codes are accepted too."""

import numpy as np
import pytest
import torch

from hf_t2i import DalleDVAE, DalleDVAEConfig, MusePipeline, ViTVQGAN, ViTVQGANConfig
from hf_t2i.training import TrainingConfig, get_recipe, train
from hf_t2i.training.recipes.muse import MuseRecipe, MuseRecipeConfig


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
    sample_num_inference_steps=4,
    sample_prompts="a red circle",
)


@pytest.fixture(scope="module")
def dvae_dir(tmp_path_factory):
    """A 32px dVAE with a 4x4 grid of 32 codes."""
    out = tmp_path_factory.mktemp("dvae")
    torch.manual_seed(0)
    config = DalleDVAEConfig(
        image_size=32, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2, 2, 2], num_blocks_per_group=1
    )
    DalleDVAE(config).save_pretrained(out)
    return out


def recipe_for(path, tmp_path, **kwargs):
    config = MuseRecipeConfig(**DATA, **SIZES, vq_path=str(path), cache_dir=str(tmp_path / "cache"), **kwargs)
    return MuseRecipe(config)


def test_muse_is_registered():
    assert get_recipe("muse") is MuseRecipe


def test_muse_recipe_exports_a_working_pipeline(dvae_dir, tmp_path):
    recipe = recipe_for(dvae_dir, tmp_path, position_embedding_type="axial")
    config = TrainingConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        train_batch_size=8,
        report_to="none",
        eval_steps=2,
        sample_steps=2,
    )
    metrics = train(recipe, config)
    assert metrics["eval/loss"] > 0
    pipe = MusePipeline.from_pretrained(tmp_path / "run" / "final")
    pipe.set_progress_bar_config(disable=True)
    model = pipe.model
    assert model.config.position_embedding_type == "axial" and model.config.num_inference_steps == 4
    original = DalleDVAE.from_pretrained(dvae_dir)
    for name, value in original.state_dict().items():
        assert torch.equal(model.vqmodel.state_dict()[name], value), name  # the frozen tokenizer is exported as is
    images = pipe(
        "a red circle", guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_the_loss_draws_its_masks_from_the_generator(dvae_dir, tmp_path):
    recipe = recipe_for(dvae_dir, tmp_path)
    model = recipe.build_model()
    rows = recipe.build_train_dataset()[:4]
    text = {name: rows[name] for name in recipe.text_input_names}
    codes = rows["image_token_ids"]
    assert codes.shape == (4, 16) and codes.max() < 32
    model.eval()  # held-out: a fixed seed, the same loss every time
    assert torch.equal(recipe.prior_output(model, text, codes).loss, recipe.prior_output(model, text, codes).loss)
    model.train()
    recipe.generator = torch.Generator().manual_seed(0)
    first = recipe.prior_output(model, text, codes)
    second = recipe.prior_output(model, text, codes)  # the generator moved on: other masks
    assert not torch.equal(first.mask, second.mask)
    recipe.generator = torch.Generator().manual_seed(0)
    assert torch.equal(recipe.prior_output(model, text, codes).mask, first.mask)


def test_muse_accepts_a_vit_vqgan(tmp_path):
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
    ViTVQGAN(config).save_pretrained(tmp_path / "vqgan")
    model = recipe_for(tmp_path / "vqgan", tmp_path).build_model()
    assert type(model.vqmodel) is ViTVQGAN and model.config.mask_token_id == 64
    assert not any(p.requires_grad for p in model.vqmodel.parameters())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"vq_path": ""}, "vq_path"),
        ({"position_embedding_type": "rope"}, "position_embedding_type"),
        ({"sample_num_inference_steps": 0}, "sample_num_inference_steps"),
        ({"sample_choice_temperature": -1.0}, "sample_choice_temperature"),
        ({"caption_dropout": 1.0}, "caption_dropout"),
    ],
)
def test_bad_recipe_config_names_the_field(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        MuseRecipe(MuseRecipeConfig(**{**DATA, **SIZES, "vq_path": str(tmp_path), **kwargs}))


def test_a_non_vq_folder_is_refused(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="image tokenizer"):
        recipe_for(tmp_path, tmp_path).load_image_tokenizer()


def test_generation_metrics_in_training_read_the_validation_captions(dvae_dir, tmp_path, monkeypatch):
    """Checkpoints are compared on in-distribution captions: the held-out test split stays for the reports."""
    import hf_t2i.evaluation

    seen = {}

    def fake_evaluate(pipe, dataset_name, **kwargs):
        seen.update(kwargs, dataset=dataset_name)
        return {"compositional/overall": 0.5}

    monkeypatch.setattr(hf_t2i.evaluation, "evaluate_for_training", fake_evaluate)
    recipe = recipe_for(dvae_dir, tmp_path, eval_num_images=2, eval_metrics="compositional")
    config = TrainingConfig(
        output_dir=str(tmp_path / "run"), max_steps=1, eval_steps=1, train_batch_size=8, report_to="none"
    )
    metrics = train(recipe, config)
    assert seen["dataset"] == "shapes" and seen["split"] == "validation" and seen["num_images"] == 2
    assert metrics["eval/compositional/overall"] == 0.5
