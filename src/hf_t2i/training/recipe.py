"""`Recipe`: what a model author writes to train a model with the shared loop, and the recipe registry.

A recipe answers five questions for `train()`: which module is trained (`build_model`), on which data
(`build_train_dataset`, `collate_fn`), with which loss (`training_step`), which parameters move (`parameters`)
and how the result is shown and exported (`sample_images`, `evaluate`, `save_pretrained`). Everything else
(optimizer, schedule, precision, accumulation, EMA, checkpoints, logging, processes) belongs to the loop.

Example (stage 1 of DALL-E)::

    @dataclass
    class DVAERecipeConfig(RecipeConfig):
        image_size: int = field(default=32, metadata={"help": "training resolution"})
        temperature_decay_steps: int = 5000

    @register_recipe
    class DVAERecipe(Recipe):
        name = "dalle_dvae"
        config_class = DVAERecipeConfig
        training_defaults = {"learning_rate": 1e-3, "ema_decay": 0.999}

        def build_model(self):
            return DalleDVAE(DalleDVAEConfig(image_size=self.config.image_size))

        def build_train_dataset(self):
            return load_shapes(size=self.config.image_size).with_format("torch", columns=["pixel_values"])

        def training_step(self, model, batch, step):
            tau = max(1 / 16, 1 - step / self.config.temperature_decay_steps)  # annealed (paper 2.1)
            out = model(batch["pixel_values"], temperature=tau, generator=self.generator)
            return out.loss, {"temperature": tau}
"""

import dataclasses
import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset, default_collate


@dataclass
class RecipeConfig:
    """Base of a recipe's own hyperparameters (model sizes, data, loss schedules). Subclass it as a dataclass;
    every field becomes an `hf-t2i train <recipe>` flag, so names must not collide with `TrainingConfig`."""


