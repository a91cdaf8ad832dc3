"""`StreamingDataset`: a streamed `datasets.IterableDataset` as the training loop reads it.

A stream has no length and no random access, so the map-style machinery of `data_utils` (a permutation per epoch,
`skip_first_batches` on resume) does not apply. Instead, each epoch:

1. the raw rows (images still encoded: reading is cheap, decoding is not) are shuffled by datasets' seeded buffer
   (`IterableDataset.shuffle(seed, buffer_size)`, shard order included) with the epoch as `set_epoch`;
2. they are split across processes with `datasets.distributed.split_dataset_by_node` (whole shards per process when
   the shard count is a multiple of the process count, else every process reads all and keeps one row in N) and
   across DataLoader workers by datasets itself;
3. rows held out for evaluation (`exclude`, digests of the raw rows) are dropped, so no held-out pair is trained on
   whatever the sharding;
4. on resume, the rows this process (and worker) already trained on in the current epoch are skipped, still encoded;
5. the survivors are decoded and go through the recipe's transforms (`with_transform`) in small batches.

Resume is therefore exact: epoch `e` is the same sequence of rows in a straight and a resumed run, and the
checkpoint's `(epoch, batches_in_epoch)` says where to continue. It assumes the same data, process count,
`train_batch_size` and `dataloader_num_workers` as the run that wrote the checkpoint; with workers it also assumes
that batches come from the workers in turn (torch's order) while all of them still have rows, which holds except
near the end of an epoch whose shards have unequal lengths (use `dataloader_num_workers=0` for exactness there).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch


def row_digest(row: dict[str, Any]) -> str:
    """A digest of one raw (undecoded) image-text row: its caption and its image bytes (or path)."""
    digest = hashlib.sha1(str(row.get("text")).encode())
    image = row.get("image")
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    digest.update(b"\0")
    digest.update(image if isinstance(image, bytes) else str(image).encode())
    return digest.hexdigest()


class StreamingDataset(torch.utils.data.IterableDataset):
    """A `datasets.IterableDataset` of image-text rows, shuffled per epoch, split across processes and workers, with
    held-out rows removed, resumable by skipping rows before they are decoded (see the module docstring).

    Args:
        source: a `datasets.IterableDataset` with known features (e.g. `hf_t2i.data.load_image_text_dataset(...,
            streaming=True)`).
        seed: seed of the shuffle buffer; epoch `e` uses `seed + e` (datasets' `set_epoch`).
        shuffle_buffer_size: rows in the shuffle buffer; 0 reads the stream in its stored order.
        exclude: `row_digest`s of rows never to yield (the held-out evaluation rows).
        transform_batch_size: rows per call of each transform.
    """

    def __init__(
        self,
        source,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
        exclude: frozenset[str] = frozenset(),
        transform_batch_size: int = 64,
    ):
        import datasets

        if not isinstance(source, datasets.IterableDataset):
            raise TypeError(f"StreamingDataset expects a datasets.IterableDataset, got {type(source).__name__}.")
        if source.features is None:
            raise ValueError("StreamingDataset needs a stream with known features; cast its columns first.")
        if (
            isinstance(shuffle_buffer_size, bool)
            or not isinstance(shuffle_buffer_size, int)
            or shuffle_buffer_size < 0
        ):
            raise ValueError(f"shuffle_buffer_size={shuffle_buffer_size!r} is invalid: pass an integer >= 0.")
        self.source = source
        self.seed = seed
        self.shuffle_buffer_size = shuffle_buffer_size
        self.exclude = frozenset(exclude)
        self.transform_batch_size = transform_batch_size
        self.transforms: tuple[Callable[[dict], dict], ...] = ()
        self.epoch = 0
        self.process_index, self.num_processes = 0, 1
        self.skip_batches, self.batch_size = 0, 1

    # ------------------------------------------------------------------------------------ configuration
    def with_transform(self, transform: Callable[[dict], dict]) -> StreamingDataset:
        """A copy whose rows go through `transform` (a batch `{column: list}` -> `{column: list or tensor}`, as for
        `datasets.Dataset.with_transform`: only the columns it returns are kept)."""
        other = copy.copy(self)
        other.transforms = (*self.transforms, transform)
        return other

    def set_epoch(self, epoch: int) -> None:
        """Use epoch `epoch`'s shuffle (seed + epoch)."""
        self.epoch = epoch

    def set_process(self, process_index: int, num_processes: int) -> None:
        """Read only process `process_index`'s part of the stream (of `num_processes`)."""
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index={process_index} is not in [0, num_processes={num_processes}).")
        self.process_index, self.num_processes = process_index, num_processes

    def set_skip(self, num_batches: int, batch_size: int) -> None:
        """Skip the first `num_batches` DataLoader batches of `batch_size` rows when iterating (a resume inside an
        epoch; the loop sets 0 for the epochs after it)."""
        self.skip_batches, self.batch_size = num_batches, batch_size

    # ---------------------------------------------------------------------------------------- reading
    def _node_stream(self):
        """This process's share of the epoch's shuffled stream, images still encoded."""
        from datasets.distributed import split_dataset_by_node

        stream = self.source.decode(False)
        if self.shuffle_buffer_size:
            stream = stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer_size)
        stream.set_epoch(self.epoch)
        if self.num_processes > 1:
            stream = split_dataset_by_node(stream, rank=self.process_index, world_size=self.num_processes)
        return stream

    def _rows_to_skip(self, stream) -> int:
        """Rows this process / worker already trained on in this epoch: with W workers that have shards, batch j of
        the DataLoader came from worker j mod W (torch hands out batches in turn)."""
        worker = torch.utils.data.get_worker_info()
        if worker is None or worker.num_workers == 1:
            return self.skip_batches * self.batch_size
        active = min(worker.num_workers, stream.num_shards)
        if worker.id >= active or self.skip_batches <= worker.id:
            return 0
        return ((self.skip_batches - worker.id + active - 1) // active) * self.batch_size

    def _raw_rows(self) -> Iterator[dict]:
        stream = self._node_stream()
        rows: Iterator[dict] = iter(stream)
        if self.exclude:
            rows = (row for row in rows if row_digest(row) not in self.exclude)
        skip = self._rows_to_skip(stream)
        return itertools.islice(rows, skip, None) if skip else rows

    def __iter__(self) -> Iterator[dict]:
        features = self.source.features
        rows = self._raw_rows()
        while True:
            chunk = [features.decode_example(row) for row in itertools.islice(rows, self.transform_batch_size)]
            if not chunk:
                return
            batch = {name: [row[name] for row in chunk] for name in chunk[0]}
            for transform in self.transforms:
                batch = transform(batch)
            for i in range(len(chunk)):
                yield {name: values[i] for name, values in batch.items()}

    def head(self, num_rows: int):
        """The first `num_rows` rows in stored order (held-out rows excluded, no shuffle, no transform) as a
        `datasets.Dataset`, e.g. to train a caption tokenizer or measure statistics on a fixed sample."""
        import datasets

        rows = (row for row in self.source.decode(False) if row_digest(row) not in self.exclude)
        return datasets.Dataset.from_list(list(itertools.islice(rows, num_rows)), features=self.source.features)

    def __repr__(self) -> str:
        return (
            f"StreamingDataset(shards={self.source.num_shards}, shuffle_buffer_size={self.shuffle_buffer_size}, "
            f"held_out={len(self.exclude)}, transforms={len(self.transforms)})"
        )
