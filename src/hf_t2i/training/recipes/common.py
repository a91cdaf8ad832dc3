"""Pieces every text-to-image recipe shares: which data, how images become tensors, how runs are cached."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields

import torch
from transformers.utils import logging

from ..data_utils import cached_map
from ..recipe import RecipeConfig


logger = logging.get_logger(__name__)


@dataclass
class ImageTextDataConfig(RecipeConfig):
    """Where a recipe's image-text pairs come from: a built-in dataset (`hf_t2i.data`) or, with `dataset_name`, any
    dataset `datasets` reads (Hub id, folder, parquet / webdataset shards), optionally streamed."""

    dataset: str = field(
        default="shapes",
        metadata={"help": "shapes | emoji | fashion_mnist | imagefolder (built-in); set --dataset-name for any other"},
    )
    dataset_size: int = field(
        default=20000,
        metadata={"help": "shapes: training pairs to generate; --streaming: rows read to train the caption tokenizer"},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "imagefolder path, or the npm cache folder of the emoji set"}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "a datasets Hub id, a local dataset folder (parquet / webdataset .tar shards, imagefolder, "
            "save_to_disk) or a shard glob such as 'shards/*.tar'; replaces --dataset"
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "configuration of a --dataset-name with several (load_dataset's `name`)"}
    )
    image_column: str | None = field(
        default=None, metadata={"help": "--dataset-name column of images; default: image, jpg, jpeg, png or webp"}
    )
    caption_column: str | None = field(
        default=None, metadata={"help": "column of captions; default: text, caption or txt (imagefolder: text)"}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "stream --dataset-name shard by shard (no length; epochs and resume follow the stream)"},
    )
    shuffle_buffer_size: int = field(
        default=1000, metadata={"help": "--streaming: rows in the seeded shuffle buffer (0: stored order)"}
    )
    image_size: int = field(default=64, metadata={"help": "training resolution (square)"})
    eval_size: int = field(
        default=256,
        metadata={
            "help": "held-out pairs used for evaluation (--dataset-name: from its validation/test split if any)"
        },
    )
    data_seed: int = field(default=0, metadata={"help": "seed of dataset generation and splits"})
    shapes_tasks: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "shapes: the tasks training rows cycle through; repeat a name to weight it, e.g. "
            "'position position counting single_object two_objects colors color_attr' (default: all six once; "
            "evaluation rows always cycle through all six)"
        },
    )

    def __post_init__(self):
        if self.dataset_name is not None:
            if self.dataset not in ("shapes", "datasets"):
                raise ValueError(
                    f"dataset={self.dataset!r} and dataset_name={self.dataset_name!r} are both set; pass only one "
                    "(--dataset for a built-in set, --dataset-name for any other)."
                )
            self.dataset = "datasets"  # what training records; code testing `dataset == "shapes"` stays right
        elif self.dataset == "datasets":
            raise ValueError("dataset='datasets' needs dataset_name (--dataset-name): the dataset to load.")
        for name in ("dataset_config_name", "image_column", "streaming"):
            if getattr(self, name) not in (None, False) and self.dataset_name is None:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} only applies with dataset_name (--dataset-name); "
                    "drop it or pass the dataset to load."
                )
        if self.caption_column is not None and self.dataset not in ("datasets", "imagefolder"):
            raise ValueError(
                f"caption_column={self.caption_column!r} only applies to --dataset-name or --dataset imagefolder; "
                f"the {self.dataset!r} set has its own captions."
            )
        if isinstance(self.shuffle_buffer_size, bool) or self.shuffle_buffer_size < 0:
            raise ValueError(f"shuffle_buffer_size={self.shuffle_buffer_size!r} is invalid: pass an integer >= 0.")
        if isinstance(self.eval_size, bool) or self.eval_size < 1:
            raise ValueError(f"eval_size={self.eval_size!r} is invalid: pass an integer >= 1.")
        self.shapes_tasks = tuple(self.shapes_tasks)  # a JSON config file gives a list
        if self.shapes_tasks:
            from ...data.shapes import TASKS

            if self.dataset != "shapes":
                raise ValueError(
                    f"shapes_tasks={self.shapes_tasks!r} only applies to --dataset shapes, not {self.dataset!r}; "
                    "drop it."
                )
            unknown = sorted(set(self.shapes_tasks) - set(TASKS))
            if unknown:
                raise ValueError(
                    f"shapes_tasks={self.shapes_tasks!r} names unknown tasks {unknown}; use names of {TASKS}."
                )


def load_image_text_splits(config: ImageTextDataConfig):
    """(train, eval) datasets with `image` and `text` columns for `config.dataset`.

    shapes: generated train / validation splits (the held-out colour-shape pairs stay out of both; `test` holds
    them). emoji: split by concept, so evaluation concepts are unseen. fashion_mnist: its train / test files.
    imagefolder: a seeded split of the folder. `dataset_name`: see `load_dataset_splits`; with `streaming` the
    training split is a `StreamingDataset` (no length), the evaluation split always a small in-memory `Dataset`.
    """
    from ... import data

    c = config
    if c.dataset == "datasets":
        return load_dataset_splits(c)
    if c.dataset == "shapes":
        train = data.build_shapes_dataset(
            c.dataset_size, "train", c.image_size, seed=c.data_seed, tasks=c.shapes_tasks or None
        )
        return train, data.build_shapes_dataset(c.eval_size, "validation", c.image_size, seed=c.data_seed)
    if c.dataset == "emoji":
        splits = data.split_by_concept(data.build_emoji_dataset(c.data_dir, image_size=c.image_size), seed=c.data_seed)
        evaluation = splits["test"]
        return splits["train"], evaluation.select(range(min(c.eval_size, len(evaluation))))
    if c.dataset == "fashion_mnist":
        train = data.build_fashion_mnist_dataset("train", image_size=c.image_size)
        return train, data.build_fashion_mnist_dataset("test", image_size=c.image_size, num_samples=c.eval_size)
    if c.dataset == "imagefolder":
        if not c.data_dir:
            raise ValueError("`data_dir` is required with `dataset=imagefolder`: the folder with metadata.jsonl.")
        folder = data.build_imagefolder_dataset(c.data_dir, caption_column=c.caption_column or "text")
        splits = folder.train_test_split(test_size=c.eval_size, seed=c.data_seed)
        return splits["train"], splits["test"]
    raise ValueError(f"`dataset` must be one of {sorted(data.DATASETS)}, got {c.dataset!r}.")


EVAL_SPLIT_NAMES = ("validation", "valid", "val", "test")


def load_dataset_splits(config: ImageTextDataConfig):
    """(train, eval) of `config.dataset_name`: its "train" split (or its only one) for training; for evaluation the
    first `eval_size` rows of its validation / test split when it has one, else `eval_size` rows held out of
    training (a seeded random split; when streaming, the first `eval_size` rows of the stream, which the training
    stream then skips wherever they fall)."""
    from ... import data
    from ..streaming import StreamingDataset, row_digest

    c = config
    splits = data.load_image_text_dataset(
        c.dataset_name,
        config_name=c.dataset_config_name,
        image_column=c.image_column,
        caption_column=c.caption_column,
        streaming=c.streaming,
    )
    names = list(splits)
    train_name = "train" if "train" in splits else names[0] if len(names) == 1 else None
    if train_name is None:
        raise ValueError(f"dataset_name={c.dataset_name!r} has splits {names} but no 'train' split to train on.")
    train = splits[train_name]
    eval_name = next((name for name in EVAL_SPLIT_NAMES if name in splits), None)
    if not c.streaming:
        if eval_name is not None:
            evaluation = splits[eval_name]
            return train, evaluation.select(range(min(c.eval_size, len(evaluation))))
        if c.eval_size >= len(train):
            raise ValueError(
                f"eval_size={c.eval_size} leaves no training row of the {len(train)} in {c.dataset_name!r}; "
                "pass a smaller --eval-size."
            )
        held_out = train.train_test_split(test_size=c.eval_size, seed=c.data_seed)
        return held_out["train"], held_out["test"]
    source = splits[eval_name] if eval_name is not None else train
    rows = list(source.decode(False).take(c.eval_size))
    if not rows:
        raise ValueError(f"dataset_name={c.dataset_name!r} has no rows to evaluate on.")
    evaluation = datasets_from_rows(rows, source.features)
    exclude = frozenset() if eval_name is not None else frozenset(row_digest(row) for row in rows)
    stream = StreamingDataset(train, seed=c.data_seed, shuffle_buffer_size=c.shuffle_buffer_size, exclude=exclude)
    return stream, evaluation


def datasets_from_rows(rows: list[dict], features):
    """An in-memory `datasets.Dataset` of raw rows whose fingerprint is their content, so that caches keyed by it
    (`cached_map`) are reused by a later run on the same rows, and by every process."""
    import datasets

    from ..streaming import row_digest

    dataset = datasets.Dataset.from_list(rows, features=features)
    return datasets.Dataset(
        dataset.data, info=dataset.info, fingerprint=fingerprint(*(row_digest(row) for row in rows))
    )


def first_rows(dataset, num_rows: int):
    """The first `num_rows` rows of a training split as a `datasets.Dataset` (all of them for a smaller map-style
    set): a fixed sample, e.g. the captions a tokenizer is trained on."""
    from ..streaming import StreamingDataset

    if isinstance(dataset, StreamingDataset):
        return dataset.head(num_rows)
    return dataset.select(range(min(num_rows, len(dataset)))) if num_rows < len(dataset) else dataset


def training_captions(config: ImageTextDataConfig, train) -> list[str]:
    """Captions to train a caption tokenizer on: every training caption, or the first `dataset_size` of a stream."""
    from ..streaming import StreamingDataset

    return first_rows(train, config.dataset_size)["text"] if isinstance(train, StreamingDataset) else train["text"]


def with_pixel_values(dataset, image_size: int, keep: tuple[str, ...] = ()):
    """Add `pixel_values` (3, S, S) in [-1, 1] on the fly (a deterministic transform, so resumes stay exact)."""
    from ...image_processing import T2IImageProcessor

    processor = T2IImageProcessor(image_size=image_size)

    def transform(batch):
        out = {"pixel_values": processor(batch["image"], return_tensors="pt")["pixel_values"]}
        for name in keep:
            out[name] = batch[name]
        return out

    return dataset.with_transform(transform)


def default_cache_dir() -> str:
    """`$HF_T2I_CACHE` or `~/.cache/hf_t2i`: where pre-encoded tokens and downloaded data live."""
    return os.environ.get("HF_T2I_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hf_t2i"))


def fingerprint(*parts: bytes | str) -> str:
    """A short hash of bytes / strings (weights, tokenizer JSON, settings), so cached encodings are tied to exactly
    what produced them."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def cosine_ramp(step: int, steps: int, start: float, end: float) -> float:
    """`start` at step 0 to `end` at `steps` along a half cosine, then `end` (the paper's annealing shape)."""
    if steps <= 0 or step >= steps:
        return end
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / steps))


