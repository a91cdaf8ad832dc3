"""Any image-caption dataset `datasets` can read: a Hub id, a local dataset folder, or a glob of parquet /
webdataset shards, with columns renamed to the package's `image` (RGB) and `text`.

| `name` | read as |
|---|---|
| `"user/laion-subset"` | `datasets.load_dataset(name)` (a Hub dataset id; needs the network and maybe a login) |
| `"shards/*.tar"`, `"data/train-*.parquet"` | the `webdataset` / `parquet` builder over those files (one format) |
| a folder of `.tar` / `.parquet` / `.arrow` / `.jsonl` / `.csv` files, or images with `metadata.jsonl` | `datasets.load_dataset(folder)` (datasets infers the builder; file names such as `train-*.parquet` and `validation-*.parquet` become splits) |
| a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` | `datasets.load_from_disk` |

A LAION-style webdataset shard holds `<key>.jpg` (or `.png`, `.webp`) and `<key>.txt` members, which `datasets` turns
into the columns `jpg` and `txt`; `image_column` / `caption_column` default to the first column found among
`IMAGE_COLUMNS` / `CAPTION_COLUMNS`, so such shards need no flags. Other columns are dropped.

With `streaming=True` nothing is downloaded or converted up front: the result is a `datasets.IterableDataset` read
shard by shard (what `hf-t2i train --streaming` trains on; see `hf_t2i.training.streaming`).
"""

from __future__ import annotations

import glob
from pathlib import Path

import datasets


IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp")
CAPTION_COLUMNS = ("text", "caption", "txt")
SHARD_BUILDERS = {
    ".parquet": "parquet",
    ".tar": "webdataset",
    ".arrow": "arrow",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
}


def _is_saved_to_disk(folder: Path) -> bool:
    """True for a folder written by `Dataset.save_to_disk` (state.json) or `DatasetDict.save_to_disk`."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _shard_files(pattern: str) -> list[str]:
    """The files a glob pattern (or one file path) names, refusing none and mixed formats."""
    files = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
    if not files:
        raise ValueError(f"dataset_name={pattern!r} matches no file; check the path or glob pattern.")
    suffixes = sorted({Path(f).suffix.lower() for f in files})
    unknown = [s for s in suffixes if s not in SHARD_BUILDERS]
    if unknown or len({SHARD_BUILDERS[s] for s in suffixes}) > 1:
        raise ValueError(
            f"dataset_name={pattern!r} matches files of suffixes {suffixes}; pass shards of one format among "
            f"{sorted(SHARD_BUILDERS)} (e.g. 'shards/*.tar' or 'data/*.parquet')."
        )
    return files


def _load_raw(name: str, config_name: str | None, streaming: bool, cache_dir: str | None):
    """`datasets.DatasetDict` / `IterableDatasetDict` (all splits) of `name`, read as the module docstring says."""
    path = Path(name).expanduser()
    cache = None if cache_dir is None else str(cache_dir)
    if path.is_dir() and _is_saved_to_disk(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
        if streaming:
            return datasets.IterableDatasetDict({split: ds.to_iterable_dataset() for split, ds in loaded.items()})
        return loaded
    if path.is_dir():
        return datasets.load_dataset(str(path), config_name, streaming=streaming, cache_dir=cache)
    if path.is_file() or glob.has_magic(name):
        files = _shard_files(name)
        builder = SHARD_BUILDERS[Path(files[0]).suffix.lower()]
        return datasets.load_dataset(builder, data_files={"train": files}, streaming=streaming, cache_dir=cache)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ValueError(
            f"dataset_name={name!r} is neither an existing folder / file nor a Hub dataset id ('user/name'); "
            "check the path."
        )
    return datasets.load_dataset(name, config_name, streaming=streaming, cache_dir=cache)


def _first_row(dataset) -> dict:
    """The first example (read without decoding images), to see the columns of a stream whose features are
    unknown."""
    source = dataset.decode(False) if isinstance(dataset, datasets.IterableDataset) else dataset
    for row in source.take(1) if isinstance(dataset, datasets.IterableDataset) else source.select(range(1)):
        return row
    raise ValueError("the dataset is empty: it has no row to train on.")


def _pick_column(columns: list[str], given: str | None, candidates: tuple[str, ...], argument: str) -> str:
    if given is not None:
        if given not in columns:
            raise ValueError(
                f"{argument}={given!r} is not a column of the dataset (columns: {columns}); pass one of them."
            )
        return given
    for candidate in candidates:
        if candidate in columns:
            return candidate
    raise ValueError(
        f"none of the columns {columns} is one of {list(candidates)}; pass {argument} with the column to use."
    )


def _standardize(dataset, image_column: str | None, caption_column: str | None):
    """Keep the image and caption columns only, named `image` (RGB `datasets.Image`) and `text`."""
    features = dataset.features
    columns = list(features) if features is not None else list(_first_row(dataset))
    image = _pick_column(columns, image_column, IMAGE_COLUMNS, "image_column")
    caption = _pick_column(columns, caption_column, CAPTION_COLUMNS, "caption_column")
    if image == caption:
        raise ValueError(f"image_column and caption_column are both {image!r}; pass two different columns.")
    if features is not None and caption in features and features[caption] != datasets.Value("string"):
        raise ValueError(
            f"caption_column={caption!r} holds {features[caption]}, not strings; pass the column of caption text."
        )
    dataset = dataset.select_columns([image, caption])
    dataset = dataset.rename_columns({k: v for k, v in ((image, "image"), (caption, "text")) if k != v})
    try:
        return dataset.cast_column("image", datasets.Image(mode="RGB"))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"image_column={image!r} cannot be read as images ({error}); pass the column holding image bytes or paths."
        ) from error


def load_image_text_dataset(
    name: str,
    split: str | None = None,
    *,
    config_name: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
):
    """Load `name` (Hub id, folder, or shard glob; see the module docstring) with columns `image` and `text`.

    Args:
        name: what to load.
        split: one split ("train", "validation", ...) or None for all of them.
        config_name: the dataset configuration (Hub datasets with several), as `load_dataset`'s `name`.
        image_column: the column of images (bytes, paths or images); default: the first of `IMAGE_COLUMNS` present.
        caption_column: the column of captions; default: the first of `CAPTION_COLUMNS` present.
        streaming: return `datasets.IterableDataset`s read lazily, shard by shard, instead of Arrow tables.
        cache_dir: datasets' cache of converted (non-streaming) data; default `HF_DATASETS_CACHE`.

    Returns:
        A `Dataset` / `IterableDataset` with `split`, else a `DatasetDict` / `IterableDatasetDict`; images decode to
        RGB PIL images.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset_name={name!r} is invalid: pass a Hub dataset id, a folder or a shard glob.")
    loaded = _load_raw(name, config_name, streaming, cache_dir)
    if split is not None:
        if split not in loaded:
            raise ValueError(f"split={split!r} is not a split of {name!r} (splits: {sorted(loaded)}).")
        return _standardize(loaded[split], image_column, caption_column)
    for key in list(loaded):
        loaded[key] = _standardize(loaded[key], image_column, caption_column)
    return loaded
