"""`TrainingConfig` validation and the generated `hf-t2i train` flags."""

import argparse
import dataclasses
import json
import os
from typing import Literal

import pytest

import hf_t2i.training.recipes  # noqa: E402, F401  (registers the package's recipes)
from hf_t2i.training import (
    RECIPES,
    Recipe,
    RecipeConfig,
    TrainingConfig,
    add_train_subparser,
    get_recipe,
    parse_train_args,
    register_recipe,
)
from hf_t2i.training.cli import main
from hf_t2i.training.recipe import load_builtin_recipes

from .training_toy import ToyConfig, ToyRecipe


load_builtin_recipes()
PACKAGE_RECIPES = sorted(name for name in RECIPES if name != "toy")


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_steps", 0),
        ("train_batch_size", -1),
        ("gradient_accumulation_steps", 1.5),
        ("learning_rate", 0.0),
        ("weight_decay", -0.1),
        ("adam_beta2", 1.0),
        ("adam_epsilon", 0),
        ("lr_scheduler", "cosine_restarts"),
        ("lr_warmup_steps", -1),
        ("min_lr_ratio", 2.0),
        ("max_grad_norm", 0.0),
        ("mixed_precision", "fp8"),
        ("gradient_checkpointing", "yes"),
        ("ema_decay", 1.0),
        ("checkpointing_steps", -5),
        ("checkpoints_total_limit", 0),
        ("log_steps", 0),
        ("seed", True),
        ("report_to", "mlflow"),
        ("output_dir", ""),
    ],
)
def test_bad_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"TrainingConfig\.{field}={value!r}"):
        TrainingConfig(**{"output_dir": "out", field: value})


def test_inconsistent_values_raise():
    with pytest.raises(ValueError, match="min_lr_ratio.*cosine"):
        TrainingConfig(output_dir="out", lr_scheduler="linear", min_lr_ratio=0.1)
    with pytest.raises(ValueError, match="lr_warmup_steps.*constant_with_warmup"):
        TrainingConfig(output_dir="out", lr_scheduler="constant", lr_warmup_steps=10)


def test_dict_and_json_round_trip(tmp_path):
    config = TrainingConfig(output_dir="out", max_steps=7, ema_decay=0.99, lr_scheduler="cosine", min_lr_ratio=0.1)
    assert TrainingConfig.from_dict(config.to_dict()) == config
    config.to_json_file(tmp_path / "c.json")
    assert TrainingConfig.from_json_file(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="max_step"):
        TrainingConfig.from_dict({"output_dir": "out", "max_step": 3})


def test_flags_cover_both_configs():
    recipe_config, config = parse_train_args(
        ToyRecipe,
        ["--max-steps", "3", "--ema_decay", "0.5", "--no-gradient-checkpointing", "--hidden", "8"]
        + ["--max-grad-norm", "none", "--crash-at-step", "2", "--mixed-precision", "bf16"],
    )
    assert (config.max_steps, config.ema_decay, config.max_grad_norm, config.mixed_precision) == (3, 0.5, None, "bf16")
    assert config.output_dir == os.path.join("runs", "toy")
    assert recipe_config == ToyConfig(hidden=8, crash_at_step=2)
    defaults, _ = parse_train_args(ToyRecipe, [])
    assert defaults == ToyConfig()


def test_bad_flag_value_raises_value_error():
    with pytest.raises(ValueError, match="max_steps"):
        parse_train_args(ToyRecipe, ["--max-steps", "0"])
    with pytest.raises(SystemExit):  # not a choice
        parse_train_args(ToyRecipe, ["--lr-scheduler", "exotic"])


def test_config_file_gives_defaults_flags_override(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"max_steps": 11, "hidden": 5, "learning_rate": 0.5}))
    recipe_config, config = parse_train_args(ToyRecipe, ["--config-file", str(tmp_path / "run.json"), "--hidden", "6"])
    assert (config.max_steps, config.learning_rate, recipe_config.hidden) == (11, 0.5, 6)


def test_recipe_flag_collision_raises():
    @dataclasses.dataclass
    class Clashing(RecipeConfig):
        learning_rate: float = 1.0

    class ClashingRecipe(ToyRecipe):
        name = "clashing"
        config_class = Clashing

    with pytest.raises(ValueError, match="learning_rate"):
        parse_train_args(ClashingRecipe, [])


def test_training_defaults_of_a_recipe():
    class FastToy(ToyRecipe):
        training_defaults = {"learning_rate": 3e-3, "max_steps": 9}

    _, config = parse_train_args(FastToy, [])
    assert (config.learning_rate, config.max_steps) == (3e-3, 9)
    _, config = parse_train_args(FastToy, ["--max-steps", "2"])
    assert config.max_steps == 2


def test_registry(monkeypatch):
    monkeypatch.setitem(RECIPES, "toy", ToyRecipe)
    assert get_recipe("toy") is ToyRecipe
    assert register_recipe(ToyRecipe) is ToyRecipe  # registering the same class twice is fine

    class Impostor(ToyRecipe):
        name = "toy"

    with pytest.raises(ValueError, match="already registered"):
        register_recipe(Impostor)
    with pytest.raises(ValueError, match="Unknown recipe 'nope'"):
        get_recipe("nope")
    with pytest.raises(TypeError):
        register_recipe(object)
    with pytest.raises(TypeError, match="ToyConfig"):
        ToyRecipe(config=RecipeConfig())


def test_recipe_base_requires_builders():
    with pytest.raises(NotImplementedError, match="build_model"):
        Recipe().build_model()


def test_package_cli_subcommand(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(RECIPES, "toy", ToyRecipe)
    parser = argparse.ArgumentParser(prog="hf-t2i")
    add_train_subparser(parser.add_subparsers(dest="command"))

    args = parser.parse_args(["train", "--list"])
    assert args.func(args) == 0 and "toy" in capsys.readouterr().out.split()

    argv = ["train", "toy", "--output-dir", str(tmp_path), "--max-steps", "2", "--hidden", "4", "--report-to", "none"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["global_step"] == 2
    assert os.path.exists(tmp_path / "final" / "toy.safetensors")

    with pytest.raises(SystemExit) as error:  # bad values end like argparse errors, naming the field
        main(["toy", "--max-steps", "-1"])
    assert error.value.code == 2 and "max_steps" in capsys.readouterr().err
    assert main(["unknown-recipe"]) == 2


@pytest.mark.parametrize("name", PACKAGE_RECIPES)
def test_every_package_recipe_prints_its_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"recipe '{name}'" in out and "--output-dir" in out


def test_recipe_field_types_become_flags():
    @dataclasses.dataclass
    class Typed(RecipeConfig):
        multipliers: tuple[int, ...] = (1, 2)
        loss: Literal["mse", "logit_laplace"] = "mse"
        text_encoder: str | None = None
        frozen: bool = True

    class TypedRecipe(ToyRecipe):
        name = "typed"
        config_class = Typed

    config, _ = parse_train_args(TypedRecipe, ["--multipliers", "1", "2", "4", "--loss", "logit_laplace"])
    assert config == Typed(multipliers=(1, 2, 4), loss="logit_laplace")
    config, _ = parse_train_args(TypedRecipe, ["--text-encoder", "minilm", "--no-frozen"])
    assert (config.text_encoder, config.frozen, config.multipliers) == ("minilm", False, (1, 2))
    with pytest.raises(SystemExit):
        parse_train_args(TypedRecipe, ["--loss", "l1"])
