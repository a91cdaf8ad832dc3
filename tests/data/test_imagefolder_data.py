"""Loading one's own captioned folder, and the errors that explain what is missing."""

import json

import pytest
from PIL import Image

from hf_t2i.data.imagefolder import build_imagefolder_dataset


def _folder(tmp_path, rows):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, mode in enumerate(("RGB", "RGBA", "L")):
        Image.new(mode, (16, 16)).save(tmp_path / f"{i}.png")
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return tmp_path


def test_happy_path_renames_caption_column(tmp_path):
    captions = ["a black square", "a clear square", "a dark square"]
    folder = _folder(tmp_path / "imgs", [{"file_name": f"{i}.png", "caption": c} for i, c in enumerate(captions)])
    dataset = build_imagefolder_dataset(folder, caption_column="caption", cache_dir=tmp_path / "cache")
    assert set(dataset.column_names) == {"image", "text"}
    assert sorted(dataset["text"]) == captions
    assert all(image.mode == "RGB" for image in dataset["image"])


@pytest.fixture
def imgs(tmp_path):
    path = tmp_path / "imgs"
    path.mkdir()
    return path


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="not an existing folder"):
        build_imagefolder_dataset(tmp_path / "nope")


def test_missing_metadata(imgs):
    Image.new("RGB", (8, 8)).save(imgs / "0.png")
    with pytest.raises(ValueError, match="no metadata.jsonl"):
        build_imagefolder_dataset(imgs)


def test_missing_caption_column(imgs):
    _folder(imgs, [{"file_name": "0.png", "caption": "x"}])
    with pytest.raises(ValueError, match="caption_column='text' is not a key"):
        build_imagefolder_dataset(imgs)


def test_empty_metadata(imgs):
    (imgs / "metadata.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        build_imagefolder_dataset(imgs)