def stack_column(rows: list[dict], name: str) -> torch.Tensor:
    return torch.stack([torch.as_tensor(row[name]) for row in rows])


def reconstruction_metrics_on(tokenizer, dataset, batch_size: int = 64) -> dict[str, float]:
    """An image tokenizer's held-out reconstruction through hard codes, as a prior's samples will be decoded:
    `mse` (pixels in [0, 1]), `psnr`, code `perplexity`, `codebook_usage` (`evaluation.tokenizer`), over a dataset
    with a `pixel_values` column."""
    from ...evaluation.tokenizer import reconstruction_metrics

    batches = (
        stack_column([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))], "pixel_values")
        for start in range(0, len(dataset), batch_size)
    )
    return reconstruction_metrics(tokenizer, batches)[0]


def cached_encode(dataset, encode, cache_dir: str | None, kind: str, name: str, batch_size: int):
    """`encode` over `dataset` in batches, computed once and stored as `name` under `cache_dir` (default: the
    package cache's `kind` folder); the result holds `encode`'s columns only, as torch tensors.

    A `StreamingDataset` cannot be cached (it has no end to encode up to): its rows are encoded on the fly, in the
    process (or DataLoader worker) that reads them, with the same `encode`.
    """
    from ..streaming import StreamingDataset

    if isinstance(dataset, StreamingDataset):

        def encode_rows(batch):
            return {name: [torch.as_tensor(value) for value in values] for name, values in encode(batch).items()}

        return dataset.with_transform(encode_rows)
    features = fixed_shape_features(encode(dataset[:1])) if len(dataset) else None
    encoded = cached_map(
        dataset,
        encode,
        cache_dir or os.path.join(default_cache_dir(), kind),
        name if features is None else f"{name}-fixed",  # caches written as nested lists before are not reused
        batched=True,
        batch_size=batch_size,
        remove_columns=dataset.column_names,
        features=features,
    )
    return encoded.with_format("torch")


