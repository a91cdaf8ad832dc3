"""Loader files for the generic Hugging Face loaders: what makes a saved hf_t2i folder (a Hub repository) load with
`diffusers.DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)` and
`transformers.AutoModel.from_pretrained(repo, trust_remote_code=True)` (`AutoConfig`, `AutoProcessor` likewise) in a
program that never imports hf_t2i.

Neither library knows hf_t2i's classes by name: diffusers looks `model_index.json`'s `_class_name` up in the
`diffusers` module, transformers looks `config.json`'s `model_type` up in its own registry (which `import hf_t2i`
extends, see `hf_t2i.auto`). Both read "remote code" instead when the folder carries it:

- transformers: `config.json`'s `auto_map` names `module.Class` for each Auto class (`AutoConfig`, `AutoModel`, ...),
  the module being a file of the folder;
- diffusers: `model_index.json`'s `_class_name` is a `[module, Class]` pair whose module is a file of the folder.

The files written here (`configuration_hf_t2i.py`, `modeling_hf_t2i.py`, `processing_hf_t2i.py`,
`pipeline_hf_t2i.py`) hold no model code: each imports the installed hf_t2i and names its classes, so a loaded
object is exactly the one `hf_t2i.XPipeline.from_pretrained(repo)` returns. Without hf_t2i installed they raise an
`ImportError` saying how to install it (it is not on PyPI). The `auto_map` entries mirror what `import hf_t2i`
registers, so both routes give the same classes.

hf_t2i's own `from_pretrained` never runs these files: it knows its classes (see
`T2IPipeline._dict_from_json_file`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


# hf_t2i is not published on PyPI: cards and loader files tell users to install it from a clone of its repository.
INSTALL_COMMAND = "pip install -e ./hf_t2i  # a clone of the hf_t2i repository"

CONFIGURATION_MODULE = "configuration_hf_t2i"
MODELING_MODULE = "modeling_hf_t2i"
PROCESSING_MODULE = "processing_hf_t2i"
PIPELINE_MODULE = "pipeline_hf_t2i"

_TEMPLATE = '''"""Loads {what} from the installed hf_t2i package; written by hf_t2i's `save_pretrained`.

This file holds no model code. It lets

    {loader}

find hf_t2i's classes in a program that does not import hf_t2i.
"""

import importlib


# imported by name: the remote-code import checks of transformers and diffusers would otherwise suggest
# `pip install hf_t2i`, and hf_t2i is not on PyPI
try:
    hf_t2i = importlib.import_module("hf_t2i")
except ModuleNotFoundError as error:
    if error.name != "hf_t2i":
        raise
    raise ImportError(
        "This checkpoint was saved with hf_t2i, which is not installed. hf_t2i is not on PyPI: install it from a "
        "clone of its repository, then load the checkpoint again:\\n    {install}"
    ) from error

{assignments}
'''


def loader_source(names: list[str], what: str, loader: str) -> str:
    """The text of a loader file that re-exports hf_t2i's classes `names`."""
    assignments = "\n".join(f"{name} = hf_t2i.{name}" for name in names)
    return _TEMPLATE.format(what=what, loader=loader, install=INSTALL_COMMAND, assignments=assignments)


def _hf_t2i_class(cls) -> bool:
    return isinstance(cls, type) and cls.__module__.split(".")[0] == "hf_t2i"


