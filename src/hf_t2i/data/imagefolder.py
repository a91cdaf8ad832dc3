"""The `imagefolder` dataset: the user's own images with captions in `metadata.jsonl`, via datasets' loader.

Layout (datasets' "imagefolder" convention):

    my_images/
      metadata.jsonl     {"file_name": "cat.png", "text": "a cat on a sofa"}, one JSON object per line
      cat.png
      ...

Every image is decoded once up front (`validate_images`): an empty file, a file that is not an image (text saved as
.png), a truncated file or one PIL cannot decode is skipped, with one warning that counts and lists them; when no
image is left, a `ValueError` lists them instead. Pass `skip_bad_images=False` to refuse any bad file with that
report. Training therefore never dies later on a file it cannot name.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import datasets
from PIL import Image


_SHOWN = 20  # bad files listed by name in a warning / error


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


def image_problem(path: str | Path) -> str | None:
    """Why the image file at `path` cannot be used (empty, not an image, truncated, undecodable), or None."""
    try:
        if Path(path).stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as image:
            image.load()  # a full decode: `verify()` alone misses truncated JPEGs
    except Image.UnidentifiedImageError:
        return "not an image PIL can read"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"cannot decode ({error})"
    return None


def validate_images(paths: list[str]) -> dict[str, str]:
    """`{path: problem}` for every unusable image among `paths` (see `image_problem`)."""
    problems = {}
    for path in paths:
        problem = image_problem(path)
        if problem is not None:
            problems[path] = problem
    return problems


def _report(problems: dict[str, str], total: int) -> str:
    shown = "; ".join(f"{path}: {why}" for path, why in list(problems.items())[:_SHOWN])
    more = f"; ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return f"{len(problems)} of {total} image files are unusable: {shown}{more}"


def build_imagefolder_dataset(
    path: str | Path,
    caption_column: str = "text",
    cache_dir: str | Path | None = None,
    skip_bad_images: bool = True,
) -> datasets.Dataset:
    """Load a folder of images captioned by `metadata.jsonl` as a Dataset with columns image (RGB) and text.

    Args:
        path: the folder; `metadata.jsonl` (at its root or in sub-folders) maps `file_name` to a caption.
        caption_column: the metadata key holding the caption; renamed to "text".
        cache_dir: datasets' Arrow cache for the loaded folder (default: the `HF_DATASETS_CACHE` location).
        skip_bad_images: drop empty, non-image, truncated or undecodable files with a warning listing them
            (default); False raises a `ValueError` listing them instead. With no usable image left it always raises.

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
    dataset = _drop_bad_images(dataset, folder, skip_bad_images)
    if caption_column != "text":
        if "text" in dataset.column_names:
            raise ValueError(
                f"metadata has both {caption_column!r} and 'text'; rename one of them so the caption becomes 'text'."
            )
        dataset = dataset.rename_column(caption_column, "text")
    return dataset.cast_column("image", datasets.Image(mode="RGB"))


def _drop_bad_images(dataset: datasets.Dataset, folder: Path, skip_bad_images: bool) -> datasets.Dataset:
    """Decode every image of `dataset` once; drop (with a warning) or refuse the unusable ones."""
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    paths = [cell["path"] for cell in raw["image"]]
    problems = validate_images([p for p in paths if p is not None])
    if not problems:
        return dataset
    report = _report(problems, len(paths))
    if not skip_bad_images or len(problems) == len(paths):
        fix = "no usable image is left" if skip_bad_images else "skip_bad_images=False"
        raise ValueError(f"imagefolder {folder}: {report} ({fix}); replace or remove those files.")
    warnings.warn(f"imagefolder {folder}: skipping {report}.", stacklevel=3)
    keep = [i for i, p in enumerate(paths) if p not in problems]
    return dataset.select(keep)