def fixed_shape_features(sample: dict):
    """The `datasets.Features` of an encoded batch (`sample`: column -> rows) that store each float column of 2 to 5
    dimensions per row (continuous tokens, latents) as a fixed-shape float32 `ArrayXD`, or None if it has none.
    Nested lists are converted into tensors value by value; a fixed-shape column is read as one NumPy array per batch,
    several times faster, which is what kept a GPU's training steps waiting for the DataLoader."""
    import datasets
    import numpy as np

    arrays = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D, 5: datasets.Array5D}
    shapes = {column: np.asarray(rows[0]) for column, rows in sample.items()}
    fixed = {
        column: arrays[value.ndim](shape=value.shape, dtype="float32")
        for column, value in shapes.items()
        if value.dtype.kind == "f" and value.ndim in arrays
    }
    if not fixed:
        return None
    features = datasets.Dataset.from_dict({column: list(rows) for column, rows in sample.items()}).features
    features.update(fixed)
    return features


# -- fine-tuning a trained model ---------------------------------------------------------------------------------------
def load_pretrained(model_class: type, name: str, recipe_name: str):
    """The pipeline or model folder a fine-tuning run starts from (a saved folder, a Hub id or a shipped checkpoint's
    name), loaded in fp32 whatever its weights' dtype, or a `ValueError` naming the argument."""
    from ...checkpoints import resolve_checkpoint

    try:
        return model_class.from_pretrained(resolve_checkpoint(name), dtype=torch.float32)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"`pretrained_model_name_or_path` {name!r} is not a {model_class.__name__} folder that `{recipe_name}` "
            f"can fine-tune ({type(error).__name__}: {error})."
        ) from error


