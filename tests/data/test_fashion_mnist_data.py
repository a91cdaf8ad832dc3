"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (skipped when it is not installed)."""

from pathlib import Path

import numpy as np
import pytest

from hf_t2i.data.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, build_fashion_mnist_dataset


@pytest.mark.skipif(
    not (Path(DEFAULT_ROOT) / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="needs the Debian package: apt-get install -y dataset-fashion-mnist",
)
def test_reads_the_debian_files():
    dataset = build_fashion_mnist_dataset("test", num_samples=200)
    assert len(dataset) == 200
    assert dataset.features["label"].names == list(CLASS_NAMES)
    for row in dataset.select(range(20)):
        name = CLASS_NAMES[row["label"]]
        assert row["text"] in (f"a photo of a {name}", f"a photo of an {name}")
        pixels = np.asarray(row["image"])
        assert row["image"].mode == "RGB" and pixels.shape == (28, 28, 3)
        assert (pixels[..., 0] == pixels[..., 2]).all() and pixels.max() > 0
    assert len(set(dataset["label"])) == 10
    assert build_fashion_mnist_dataset("test", num_samples=2, image_size=32)[0]["image"].size == (32, 32)


def test_missing_files_name_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        build_fashion_mnist_dataset(root=tmp_path)
    with pytest.raises(ValueError, match="split='val'"):
        build_fashion_mnist_dataset(split="val", root=tmp_path)
