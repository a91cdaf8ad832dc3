"""The `fashion_mnist` dataset: 70k 28x28 clothing images with class captions, from the Debian package.

`apt-get install dataset-fashion-mnist` puts the original idx files (gzip) in `/usr/share/datasets/fashion-mnist`:
`train-images-idx3-ubyte.gz` (60k) / `t10k-images-idx3-ubyte.gz` (10k) and the matching `*-labels-idx1-ubyte.gz`.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from ._images import encode_png


DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
_FILES = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an idx file: big-endian int32 magic and dims, then uint8 data. Returns (N,) labels or (N, H, W)."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path} has idx magic {found}, expected {magic}; the file is not what its name says.")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def caption_for(label: int) -> str:
    """'a photo of a dress', 'a photo of an ankle boot'."""
    name = CLASS_NAMES[label]
    return f"a photo of {'an' if name[0] in 'aeiou' else 'a'} {name}"


def build_fashion_mnist_dataset(
    split: str = "train",
    root: str | Path = DEFAULT_ROOT,
    image_size: int | None = None,
    num_samples: int | None = None,
) -> datasets.Dataset:
    """Fashion-MNIST as a text-image Dataset.

    Args:
        split: "train" (60k) or "test" (10k).
        root: folder with the idx .gz files (the Debian package's location by default).
        image_size: resize the 28x28 images to this side (bicubic); None keeps 28.
        num_samples: keep only the first `num_samples` rows (None: all).

    Returns:
        Dataset with columns image (RGB), text ("a photo of a <class>"), label (`ClassLabel` over `CLASS_NAMES`).
    """
    if split not in _FILES:
        raise ValueError(f"split={split!r} must be one of {tuple(_FILES)}.")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size={image_size!r} must be a positive int or None.")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 0):
        raise ValueError(f"num_samples={num_samples!r} must be a non-negative int or None.")
    prefix = Path(root) / _FILES[split]
    images_path = prefix.with_name(f"{prefix.name}-images-idx3-ubyte.gz")
    labels_path = prefix.with_name(f"{prefix.name}-labels-idx1-ubyte.gz")
    missing = [str(p) for p in (images_path, labels_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {missing}. Install the Debian package with "
            "`apt-get install -y dataset-fashion-mnist`, or pass root= the folder holding the idx .gz files."
        )
    images = _read_idx(images_path, _IMAGES_MAGIC)  # (N, 28, 28) uint8
    labels = _read_idx(labels_path, _LABELS_MAGIC)  # (N,) uint8
    if num_samples is not None:
        images, labels = images[:num_samples], labels[:num_samples]
    cells = []
    for pixels in images:
        image = Image.fromarray(pixels).convert("RGB")  # (28, 28) uint8 -> "L" -> RGB
        if image_size is not None and image_size != image.width:
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        cells.append(encode_png(image))
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
        }
    )
    columns = {"image": cells, "text": [caption_for(int(y)) for y in labels], "label": [int(y) for y in labels]}
    return datasets.Dataset.from_dict(columns, features=features, split=split)