def auto_classes(config_class: type) -> dict[str, type]:
    """The transformers Auto classes that `import hf_t2i` registers for `config_class`, as {Auto class name: hf_t2i
    class} (`AutoConfig` included; `AutoProcessor` only where the model has a processor)."""
    from transformers import AutoModel, AutoModelForImageTextToText
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    from . import auto

    auto.register_all()
    found = {"AutoConfig": config_class}
    for name, mapping in (
        ("AutoModel", AutoModel._model_mapping),
        ("AutoModelForImageTextToText", AutoModelForImageTextToText._model_mapping),
        ("AutoProcessor", PROCESSOR_MAPPING),
    ):
        try:
            cls = mapping[config_class]
        except KeyError:
            continue
        if _hf_t2i_class(cls):
            found[name] = cls
    return found


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: Path, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _hf_t2i_config_class(config: dict) -> type | None:
    """The hf_t2i config class of a config.json's `model_type`, or None (a transformers / diffusers model)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from . import auto

    auto.register_all()
    model_type = config.get("model_type")
    if "_diffusers_version" in config or not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return None
    config_class = CONFIG_MAPPING[model_type]
    return config_class if _hf_t2i_class(config_class) else None


def write_model_remote_code(folder: str | os.PathLike, processor: bool = False) -> bool:
    """Give the hf_t2i model saved in `folder` (its config.json) an `auto_map` and the loader files it names.

    Args:
        folder: a folder written by an hf_t2i model's `save_pretrained` (or a pipeline folder, whose root holds its
            model).
        processor: the folder also holds the model's processor (a pipeline folder): map `AutoProcessor` too.

    Returns:
        Whether anything was written (False for a folder without an hf_t2i model's config.json).
    """
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    config_class = None if config is None else _hf_t2i_config_class(config)
    if config_class is None:
        return False
    classes = auto_classes(config_class)
    if not processor:
        classes.pop("AutoProcessor", None)
    modules = {"AutoConfig": CONFIGURATION_MODULE, "AutoProcessor": PROCESSING_MODULE}
    # entries of other loader files are kept; hf_t2i's are written afresh (a model saved from a pipeline's root
    # loses its `AutoProcessor`)
    ours = (CONFIGURATION_MODULE, MODELING_MODULE, PROCESSING_MODULE)
    old = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    auto_map = {name: ref for name, ref in old.items() if not (isinstance(ref, str) and ref.split(".")[0] in ours)}
    for auto_name, cls in classes.items():
        auto_map[auto_name] = f"{modules.get(auto_name, MODELING_MODULE)}.{cls.__name__}"
    if auto_map != old:
        _write_json(folder / "config.json", {**config, "auto_map": auto_map})
    files = {
        CONFIGURATION_MODULE: ([config_class.__name__], "this model's configuration", "transformers.AutoConfig"),
        MODELING_MODULE: (
            sorted({cls.__name__ for name, cls in classes.items() if name not in modules}),
            "this model's classes",
            "transformers.AutoModel",
        ),
    }
    if "AutoProcessor" in classes:
        files[PROCESSING_MODULE] = (
            [classes["AutoProcessor"].__name__],
            "this model's processor",
            "transformers.AutoProcessor",
        )
    for module, (names, what, loader) in files.items():
        _write(
            folder / f"{module}.py",
            loader_source(names, what, f"{loader}.from_pretrained(..., trust_remote_code=True)"),
        )
    return True


def pipeline_class_name(index: dict) -> str | None:
    """The pipeline class a model_index.json names: its `_class_name`, or the class of the `["pipeline_hf_t2i",
    "<Name>Pipeline"]` pair that `write_pipeline_remote_code` writes."""
    name = index.get("_class_name")
    if isinstance(name, list) and len(name) == 2 and name[0] == PIPELINE_MODULE:
        name = name[1]
    return name if isinstance(name, str) else None


def write_pipeline_remote_code(folder: str | os.PathLike) -> bool:
    """Make the hf_t2i pipeline saved in `folder` loadable by `DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)`: `model_index.json`'s `_class_name` becomes `["pipeline_hf_t2i", "<Name>Pipeline"]`,
    `pipeline_hf_t2i.py` is written, and the model at the root gets its `auto_map` (with `AutoProcessor` when the
    processor is saved at the root too).

    Returns:
        Whether anything was written (False for a folder without an hf_t2i pipeline's model_index.json).
    """
    from diffusers import DiffusionPipeline

    import hf_t2i

    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    name = None if index is None else pipeline_class_name(index)
    pipeline_class = getattr(hf_t2i, name, None) if name else None
    if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, DiffusionPipeline)):
        return False  # not one of hf_t2i's pipelines: its loader file could not name it
    if index.get("_class_name") != [PIPELINE_MODULE, name]:
        _write_json(folder / "model_index.json", {**index, "_class_name": [PIPELINE_MODULE, name]})
    loader = "diffusers.DiffusionPipeline.from_pretrained(..., trust_remote_code=True)"
    _write(folder / f"{PIPELINE_MODULE}.py", loader_source([name], "this pipeline", loader))
    processor = index.get("processor")
    has_processor = isinstance(processor, list) and isinstance(processor[0], str) and processor[0].startswith("hf_t2i")
    write_model_remote_code(folder, processor=has_processor)
    return True


def write_remote_code(folder: str | os.PathLike) -> bool:
    """`write_pipeline_remote_code` for a pipeline folder, else `write_model_remote_code`; nothing for a folder of
    a transformers or diffusers model. Idempotent. Returns whether `folder` got loader files."""
    return write_pipeline_remote_code(folder) or write_model_remote_code(folder)


@contextlib.contextmanager
def auto_class_registration_ignored(*objects) -> Iterator[None]:
    """While saving `objects`, ignore transformers' `register_for_auto_class` on their hf_t2i classes.

    transformers registers a class it loaded through `auto_map` (`model_class.register_for_auto_class(...)`), and
    `save_pretrained` of a registered class copies the file that defines it into the saved folder. hf_t2i's files
    import the rest of the package relatively, so the copy cannot work (and is not needed): the folder gets
    hf_t2i's loader files instead.
    """
    classes = {type(obj) for obj in objects if _hf_t2i_class(type(obj)) and vars(type(obj)).get("_auto_class")}
    saved = {cls: cls._auto_class for cls in classes}
    for cls in classes:
        cls._auto_class = None
    try:
        yield
    finally:
        for cls, value in saved.items():
            cls._auto_class = value


__all__ = [
    "INSTALL_COMMAND",
    "auto_class_registration_ignored",
    "auto_classes",
    "loader_source",
    "pipeline_class_name",
    "write_model_remote_code",
    "write_pipeline_remote_code",
    "write_remote_code",
]