def warn_ignored_settings(config, kept: dict, name: str) -> None:
    """Warn that settings a fine-tuning run was given are ignored because the pretrained model `name` keeps its own
    values (`kept`: setting -> the model's value). Only settings changed from the recipe's defaults count, so a run
    started without size flags stays quiet."""
    defaults = {f.name: f.default for f in fields(config)}
    ignored = {
        n: getattr(config, n) for n, value in kept.items() if getattr(config, n) not in (defaults.get(n), value)
    }
    if ignored:
        logger.warning(
            f"Fine-tuning {name!r}: the pretrained model's architecture and image size are kept, so the settings "
            f"{ignored} are ignored (the model has { ({n: kept[n] for n in ignored}) })."
        )


def pretrained_tokenizer(config, model_class: type, recipe_name: str, kept):
    """The trained image tokenizer a `recipe_name` run continues (`config.pretrained_model_name_or_path`, loaded by
    `load_pretrained`), with its architecture and image size (`kept(model)`: setting -> value) written into `config`
    over the run's own (a warning names the ignored ones); None for a run from scratch. A decoder-only fine-tune
    (`config.train_encoder` False) without a trained tokenizer is a `ValueError`."""
    name = config.pretrained_model_name_or_path
    if not name:
        if not config.train_encoder:
            raise ValueError(
                f"`train_encoder=False` fine-tunes the decoder of a trained {model_class.__name__} on its frozen "
                "encoder's codes, but no `pretrained_model_name_or_path` names one: pass the folder of a trained "
                f"{model_class.__name__}."
            )
        return None
    model = load_pretrained(model_class, name, recipe_name)
    settings = kept(model)
    warn_ignored_settings(config, settings, name)
    for setting, value in settings.items():
        setattr(config, setting, value)
    return model


