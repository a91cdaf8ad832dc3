"""`autoencoder_kl` and `fluid` end to end on tiny sizes: the VAE export carries its latent scaling factor, the four
Fluid cells train on cached tokens and export working pipelines."""

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw, ImageFont

from hf_t2i import DalleDVAE, DalleDVAEConfig, FluidPipeline
from hf_t2i.grids import DEFAULT_GRID_PROMPTS, GAP, LABEL_WIDTH
from hf_t2i.layers import sincos_2d_embedding
from hf_t2i.training import TrainingConfig, train
from hf_t2i.training.recipes.autoencoder_kl import AutoencoderKLRecipe, AutoencoderKLRecipeConfig
from hf_t2i.training.recipes.fluid import FluidRecipe, FluidRecipeConfig


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
    diffusion_head_layers=1,
    num_train_timesteps=50,
    num_diffusion_steps=3,
    sample_num_inference_steps=4,
    sample_prompts="a red circle",
)


def run(recipe, output_dir, steps=2, **kwargs):
    config = TrainingConfig(
        output_dir=str(output_dir), max_steps=steps, train_batch_size=8, report_to="none", eval_steps=steps, **kwargs
    )
    return train(recipe, config)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A 32px VAE (8x8x4 latents, 4x4 tokens) trained for a few steps by the recipe."""
    out = tmp_path_factory.mktemp("vae")
    from .training_toy import reset_accelerate_state

    reset_accelerate_state()
    recipe = AutoencoderKLRecipe(
        AutoencoderKLRecipeConfig(**DATA, block_out_channels="8,8,16", norm_num_groups=8, scale_num_images=16)
    )
    metrics = run(recipe, out, steps=3, sample_steps=3)
    return out / "final", metrics


@pytest.fixture(scope="module")
def dvae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("dvae")
    torch.manual_seed(0)
    config = DalleDVAEConfig(
        image_size=32, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2, 2, 2], num_blocks_per_group=1
    )
    DalleDVAE(config).save_pretrained(out)
    return out


def test_autoencoder_kl_exports_a_unit_variance_scaling_factor(vae_dir):
    path, metrics = vae_dir
    assert {"eval/mse", "eval/psnr", "eval/latent_std"} <= set(metrics)
    assert metrics["eval/psnr"] == pytest.approx(10 * np.log10(4 / metrics["eval/mse"]))
    vae = AutoencoderKL.from_pretrained(path)
    assert list(vae.config.block_out_channels) == [8, 8, 16] and vae.config.sample_size == 32
    recipe = AutoencoderKLRecipe(AutoencoderKLRecipeConfig(**DATA, block_out_channels="8,8,16", norm_num_groups=8))
    pixels = next(recipe._rows(recipe.build_train_dataset(), 16))
    latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    assert latents.std().item() == pytest.approx(1.0, rel=1e-3)  # the export measured the same 16 images


def test_autoencoder_kl_bad_config():
    with pytest.raises(ValueError, match="reconstruction_loss"):
        AutoencoderKLRecipe(AutoencoderKLRecipeConfig(reconstruction_loss="l3"))
    with pytest.raises(ValueError, match="norm_num_groups"):
        AutoencoderKLRecipe(AutoencoderKLRecipeConfig(block_out_channels="12,16", norm_num_groups=8))
    with pytest.raises(ValueError, match="block_out_channels"):
        AutoencoderKLRecipe(AutoencoderKLRecipeConfig(block_out_channels="8;16")).vae_config()


@pytest.mark.parametrize(
    ("token_type", "order"), [("continuous", "random"), ("continuous", "raster"), ("discrete", "random")]
)
def test_fluid_recipe_exports_a_working_pipeline(vae_dir, dvae_dir, tmp_path, token_type, order):
    tokenizer = {"vae_path": str(vae_dir[0])} if token_type == "continuous" else {"vq_path": str(dvae_dir)}
    recipe = FluidRecipe(
        FluidRecipeConfig(
            **DATA, **SIZES, **tokenizer, token_type=token_type, generation_order=order, cache_dir=str(tmp_path / "c")
        )
    )
    metrics = run(recipe, tmp_path / "run", sample_steps=2)
    assert metrics["eval/loss"] > 0
    pipe = FluidPipeline.from_pretrained(tmp_path / "run" / "final")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.model.config.token_type == token_type and pipe.model.config.generation_order == order
    steps = 4 if order == "random" else None
    images = pipe(
        "a red circle",
        guidance_scale=2.0,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    if token_type == "continuous":  # the nested VAE is the trained one, scaling factor included
        vae = AutoencoderKL.from_pretrained(vae_dir[0])
        assert pipe.model.vae.config.scaling_factor == vae.config.scaling_factor
        assert torch.equal(pipe.model.vae.decoder.conv_out.weight, vae.decoder.conv_out.weight)
        config = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
        assert config["vae_config"]["scaling_factor"] == vae.config.scaling_factor


def test_fluid_held_out_loss_is_seeded(vae_dir, tmp_path):
    recipe = FluidRecipe(FluidRecipeConfig(**DATA, **SIZES, vae_path=str(vae_dir[0]), cache_dir=str(tmp_path / "c")))
    recipe.generator = torch.Generator().manual_seed(0)
    model = recipe.build_model().eval()
    rows = recipe.build_eval_dataset()[:8]
    text = {k: rows[k] for k in recipe.text_input_names}
    a = recipe.prior_output(model, text, rows["image_token_ids"]).loss
    b = recipe.prior_output(model, text, rows["image_token_ids"]).loss
    assert torch.equal(a, b)
    assert rows["image_token_ids"].shape == (8, 16, 16) and rows["image_token_ids"].dtype == torch.float32


def test_fluid_recipe_requires_its_image_tokenizer():
    with pytest.raises(ValueError, match="vae_path"):
        FluidRecipe(FluidRecipeConfig())
    with pytest.raises(ValueError, match="vq_path"):
        FluidRecipe(FluidRecipeConfig(token_type="discrete"))
    with pytest.raises(ValueError, match="generation_order"):
        FluidRecipe(FluidRecipeConfig(vae_path="x", generation_order="zigzag"))


def test_fluid_recipe_refuses_a_tokenizer_of_the_other_kind(vae_dir, dvae_dir, tmp_path):
    """A VQ folder given as the VAE (or the reverse) is named, not loaded into the wrong model."""
    continuous = FluidRecipe(FluidRecipeConfig(**DATA, **SIZES, vae_path=str(dvae_dir), cache_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="AutoencoderKL"):
        continuous.load_image_tokenizer()
    discrete = FluidRecipeConfig(
        **DATA, **SIZES, token_type="discrete", vq_path=str(vae_dir[0]), cache_dir=str(tmp_path)
    )
    with pytest.raises(ValueError, match="ViTVQGAN"):
        FluidRecipe(discrete).load_image_tokenizer()


def test_study_trains_the_four_cells_and_reports_them_side_by_side(tmp_path, capsys):
    from hf_t2i.cli import main

    argv = ["study", "--output-dir", str(tmp_path / "study"), "--dataset-size", "16", "--eval-size", "8"]
    argv += ["--tokenizer-steps", "1", "--max-steps", "1", "--train-batch-size", "8", "--hidden-size", "32"]
    argv += ["--num-hidden-layers", "1", "--num-attention-heads", "4", "--intermediate-size", "64"]
    argv += ["--encoder-layers", "1", "--diffusion-head-layers", "1", "--num-diffusion-steps", "2"]
    argv += ["--eval-num-images", "2", "--eval-metrics", "compositional", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "study" / "study.json").read_text())
    assert sorted(report["results"]) == sorted(
        ["continuous-random", "continuous-raster", "discrete-random", "discrete-raster"]
    )
    for metrics in report["results"].values():
        assert metrics["eval/loss"] > 0
        assert any(k.startswith("eval/compositional") for k in metrics), sorted(metrics)
    table = capsys.readouterr().out
    assert "| cell" in table and "val loss" in table and table.count("-random") + table.count("-raster") >= 4
    for cell in report["results"]:
        assert (tmp_path / "study" / cell / "final" / "model_index.json").is_file()
    samples = Image.open(tmp_path / "study" / "study_samples.png")  # a row per cell, a column per prompt
    side = 64  # 32 px, upscaled twice
    label_column = samples.width - len(DEFAULT_GRID_PROMPTS) * (side + GAP) - GAP
    assert 0 < label_column < LABEL_WIDTH and samples.height > 4 * (side + GAP) + GAP


def test_study_resumes_reuses_and_trains_on_and_records_its_curves(tmp_path):
    """A rerun of the same study reuses its finished cells; a larger `max_steps` trains them on from their last
    checkpoint; other settings are refused; `eval_steps` gives every cell's curve. The study's flags reach the cells."""
    from hf_t2i.training.study import StudyConfig, run_study

    common = dict(
        output_dir=str(tmp_path / "study"),
        cells="discrete-random",
        dataset_size=16,
        eval_size=8,
        tokenizer_steps=1,
        train_batch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        encoder_layers=1,
        text_vocab_size=300,
        text_seq_len=12,
        position_embedding_init="sincos_2d",
        lr_scheduler="constant_with_warmup",
        mixed_precision="bf16",
        checkpointing_steps=2,
        eval_steps=2,
        grid_prompts="none",
        cache_dir=str(tmp_path / "cache"),
    )
    lines = []
    first = run_study(StudyConfig(**common, max_steps=4), log=lines.append)
    cell = tmp_path / "study" / "discrete-random"
    assert not (tmp_path / "study" / "study_samples.png").exists()
    assert [row["step"] for row in first["history"]["discrete-random"]] == [2, 4]
    assert "| discrete-random | 2 " in first["curves"] and "s / step" in first["table"]
    model_config = json.loads((cell / "final" / "config.json").read_text())
    assert model_config["position_embedding_init"] == "sincos_2d" and model_config["text_seq_len"] == 12
    training_config = json.loads((cell / "training_config.json").read_text())
    assert training_config["lr_scheduler"] == "constant_with_warmup" and training_config["mixed_precision"] == "bf16"

    lines.clear()
    again = run_study(StudyConfig(**common, max_steps=4), log=lines.append)
    assert any("reusing the finished discrete-random cell" in line for line in lines)
    assert again["results"] == first["results"]

    lines.clear()
    longer = run_study(StudyConfig(**common, max_steps=6), log=lines.append)
    assert any("from step 4" in line for line in lines)  # trained on from its last checkpoint, not from scratch
    assert longer["results"]["discrete-random"]["global_step"] == 6
    assert [row["step"] for row in longer["history"]["discrete-random"]] == [2, 4, 6]
    written = json.loads((tmp_path / "study" / "study.json").read_text())
    # three evaluations, but of the loss alone: no metric to track (format_tracking's own test has metrics)
    assert written["tracking"] == longer["tracking"] == ""

    lines.clear()  # the picture's prompts are not a cell setting: the finished cell is reused, and drawn
    run_study(StudyConfig(**{**common, "grid_prompts": "a red circle | a blue square"}, max_steps=6), log=lines.append)
    assert any("reusing the finished discrete-random cell" in line for line in lines)
    samples = Image.open(tmp_path / "study" / "study_samples.png")
    label_column = 12 + int(ImageDraw.Draw(samples).textlength("discrete-random", font=ImageFont.load_default()))
    assert samples.width == label_column + 2 * (64 + GAP) + GAP  # two prompts: two columns of 32 px upscaled twice
    assert not list((tmp_path / "study").glob("*.tmp-*"))

    lines.clear()  # the other token type's settings never change a cell (cells of it may join the study later)
    run_study(StudyConfig(**common, max_steps=6, vae_path=str(tmp_path / "a-vae"), patch_size=1), log=lines.append)
    assert any("reusing the finished discrete-random cell" in line for line in lines)

    with pytest.raises(ValueError, match="finished its 6 steps, evaluated with guidance_scale=3.0.*hf-t2i eval"):
        run_study(StudyConfig(**common, max_steps=6, guidance_scale=5.0), log=lines.append)
    with pytest.raises(ValueError, match="hidden_size: 32 there, 64 now"):
        run_study(StudyConfig(**{**common, "hidden_size": 64}, max_steps=6), log=lines.append)
    with pytest.raises(ValueError, match="max_steps"):
        run_study(StudyConfig(**common, max_steps=4), log=lines.append)

    # a run of another cell reports the finished one too, each with its steps; a cell of other settings is left out
    lines.clear()
    subset = {**common, "cells": "discrete-raster", "grid_prompts": "a red circle"}
    both = run_study(StudyConfig(**subset, max_steps=2), log=lines.append)
    assert any("reporting the discrete-random cell an earlier run finished (6 steps)" in line for line in lines)
    assert list(both["results"]) == ["discrete-random", "discrete-raster"]  # the study's order
    assert [row["step"] for row in both["history"]["discrete-random"]] == [2, 4, 6]
    assert "| discrete-random | 6 " in both["table"] and "| discrete-raster | 2 " in both["table"]
    assert json.loads((tmp_path / "study" / "study.json").read_text())["results"].keys() == both["results"].keys()
    samples = Image.open(tmp_path / "study" / "study_samples.png")  # both cells, labelled with their unequal steps
    labels = ["discrete-random (6 steps)", "discrete-raster (2 steps)"]
    text_width = max(ImageDraw.Draw(samples).textlength(label, font=ImageFont.load_default()) for label in labels)
    assert samples.width == 12 + int(text_width) + (64 + GAP) + GAP and samples.height > 2 * (64 + GAP)
    record = json.loads((cell / "study_cell.json").read_text())
    (cell / "study_cell.json").write_text(
        json.dumps({**record, "settings": {**record["settings"], "hidden_size": 64}})
    )
    lines.clear()
    alone = run_study(StudyConfig(**{**subset, "grid_prompts": "none"}, max_steps=2), log=lines.append)
    assert list(alone["results"]) == ["discrete-raster"] and not any("reporting" in line for line in lines)


def test_study_tracking_correlates_each_cells_loss_with_its_metrics():
    from hf_t2i.training.study import format_tracking

    def curve(losses, accuracies):
        return [
            {"step": 1000 * (i + 1), "eval/loss": loss, "eval/compositional/overall": accuracy, "eval/fid": 100 * loss}
            for i, (loss, accuracy) in enumerate(zip(losses, accuracies))
        ]

    table = format_tracking(
        {
            "continuous-random": curve([0.07, 0.06, 0.05, 0.04], [0.1, 0.3, 0.5, 0.7]),  # exactly linear, falling
            "discrete-raster": curve([1.7, 1.4, 1.3], [0.4, 0.4, 0.4]),  # a flat metric has no correlation
            "discrete-random": curve([3.2, 2.8], [0.1, 0.2]),  # two evaluations: too few
        }
    )
    header, _, *rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()]
    assert header == ["cell", "evaluations", "r(val loss, compositional/overall)", "r(val loss, fid)"]
    assert rows == [["continuous-random", "4", "-1.0000", "1.0000"], ["discrete-raster", "3", "", "1.0000"]]
    uneven = curve([0.9, 0.5, 0.4, 0.3], [0.1, 0.5, 0.6, 0.9])
    r = float(format_tracking({"continuous-raster": uneven}).splitlines()[2].split("|")[3])
    assert -1 < r < -0.95
    assert format_tracking({"continuous-random": curve([0.07, 0.06], [0.1, 0.3])}) == ""
    assert format_tracking({}) == ""


def test_study_rejects_unknown_cells():
    from hf_t2i.training.study import StudyConfig

    with pytest.raises(ValueError, match="cells"):
        StudyConfig(output_dir="x", cells="continuous-random,spiral")
    with pytest.raises(ValueError, match="lr_scheduler.*'cosine_with_restarts'"):
        StudyConfig(output_dir="x", lr_scheduler="cosine_with_restarts")
    with pytest.raises(ValueError, match="mixed_precision.*'bfloat16'"):
        StudyConfig(output_dir="x", mixed_precision="bfloat16")
    with pytest.raises(ValueError, match="eval_steps"):
        StudyConfig(output_dir="x", eval_steps=-1)


def test_fluid_fine_tuning_takes_the_pretrained_vae_and_checks_the_cell(vae_dir, tmp_path):
    common = dict(**DATA, **SIZES, token_type="continuous", generation_order="random", cache_dir=str(tmp_path / "c"))
    run(FluidRecipe(FluidRecipeConfig(**common, vae_path=str(vae_dir[0]))), tmp_path / "run")
    pretrained = FluidPipeline.from_pretrained(tmp_path / "run" / "final")
    recipe = FluidRecipe(FluidRecipeConfig(**common, pretrained_model_name_or_path=str(tmp_path / "run" / "final")))
    saved = AutoencoderKL.from_pretrained(recipe.config.vae_path)  # the prior's own VAE, no --vae-path needed
    assert saved.config.scaling_factor == pretrained.model.vae.config.scaling_factor
    assert all(torch.equal(value, pretrained.model.vae.state_dict()[key]) for key, value in saved.state_dict().items())
    model = recipe.build_model()
    assert all(torch.equal(value, pretrained.model.state_dict()[key]) for key, value in model.state_dict().items())
    assert not any(p.requires_grad for p in model.vae.parameters())
    assert run(recipe, tmp_path / "tuned")["eval/loss"] > 0
    with pytest.raises(ValueError, match="generation_order"):
        FluidRecipe(
            FluidRecipeConfig(
                **{**common, "generation_order": "raster"},
                pretrained_model_name_or_path=str(tmp_path / "run" / "final"),
            )
        )


def test_snr_gamma_weights_the_training_loss_only(vae_dir, tmp_path):
    """`--snr-gamma` reaches the model's config (also when fine-tuning); it lowers the training loss of the same draws
    and leaves the held-out loss (eval mode) the plain epsilon-MSE; it is refused for discrete tokens."""
    common = dict(**DATA, **SIZES, vae_path=str(vae_dir[0]), cache_dir=str(tmp_path / "c"))
    plain_recipe, recipe = (
        FluidRecipe(FluidRecipeConfig(**common)),
        FluidRecipe(FluidRecipeConfig(**common, snr_gamma=5.0)),
    )
    torch.manual_seed(0)
    plain_model = plain_recipe.build_model()
    torch.manual_seed(0)
    model = recipe.build_model()
    assert plain_model.config.snr_gamma is None and model.config.snr_gamma == 5.0
    rows = recipe.build_eval_dataset()[:8]
    text = {k: rows[k] for k in recipe.text_input_names}

    def loss(m):
        return m(**text, image_tokens=rows["image_token_ids"], generator=torch.Generator().manual_seed(0)).loss

    assert loss(model.train()) < loss(plain_model.train())
    assert torch.equal(loss(model.eval()), loss(plain_model.eval()))
    run(recipe, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["snr_gamma"] == 5.0
    tuned = FluidRecipe(
        FluidRecipeConfig(**{**common, "vae_path": ""}, pretrained_model_name_or_path=str(tmp_path / "run" / "final"))
    )
    assert tuned.build_model().config.snr_gamma is None  # a setting of each run, not of the architecture
    with pytest.raises(ValueError, match="`snr_gamma` must be >= 0"):
        FluidRecipe(FluidRecipeConfig(**common, snr_gamma=-1.0))
    with pytest.raises(ValueError, match="leave `snr_gamma` at 0"):
        FluidRecipe(FluidRecipeConfig(**{**common, "vae_path": ""}, token_type="discrete", vq_path="x", snr_gamma=5.0))


def test_position_embedding_init_reaches_a_new_model_and_is_kept_when_fine_tuning(vae_dir, tmp_path, caplog):
    """`--position-embedding-init sincos_2d` starts a new model's image positions from the 2-D table (and is saved in
    its config); fine-tuning keeps the pretrained model's setting and warns that a different one is ignored; a bad
    value is refused up front."""
    common = dict(**DATA, **SIZES, vae_path=str(vae_dir[0]), cache_dir=str(tmp_path / "c"))
    model = FluidRecipe(FluidRecipeConfig(**common, position_embedding_init="sincos_2d")).build_model()
    grid, width = model.config.image_grid_size, model.config.hidden_size
    assert model.config.position_embedding_init == "sincos_2d"
    assert torch.equal(model.model.position_embeddings.weight, sincos_2d_embedding(grid, grid, width))
    assert model.config.to_dict()["position_embedding_init"] == "sincos_2d"

    run(FluidRecipe(FluidRecipeConfig(**common)), tmp_path / "run")  # the default: "normal"
    tuned = dict(**{**common, "vae_path": ""}, pretrained_model_name_or_path=str(tmp_path / "run" / "final"))
    with caplog.at_level(logging.WARNING):
        FluidRecipe(FluidRecipeConfig(**tuned)).build_model()
        assert "position_embedding_init" not in caplog.text
        recipe = FluidRecipe(FluidRecipeConfig(**tuned, position_embedding_init="sincos_2d"))
        assert recipe.build_model().config.position_embedding_init == "normal"
    ignored = (
        "{'position_embedding_init': 'sincos_2d'} are ignored (the model has {'position_embedding_init': 'normal'})"
    )
    assert ignored in caplog.text
    with pytest.raises(ValueError, match="`position_embedding_init` must be one of .*'rope'"):
        FluidRecipe(FluidRecipeConfig(**common, position_embedding_init="rope"))
