"""The shared Accelerate training loop of hf_t2i and its per-model recipes.

Every model trains in the same loop (one place for mixed precision, accumulation, EMA, checkpoints and exact resume;
several processes come from `accelerate launch`), and in two stages: first the image tokenizer, then the prior on
tokens that the frozen tokenizer computed once per image and cached on disk.

A model is trained by writing a `Recipe` (what to build, which loss) and calling `train(recipe, TrainingConfig)`,
or from the shell with `hf-t2i train <recipe-name>` once the recipe is registered with `@register_recipe`.
"""

from .checkpointing import TrainState, list_checkpoints
from .cli import add_train_subparser, build_train_parser, parse_train_args, run_train
from .config import TrainingConfig
from .data_utils import EpochShuffleSampler, cached_map
from .recipe import RECIPES, Recipe, RecipeConfig, get_recipe, list_recipes, register_recipe
from .streaming import StreamingDataset
from .trainer import make_image_grid, train


__all__ = [
    "RECIPES",
    "EpochShuffleSampler",
    "Recipe",
    "RecipeConfig",
    "StreamingDataset",
    "TrainState",
    "TrainingConfig",
    "add_train_subparser",
    "build_train_parser",
    "cached_map",
    "get_recipe",
    "list_checkpoints",
    "list_recipes",
    "make_image_grid",
    "parse_train_args",
    "register_recipe",
    "run_train",
    "train",
]
