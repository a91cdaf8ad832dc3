"""Checkpoints shipped inside the package (Hub folder layout, model card included), so the main command makes a real
picture offline. They are produced by the package's own `hf-t2i train` recipes (see each folder's README.md) and
made shippable by `hf_t2i.export.export_checkpoint` (`hf-t2i export`)."""

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
    "muse": "muse-shapes",
    "dalle-emoji": "dalle-emoji",  # the real-data demo: 32 px emoji with name-and-keyword captions
}
#: what `hf-t2i generate` draws with when no `--model` is given: the shipped checkpoint whose pictures follow the
#: caption best (the README's table of shipped checkpoints)
DEFAULT_CHECKPOINT = "fluid"


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


__all__ = ["DEFAULT_CHECKPOINT", "SHIPPED_CHECKPOINTS", "SHIPPED_DIR", "resolve_checkpoint"]
