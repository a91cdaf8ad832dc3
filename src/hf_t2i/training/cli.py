"""`hf-t2i train <recipe> [flags]`: flags generated from `TrainingConfig` and the recipe's config dataclass.

The package CLI wires it in with::

    train_parser = add_train_subparser(subparsers)   # sets `func=run_train`
    ...
    return args.func(args)

Because the recipe decides which flags exist, the `train` sub-command only parses the recipe name (and `--list`)
and hands the remaining arguments to a second parser built for that recipe by `build_train_parser`.
"""

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any, Literal

from .checkpointing import CheckpointError
from .config import TrainingConfig
from .recipe import Recipe, get_recipe, list_recipes
from .trainer import train


_NONE_STRINGS = ("none", "null")


# ------------------------------------------------------------------------------------ dataclass -> argparse
def _none_or(parse):
    """Parser for an `X | None` field: 'none' / 'null' mean None, anything else goes through `parse`."""

    def parse_optional(text: str):
        return None if text.lower() in _NONE_STRINGS else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its errors
    return parse_optional


def _argument_kwargs(field_type: Any, owner: str, name: str) -> dict[str, Any]:
    """argparse keyword arguments for one field type (bool, int, float, str, Literal, X | None, list/tuple)."""
    origin, args = typing.get_origin(field_type), typing.get_args(field_type)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            kwargs = _argument_kwargs(inner[0], owner, name)
            if "type" in kwargs and kwargs.get("action") is None:
                kwargs["type"] = _none_or(kwargs["type"])
                kwargs.pop("choices", None)  # 'none' would not be among them
                return kwargs
    if field_type is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"type": type(args[0]), "choices": list(args)}
    if field_type in (int, float, str):
        return {"type": field_type}
    if origin in (list, tuple) and args and args[0] in (int, float, str):
        return {"type": args[0], "nargs": "+"}
    raise TypeError(f"{owner}.{name} has type {field_type!r}, which has no CLI flag; use bool/int/float/str/Literal.")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, dataclass_type: type, defaults: dict[str, Any] | None = None, title: str = ""
) -> list[str]:
    """Add one `--field-name` flag per field of `dataclass_type`; return the field names.

    Help comes from `field.metadata["help"]`; `defaults` overrides the dataclass defaults; a field without any
    default becomes a required flag.
    """
    defaults = defaults or {}
    hints = typing.get_type_hints(dataclass_type)
    group = parser.add_argument_group(title or dataclass_type.__name__)
    names = []
    for field in dataclasses.fields(dataclass_type):
        kwargs = _argument_kwargs(hints[field.name], dataclass_type.__name__, field.name)
        if field.name in defaults:
            kwargs["default"] = defaults[field.name]
        elif field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            kwargs["default"] = field.default_factory()
        else:
            kwargs["required"] = True
        flag = f"--{field.name.replace('_', '-')}"
        # argparse formats help strings with %: a literal "10%" in a field's help must reach it as "10%%"
        help_text = field.metadata.get("help", "").replace("%", "%%")
        group.add_argument(flag, dest=field.name, help=help_text, **kwargs)
        names.append(field.name)
    return names


# ----------------------------------------------------------------------------------------- recipe parser
def _check_collisions(recipe_cls: type[Recipe]) -> None:
    """Recipe flags share the namespace of the training flags: a shared name is an error, not an override."""
    training = {f.name for f in dataclasses.fields(TrainingConfig)} | {"config_file"}
    shared = sorted(training & {f.name for f in dataclasses.fields(recipe_cls.config_class)})
    if shared:
        raise ValueError(
            f"{recipe_cls.config_class.__name__} field(s) {shared} of recipe {recipe_cls.name!r} collide with "
            "TrainingConfig flags; rename them (recipe defaults for training fields go in `training_defaults`)."
        )
    unknown = sorted(set(recipe_cls.training_defaults) - training)
    if unknown:
        raise ValueError(f"{recipe_cls.__name__}.training_defaults has unknown TrainingConfig field(s) {unknown}.")


