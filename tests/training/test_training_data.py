"""Cached pre-encoding (`cached_map`), the epoch sampler and the sample-grid helper."""

import pytest
import torch
from PIL import Image

from hf_t2i.training import EpochShuffleSampler, cached_map, make_image_grid

from .training_toy import toy_dataset


def test_cached_map_computes_once(tmp_path):
    calls = []

    def encode(batch):
        calls.append(len(batch["idx"]))
        return {"code": [int(i) * 10 for i in batch["idx"]]}

    dataset = toy_dataset(12).with_format(None)
    first = cached_map(dataset, encode, tmp_path, "toy-codes", batch_size=5)
    assert calls == [5, 5, 2]
    second = cached_map(dataset, encode, tmp_path, "toy-codes", batch_size=5)
    assert calls == [5, 5, 2]  # loaded from disk, the function did not run again
    assert second["code"] == first["code"] == [10 * i for i in range(12)]
    assert len(list(tmp_path.glob("toy-codes-*.arrow"))) == 1

    cached_map(dataset, encode, tmp_path, "toy-codes-v2", batch_size=5)  # another name: another cache
    cached_map(toy_dataset(6).with_format(None), encode, tmp_path, "toy-codes", batch_size=5)  # other data too
    assert calls == [5, 5, 2, 5, 5, 2, 5, 1]


def test_encoded_float_arrays_are_stored_with_their_fixed_shape(tmp_path):
    """Continuous tokens and latents (float rows of 2+ dimensions) are cached as float32 `ArrayXD`, which a DataLoader
    reads in one piece, not as nested lists; ids stay lists, and every value reads back unchanged."""
    import datasets

    from hf_t2i.training.recipes.common import cached_encode

    latents = torch.randn(12, 3, 4, 5)

    def encode(batch):
        rows = [int(i) for i in batch["idx"]]
        return {
            "ids": [[i, i + 1] for i in rows],
            "tokens": latents[rows].flatten(2).tolist(),  # (B, 3, 20) as Python floats
            "latents": latents[rows].numpy(),  # (B, 3, 4, 5)
        }

    encoded = cached_encode(toy_dataset(12).with_format(None), encode, str(tmp_path), "unused", "toy", batch_size=5)
    assert encoded.features["tokens"] == datasets.Array2D(shape=(3, 20), dtype="float32")
    assert encoded.features["latents"] == datasets.Array3D(shape=(3, 4, 5), dtype="float32")
    assert isinstance(encoded.features["ids"], datasets.List)
    batch = encoded[[3, 7]]
    assert batch["latents"].dtype == torch.float32 and torch.equal(batch["latents"], latents[[3, 7]])
    assert torch.equal(batch["tokens"], latents[[3, 7]].flatten(2)) and batch["ids"].tolist() == [[3, 4], [7, 8]]
    assert len(list(tmp_path.glob("toy-fixed-*.arrow"))) == 1  # not the name a nested-list cache had


def test_cached_map_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="name='a/b'"):
        cached_map(toy_dataset(2), lambda b: b, tmp_path, "a/b")
    with pytest.raises(TypeError, match="datasets.Dataset"):
        cached_map([1, 2], lambda b: b, tmp_path, "list")


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    sampler = EpochShuffleSampler(10, seed=3)
    first = list(sampler)
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(sampler) == first and sorted(first) == list(range(10))
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochShuffleSampler(10, seed=4)) != first


def test_make_image_grid_pads_to_a_near_square():
    images = [Image.new("RGB", (4, 3), (255, 0, 0)) for _ in range(5)]
    grid = make_image_grid(images)
    assert grid.size == (12, 6)  # 3 columns x 2 rows
    assert grid.getpixel((11, 5)) == (0, 0, 0) and grid.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(TypeError):
        make_image_grid([])
