"""The dataset registry."""

import pytest

from hf_t2i.data import DATASETS, load_dataset_by_name


def test_registry_names():
    assert set(DATASETS) == {"shapes", "emoji", "imagefolder", "fashion_mnist"}


def test_load_by_name_passes_kwargs():
    dataset = load_dataset_by_name("shapes", num_samples=4, split="test", image_size=32)
    assert len(dataset) == 4 and dataset[0]["image"].size == (32, 32)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"name='mnist'.*\['emoji', 'fashion_mnist', 'imagefolder', 'shapes'\]"):
        load_dataset_by_name("mnist")
