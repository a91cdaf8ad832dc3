"""Data plumbing of the training loop: a reproducible epoch order and cached pre-encoding (stage 2).

Exact resume needs the data order of every epoch to be a pure function of `(seed, epoch)`, independent of the
global RNG (which the model's noise uses) and of the process: `EpochShuffleSampler` gives that, and Accelerate
shards its order across processes.
"""

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochShuffleSampler(Sampler[int]):
    """A permutation of `range(num_samples)` drawn from a generator seeded with `seed + epoch`.

    Call `set_epoch(epoch)` before iterating (Accelerate's `DataLoaderShard.set_epoch` forwards it), so that
    epoch `e` has the same order in a straight run, a resumed run, and on every process.
    """

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


def build_dataloader(
    dataset: Dataset, batch_size: int, collate_fn: Callable, seed: int, num_workers: int = 0, shuffle: bool = True
) -> DataLoader:
    """A DataLoader whose order depends only on `(seed, epoch)` and which never touches the global RNG.

    The DataLoader gets its own generator: torch draws each iterator's worker base seed from it, and drawing
    from the global RNG instead would shift the model's noise between a straight and a resumed run. A
    `StreamingDataset` (no length) shuffles, shards and resumes itself, so it gets no sampler.
    """
    from .streaming import StreamingDataset

    if isinstance(dataset, StreamingDataset):
        return DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=collate_fn,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed),
        )
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: `build_train_dataset()` / `build_eval_dataset()` returned 0 rows.")
    sampler = EpochShuffleSampler(len(dataset), seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def cached_map(
    dataset,
    function: Callable,
    cache_dir: str | os.PathLike,
    name: str,
    batched: bool = True,
    batch_size: int = 1000,
    main_process_first: bool = True,
    **map_kwargs,
):
    """`dataset.map(function)` computed once and stored under `cache_dir`; later calls load it from disk.

    Stage-2 training pre-encodes images to token ids / latents once (the image tokenizer is frozen by then, so
    encoding every image at every epoch would only repeat the same work). The cache file is
    `<cache_dir>/<name>-<dataset fingerprint>.arrow`: a different input dataset gets a new file, but a change of
    `function` does not, so put whatever defines it (tokenizer checkpoint, its hash, a version) into `name`.
    Under multiple processes the main process computes first and the others load its file.

    Args:
        dataset: a `datasets.Dataset`.
        function: the `Dataset.map` function (rows -> new columns).
        cache_dir: folder of the cache files (created if missing).
        name: cache key, letters / digits / `._-` only.
        batched, batch_size, **map_kwargs: forwarded to `Dataset.map` (e.g. `remove_columns`, `num_proc`).

    Returns:
        The mapped `datasets.Dataset`, memory-mapped from the cache file.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"cached_map expects a datasets.Dataset, got {type(dataset).__name__}.")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError(f"cached_map name={name!r} is invalid: use letters, digits, '.', '_' or '-' only.")
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(os.fspath(cache_dir), f"{name}-{dataset._fingerprint}.arrow")
    # A fingerprint from (input, name) rather than from hashing `function`, which may hold a model.
    fingerprint = hashlib.sha256(f"{dataset._fingerprint}-{name}".encode()).hexdigest()[:32]
    context = _main_process_first() if main_process_first else nullcontext()
    with context:
        # With an explicit cache_file_name, `map` loads the file (or its num_proc shards) when it exists and only
        # calls `function` otherwise; it writes through a temporary file, so a crash leaves no half cache.
        return dataset.map(
            function,
            batched=batched,
            batch_size=batch_size,
            cache_file_name=path,
            load_from_cache_file=True,
            new_fingerprint=fingerprint,
            **map_kwargs,
        )


def _main_process_first():
    """Accelerate's `main_process_first` of the current (possibly single-process) launch."""
    from accelerate import PartialState

    return PartialState().main_process_first()