def build_train_parser(recipe_cls: type[Recipe], prog: str | None = None) -> argparse.ArgumentParser:
    """The full flag set of `hf-t2i train <recipe>`: training flags, then the recipe's flags."""
    _check_collisions(recipe_cls)
    parser = argparse.ArgumentParser(
        prog=prog or f"hf-t2i train {recipe_cls.name}",
        description=(recipe_cls.__doc__ or "").strip().splitlines()[0] if recipe_cls.__doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config-file",
        dest="config_file",
        help="JSON file of flag values (training and recipe fields by name); explicit flags override it.",
    )
    training_defaults = {"output_dir": f"runs/{recipe_cls.name}", **recipe_cls.training_defaults}
    add_dataclass_arguments(parser, TrainingConfig, training_defaults, title="training (TrainingConfig)")
    title = f"recipe {recipe_cls.name!r} ({recipe_cls.config_class.__name__})"
    add_dataclass_arguments(parser, recipe_cls.config_class, title=title)
    return parser


def _apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Use the values of `--config-file` as parser defaults, so that explicit flags still win."""
    known, _ = parser.parse_known_args(argv)
    if not known.config_file:
        return
    with open(known.config_file, encoding="utf-8") as f:
        values = json.load(f)
    dests = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - dests)
    if unknown:
        parser.error(f"--config-file {known.config_file} has unknown field(s) {unknown}")
    for action in parser._actions:
        if action.dest in values:
            action.required = False
    parser.set_defaults(**values)


def _dashed(arg: str) -> str:
    """`--max_steps=3` -> `--max-steps=3`: underscore spellings (as in diffusers' scripts) are accepted too."""
    if not arg.startswith("--"):
        return arg
    flag, sep, value = arg.partition("=")
    return flag.replace("_", "-") + sep + value


def parse_train_args(recipe_cls: type[Recipe], argv: list[str], prog: str | None = None):
    """Parse `argv` into `(recipe config, TrainingConfig)`; invalid values raise `ValueError` naming the field."""
    parser = build_train_parser(recipe_cls, prog)
    argv = [_dashed(arg) for arg in argv]
    _apply_config_file(parser, argv)
    namespace = vars(parser.parse_args(argv))
    training_names = [f.name for f in dataclasses.fields(TrainingConfig)]
    training_config = TrainingConfig(**{name: namespace[name] for name in training_names})
    hints = typing.get_type_hints(recipe_cls.config_class)
    recipe_values = {}
    for field in dataclasses.fields(recipe_cls.config_class):
        value = namespace[field.name]
        is_tuple = typing.get_origin(hints[field.name]) is tuple and isinstance(value, list)
        recipe_values[field.name] = tuple(value) if is_tuple else value  # argparse's nargs="+" gives lists
    return recipe_cls.config_class(**recipe_values), training_config


# ----------------------------------------------------------------------------------------- sub-command
def add_train_subparser(subparsers) -> argparse.ArgumentParser:
    """Add the `train` sub-command to the package CLI's `subparsers`; it dispatches to `run_train`."""
    parser = subparsers.add_parser(
        "train",
        help="train a model with a registered recipe (`hf-t2i train --list`)",
        description="Train a model with a registered recipe. `hf-t2i train <recipe> --help` lists its flags.",
    )
    parser.add_argument("--list", action="store_true", help="list the registered recipes and exit")
    parser.add_argument("recipe", nargs="?", help="recipe name, see --list")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="training and recipe flags")
    parser.set_defaults(func=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Run `hf-t2i train` from the namespace of `add_train_subparser`; returns the process exit code."""
    if args.list or not args.recipe:
        names = list_recipes()
        print("\n".join(names) if names else "no recipes registered")
        if not args.list:
            print("usage: hf-t2i train <recipe> [flags]; pick a recipe above", file=sys.stderr)
        return 0 if args.list else 2
    try:
        recipe_cls = get_recipe(args.recipe)
    except ValueError as error:
        print(f"hf-t2i train: error: {error}", file=sys.stderr)
        return 2
    prog = f"hf-t2i train {args.recipe}"
    try:
        recipe_config, training_config = parse_train_args(recipe_cls, list(args.recipe_args), prog)
    except ValueError as error:  # bad values: report like argparse does (exit code 2), without a traceback
        build_train_parser(recipe_cls, prog).error(str(error))
    try:
        metrics = train(recipe_cls(recipe_config), training_config)
    except CheckpointError as error:  # a checkpoint that cannot be resumed: the message says which and why
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    if _is_main_process():
        print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m hf_t2i.training <recipe> ...`), e.g. under `torchrun` / `accelerate`."""
    parser = argparse.ArgumentParser(prog="python -m hf_t2i.training")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_subparser(subparsers)
    args = parser.parse_args(["train", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process