def refuse_tokenizer_path(tokenizer_path: str | None, name: str) -> None:
    """A fine-tuning run keeps the pretrained model's text tokenizer: a `tokenizer_path` as well is an error."""
    if tokenizer_path:
        raise ValueError(
            f"`tokenizer_path` ({tokenizer_path!r}) cannot be combined with `pretrained_model_name_or_path` "
            f"({name!r}): the pretrained model's ids come from its own tokenizer, which is used. Drop one."
        )


def replace_image_tokenizer_field():
    """The `replace_image_tokenizer` field of a recipe that fine-tunes a prior with a frozen image tokenizer."""
    return field(
        default=False,
        metadata={
            "help": "with --pretrained-model-name-or-path: swap the model's image tokenizer for the one its image "
            "tokenizer folder argument names (same architecture and settings, other weights, e.g. retrained) and "
            "fine-tune the model onto its codes or latents; the export holds the new tokenizer"
        },
    )


def refuse_replace_without_pretrained(config) -> None:
    """`replace_image_tokenizer` swaps the tokenizer of a trained model: without one to fine-tune it is an error."""
    if config.replace_image_tokenizer and not config.pretrained_model_name_or_path:
        raise ValueError(
            "`replace_image_tokenizer=True` swaps the image tokenizer of a trained model, but "
            "`pretrained_model_name_or_path` is empty: name the model to fine-tune, or drop the flag."
        )


def frozen_part_folder(
    module: torch.nn.Module, argument: str, given: str, load_given, cache_dir, name: str, replace: bool = False
) -> str:
    """The folder a fine-tuning run encodes its images with: the pretrained model `name`'s frozen image tokenizer or
    VAE `module`, saved once into the cache (`saved_once`) when the `argument` folder is not `given`; a given folder
    (`load_given()` loads it) must hold exactly those weights, else its codes would not be the ones the model
    learned. `replace=True` (a recipe's `replace_image_tokenizer`) instead loads the given folder's weights into
    `module`, whose class and config it must share, so that the model is fine-tuned onto the new codes and exported
    with the tokenizer that made them."""
    if not given:
        if replace:
            raise ValueError(
                f"`replace_image_tokenizer=True` swaps in the image tokenizer that `{argument}` names, but "
                f"`{argument}` is empty: pass the folder of the new image tokenizer."
            )
        return saved_once(module, cache_dir)
    loaded = load_given()
    if replace:
        from ...models.image_tokenizers import config_differences

        differing = config_differences(loaded, module)
        if differing:
            raise ValueError(
                f"`{argument}` ({given!r}) cannot replace the image tokenizer of {name!r}: its {differing} differ, "
                "and the prior was built for that tokenizer's settings. Train the new tokenizer from the old one "
                "(`--pretrained-model-name-or-path`), which keeps them."
            )
        module.load_state_dict(loaded.state_dict())
        return given
    ours, theirs = loaded.state_dict(), module.state_dict()
    if ours.keys() != theirs.keys() or any(not torch.equal(value, theirs[key]) for key, value in ours.items()):
        raise ValueError(
            f"`{argument}` ({given!r}) is not the image tokenizer of {name!r}: its codes or latents would not be the "
            "ones the model learned. Leave it out to use the model's own, or pass `--replace-image-tokenizer` to "
            "fine-tune the model onto this tokenizer's codes."
        )
    return given


def saved_once(module: torch.nn.Module, cache_dir: str | None) -> str:
    """A folder holding `module` (`save_pretrained`; a pretrained model's frozen image tokenizer), named by the hash
    of its weights under the package cache's `image_tokenizers` folder (or `cache_dir`): written once, atomically,
    and found again by every later run, so the codes cached from it keep one fingerprint."""
    from safetensors.torch import save

    weights = save({key: value.contiguous() for key, value in module.state_dict().items()})
    root = os.path.join(cache_dir or default_cache_dir(), "image_tokenizers")
    folder = os.path.join(root, hashlib.sha256(weights).hexdigest()[:16])
    if not os.path.isdir(folder):
        os.makedirs(root, exist_ok=True)
        staging = tempfile.mkdtemp(dir=root, prefix=".partial-")
        try:
            module.save_pretrained(staging)
            os.replace(staging, folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not os.path.isdir(folder):  # another process won the race otherwise
                raise
    return folder
