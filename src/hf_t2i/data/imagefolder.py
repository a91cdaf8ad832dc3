"""The `imagefolder` dataset: the user's own images with captions in `metadata.jsonl`, via datasets' loader.

Layout (datasets' "imagefolder" convention):

    my_images/
      metadata.jsonl     {"file_name": "cat.png", "text": "a cat on a sofa"}, one JSON object per line
      cat.png
      ...
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets


def _metadata_columns(metadata: Path) -> set[str]:
    """Keys of the first JSON object in a metadata.jsonl file."""
    with metadata.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    return set(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{metadata} is not valid JSON lines: {error}.") from error
    raise ValueError(f"{metadata} is empty; add one line per image, e.g. {{'file_name': 'a.png', 'text': '...'}}.")


def build_imagefolder_dataset(
    path: str | Path, caption_column: str = "text", cache_dir: str | Path | None = None
) -> datasets.Dataset:
    """Load a folder of images captioned by `metadata.jsonl` as a Dataset with columns image (RGB) and text.

    Args:
        path: the folder; `metadata.jsonl` (at its root or in sub-folders) maps `file_name` to a caption.
        caption_column: the metadata key holding the caption; renamed to "text".
        cache_dir: datasets' Arrow cache for the loaded folder (default: the `HF_DATASETS_CACHE` location).

    Returns:
        Dataset with image, text and any other metadata columns.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"path={str(path)!r} is not an existing folder; point it at the folder holding your images.")
    metadata_files = sorted(folder.rglob("metadata.jsonl"))
    if not metadata_files:
        raise ValueError(
            f"path={str(path)!r} has no metadata.jsonl; add one with a line per image, e.g. "
            f'{{"file_name": "0001.png", "{caption_column}": "a red circle"}}.'
        )
    for metadata in metadata_files:
        columns = _metadata_columns(metadata)
        if caption_column not in columns:
            raise ValueError(
                f"caption_column={caption_column!r} is not a key of {metadata} (keys: {sorted(columns)}); "
                "pass the key that holds the captions."
            )
        if "file_name" not in columns:
            raise ValueError(
                f"{metadata} lacks the 'file_name' key that names each image file (keys: {sorted(columns)})."
            )
    dataset = datasets.load_dataset(
        "imagefolder", data_dir=str(folder), split="train", cache_dir=None if cache_dir is None else str(cache_dir)
    )
    if caption_column != "text":
        if "text" in dataset.column_names:
            raise ValueError(
                f"metadata has both {caption_column!r} and 'text'; rename one of them so the caption becomes 'text'."
            )
        dataset = dataset.rename_column(caption_column, "text")
    return dataset.cast_column("image", datasets.Image(mode="RGB"))
