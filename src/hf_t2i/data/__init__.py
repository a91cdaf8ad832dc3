"""Dataset builders: each returns a `datasets.Dataset` with an `image` column (RGB) and a `text` caption column.

| name | builder | source |
|---|---|---|
| shapes | `build_shapes_dataset` | generated in code; GenEval-style tasks, held-out colour/shape pairs |
| emoji | `build_emoji_dataset` | pinned npm packages (Twemoji, Noto) + emojibase names and keywords |
| imagefolder | `build_imagefolder_dataset` | your folder of images with `metadata.jsonl` captions |
| fashion_mnist | `build_fashion_mnist_dataset` | Debian package `dataset-fashion-mnist` |

Any other image-caption set `datasets` reads (a Hub id, a local folder, parquet / webdataset shards, streamed or
not) comes through `load_image_text_dataset` (`external.py`), with the same `image` and `text` columns.
"""

from __future__ import annotations

from collections.abc import Callable

import datasets

from .emoji import build_emoji_dataset, install_emoji_packages, split_by_concept
from .external import load_image_text_dataset
from .fashion_mnist import build_fashion_mnist_dataset
from .imagefolder import build_imagefolder_dataset
from .shapes import HELD_OUT_PAIRS, build_contradicting_twins, build_shapes_dataset, is_held_out


DATASETS: dict[str, Callable[..., datasets.Dataset]] = {
    "shapes": build_shapes_dataset,
    "emoji": build_emoji_dataset,
    "imagefolder": build_imagefolder_dataset,
    "fashion_mnist": build_fashion_mnist_dataset,
}


def load_dataset_by_name(name: str, **kwargs) -> datasets.Dataset:
    """Build the dataset registered under `name` in `DATASETS`, passing `kwargs` to its builder.

    Example: `load_dataset_by_name("shapes", num_samples=1000, split="test")`.
    """
    if name not in DATASETS:
        raise ValueError(f"name={name!r} is not a known dataset; choose one of {sorted(DATASETS)}.")
    return DATASETS[name](**kwargs)


__all__ = [
    "DATASETS",
    "HELD_OUT_PAIRS",
    "build_emoji_dataset",
    "build_fashion_mnist_dataset",
    "build_imagefolder_dataset",
    "build_contradicting_twins",
    "build_shapes_dataset",
    "install_emoji_packages",
    "is_held_out",
    "load_dataset_by_name",
    "load_image_text_dataset",
    "split_by_concept",
]
