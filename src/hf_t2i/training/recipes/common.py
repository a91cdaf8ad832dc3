"""Pieces every text-to-image recipe shares: which data, how images become tensors, how runs are cached."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field

import torch

from ..data_utils import cached_map
from ..recipe import RecipeConfig


@dataclass
class ImageTextDataConfig(RecipeConfig):
    """Where a recipe's image-text pairs come from (see `hf_t2i.data`)."""

    dataset: str = field(default="shapes", metadata={"help": "shapes | emoji | fashion_mnist | imagefolder"})
    dataset_size: int = field(default=20000, metadata={"help": "training pairs to generate (shapes only)"})
    data_dir: str | None = field(
        default=None, metadata={"help": "imagefolder path, or the npm cache folder of the emoji set"}
    )
    image_size: int = field(default=64, metadata={"help": "training resolution (square)"})
    eval_size: int = field(default=256, metadata={"help": "held-out pairs used for evaluation"})
    data_seed: int = field(default=0, metadata={"help": "seed of dataset generation and splits"})


def load_image_text_splits(config: ImageTextDataConfig):
    """(train, eval) `datasets.Dataset`s with `image` and `text` columns for `config.dataset`.

    shapes: generated train / validation splits (the held-out colour-shape pairs stay out of both; `test` holds
    them). emoji: split by concept, so evaluation concepts are unseen. fashion_mnist: its train / test files.
    imagefolder: a seeded split of the folder.
    """
    from ... import data

    c = config
    if c.dataset == "shapes":
        train = data.build_shapes_dataset(c.dataset_size, "train", c.image_size, seed=c.data_seed)
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
        splits = data.build_imagefolder_dataset(c.data_dir).train_test_split(test_size=c.eval_size, seed=c.data_seed)
        return splits["train"], splits["test"]
    raise ValueError(f"`dataset` must be one of {sorted(data.DATASETS)}, got {c.dataset!r}.")


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
    package cache's `kind` folder); the result holds `encode`'s columns only, as torch tensors."""
    encoded = cached_map(
        dataset,
        encode,
        cache_dir or os.path.join(default_cache_dir(), kind),
        name,
        batched=True,
        batch_size=batch_size,
        remove_columns=dataset.column_names,
    )
    return encoded.with_format("torch")