class Recipe:
    """Base class of a training recipe (one per model and stage, e.g. "dalle_dvae", "dalle_prior").

    Subclasses set `name` (the registry key), `config_class` (a `RecipeConfig` dataclass) and optionally
    `training_defaults` (default `TrainingConfig` values for the CLI, e.g. `{"learning_rate": 1e-3}`), then
    override the builders. `train()` sets `self.accelerator` before calling any of them, so a recipe can use
    `self.accelerator.device` or `self.accelerator.is_main_process`; it is None outside training.

    `train()` also sets `self.generator` (after `build_model`): a `torch.Generator` on the training device, seeded
    per process and saved in every checkpoint. Draw the training noise from it (`generator=self.generator`) and
    an exact resume reproduces it; for sample grids prefer a fresh generator with a fixed seed.

    Call order inside `train()`: `build_model` -> `parameters` -> `build_train_dataset` / `build_eval_dataset`
    -> per micro-batch `collate_fn` and `training_step` -> periodically `sample_images` / `evaluate` (main
    process) -> `save_pretrained` (main process, EMA weights when EMA is on).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = RecipeConfig
    training_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any = None):
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} expects a {self.config_class.__name__} config, got {type(config).__name__}; "
                f"build it with {self.config_class.__name__}(...)."
            )
        self.config = config
        self.accelerator = None
        self.generator: torch.Generator | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the Accelerator: DataLoader workers started with 'spawn' receive `collate_fn` (a bound
        method, hence the recipe) by pickling, and an Accelerator cannot be pickled."""
        state = self.__dict__.copy()
        state["accelerator"] = None
        return state

    # ------------------------------------------------------------------------------------------ required
    def build_model(self) -> torch.nn.Module:
        """Return the module to train (freshly initialised, or loaded with `from_pretrained`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_model().")

    def build_train_dataset(self) -> Dataset:
        """Return the training set: any map-style dataset, e.g. a `datasets.Dataset` with torch format."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_train_dataset().")

    # ------------------------------------------------------------------------------------------ optional
    def build_eval_dataset(self) -> Dataset | None:
        """Return a held-out set; when given, `train()` logs its mean `training_step` loss as `eval/loss`."""
        return None

    def collate_fn(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Turn a list of dataset rows into a batch of tensors (default: `torch.utils.data.default_collate`)."""
        return default_collate(examples)

    def training_step(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Return `(loss, metrics)` for one micro-batch.

        Call the model through `model(...)` (its forward): `model` may be wrapped by DDP, which only syncs
        gradients of forward calls. `step` is the number of optimizer steps already taken, for schedules such as
        the dVAE Gumbel temperature. `metrics` (floats, or detached 0-d tensors: prefer these, since the loop reads
        them from the device only at logging steps, and `.item()` in every step makes the host wait for the
        accelerator) are averaged over the logging window on the main process.
        """
        out = model(**batch)
        return out.loss, {}

    def parameters(self, model: torch.nn.Module) -> Iterable[torch.nn.Parameter] | list[dict[str, Any]]:
        """Parameters to optimise (and average in the EMA); default: all with `requires_grad`.

        May also return AdamW parameter groups (`[{"params": [...], "weight_decay": 0.0}, ...]`).
        """
        return [p for p in model.parameters() if p.requires_grad]

    def sample_images(self, model: torch.nn.Module, step: int) -> list | None:
        """Return a few PIL images to show progress (saved as a grid every `sample_steps`), or None."""
        return None

    def evaluate(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Return extra evaluation metrics (logged under `eval/`); runs on the main process only."""
        return {}

    def save_pretrained(self, model: torch.nn.Module, output_dir: str) -> None:
        """Export the trained model: `model.save_pretrained`, or a bare `model.safetensors` for plain modules."""
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(output_dir)
            return
        from safetensors.torch import save_model

        save_model(model, os.path.join(output_dir, "model.safetensors"))

    def config_dict(self) -> dict[str, Any]:
        """The recipe config as a dict (logged next to the training config)."""
        return dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}


# ------------------------------------------------------------------------------------------------- registry
# The one explicit global of the package: recipe name -> recipe class, filled by `register_recipe`.
RECIPES: dict[str, type[Recipe]] = {}

# Module imported once to register the recipes shipped with the package (each model's recipe module).
BUILTIN_RECIPES_MODULE = "hf_t2i.training.recipes"


def register_recipe(recipe_cls: type[Recipe]) -> type[Recipe]:
    """Class decorator adding a `Recipe` subclass to `RECIPES` under its `name`."""
    if not (isinstance(recipe_cls, type) and issubclass(recipe_cls, Recipe)):
        raise TypeError(f"register_recipe expects a Recipe subclass, got {recipe_cls!r}.")
    name = recipe_cls.name
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"{recipe_cls.__name__}.name={name!r} is invalid: set a non-empty name without spaces.")
    if not (dataclasses.is_dataclass(recipe_cls.config_class) and isinstance(recipe_cls.config_class, type)):
        raise TypeError(f"{recipe_cls.__name__}.config_class must be a dataclass type (subclass RecipeConfig).")
    existing = RECIPES.get(name)
    if existing is not None and existing is not recipe_cls:
        raise ValueError(
            f"Recipe name {name!r} is already registered by {existing.__module__}.{existing.__qualname__}; "
            "pick another name."
        )
    RECIPES[name] = recipe_cls
    return recipe_cls


def load_builtin_recipes() -> None:
    """Import the package's recipe modules so that they register themselves."""
    importlib.import_module(BUILTIN_RECIPES_MODULE)


def get_recipe(name: str) -> type[Recipe]:
    """Return the recipe class registered as `name` (loading the built-in recipes first)."""
    load_builtin_recipes()
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; registered recipes: {sorted(RECIPES)}. See `hf-t2i train --list`.")
    return RECIPES[name]


def list_recipes() -> list[str]:
    """Sorted names of all registered recipes (built-ins included)."""
    load_builtin_recipes()
    return sorted(RECIPES)
