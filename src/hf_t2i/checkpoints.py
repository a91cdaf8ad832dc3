"""Checkpoints shipped inside the package (Hub folder layout, model card included), so the main command makes a real
picture offline. They are produced by the package's own `hf-t2i train` recipes (see each folder's README.md)."""

from __future__ import annotations

import os
from pathlib import Path


SHIPPED_DIR = Path(__file__).parent / "shipped"
# short name -> folder under SHIPPED_DIR
SHIPPED_CHECKPOINTS = {
    "dalle": "dalle-shapes",
    "parti": "parti-shapes",
    "fluid": "fluid-shapes",
    "transfusion": "transfusion-shapes",
}
DEFAULT_CHECKPOINT = "dalle"


def resolve_checkpoint(name_or_path: str | os.PathLike) -> str:
    """A shipped checkpoint's short name (e.g. "dalle") or any folder / Hub id -> a path to load from."""
    name = os.fspath(name_or_path)
    if name in SHIPPED_CHECKPOINTS:
        path = SHIPPED_DIR / SHIPPED_CHECKPOINTS[name]
        if not (path / "model_index.json").is_file():
            raise ValueError(
                f"The shipped checkpoint {name!r} is missing from {path}; reinstall hf_t2i or pass `--model PATH`."
            )
        return str(path)
    return name


def set_compute_dtype(folder: str | os.PathLike, dtype: str = "float32") -> list[str]:
    """Set the top-level `"dtype"` of every transformers `config.json` under `folder` (stored weights keep their
    precision; loading casts them). Returns the configs changed."""
    import json

    changed = []
    for root, _, files in os.walk(folder):
        if "config.json" not in files:
            continue
        path = os.path.join(root, "config.json")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        if config.get("dtype", dtype) != dtype:
            config["dtype"] = dtype
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
            changed.append(path)
    return changed


def export_checkpoint(
    source: str | os.PathLike, destination: str | os.PathLike, model_card: str | os.PathLike | None = None, dtype=None
) -> str:
    """Copy a trained pipeline folder into a shippable one: weights stored in `dtype` (default float16, half the size),
    the model card as the folder's README.md. The saved configs keep `"dtype": "float32"`, so every loader
    (`from_pretrained`, `pipeline("text-to-image")`, the Auto classes) computes in float32 unless asked otherwise:
    float16 arithmetic is slow or unsupported on CPUs.

    This is how the checkpoints under `hf_t2i/shipped/` are made from a recipe's `final/` export, e.g.
    `hf-t2i export runs/dalle_prior/final src/hf_t2i/shipped/dalle-shapes --model-card model_cards/dalle-shapes.md`.
    """
    import shutil

    import torch

    from .pipelines import T2IPipeline

    source, destination = os.fspath(source), os.fspath(destination)
    if not os.path.isfile(os.path.join(source, "model_index.json")):
        raise ValueError(f"`source` ({source}) is not a saved pipeline folder (no model_index.json).")
    if model_card is not None and not os.path.isfile(model_card):
        raise ValueError(f"`model_card` ({model_card}) does not exist.")
    pipe = T2IPipeline.from_pretrained(source)
    pipe.to(dtype=dtype or torch.float16)
    pipe.save_pretrained(destination)
    set_compute_dtype(destination)
    if model_card is not None:
        shutil.copyfile(model_card, os.path.join(destination, "README.md"))
    return destination


__all__ = ["DEFAULT_CHECKPOINT", "SHIPPED_CHECKPOINTS", "export_checkpoint", "resolve_checkpoint", "set_compute_dtype"]
