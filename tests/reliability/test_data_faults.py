"""Bad files in an `imagefolder`: skipped up front with a warning naming each (or refused with the same report)."""

import io
import json

import pytest
from PIL import Image

from hf_t2i.data.imagefolder import build_imagefolder_dataset


def make_folder(path, bad: dict[str, bytes]):
    """Three good PNGs plus the `bad` files, all captioned in metadata.jsonl."""
    path.mkdir(parents=True)
    rows = []
    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(path / f"good{i}.png")
        rows.append({"file_name": f"good{i}.png", "text": f"good {i}"})
    for name, data in bad.items():
        (path / name).write_bytes(data)
        rows.append({"file_name": name, "text": f"bad {name}"})
    (path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


BAD = {"empty.png": b"", "text.png": b"this is not a png\n", "cut.jpg": truncated_jpeg()}


def test_bad_images_are_skipped_with_a_warning_naming_each(tmp_path):
    folder = make_folder(tmp_path / "imgs", BAD)
    with pytest.warns(UserWarning, match=r"skipping 3 of 6 image files are unusable") as record:
        dataset = build_imagefolder_dataset(folder, cache_dir=tmp_path / "cache")
    message = str(record[0].message)
    for name, why in (("empty.png", "0 bytes"), ("text.png", "not an image"), ("cut.jpg", "truncated")):
        assert f"{name}: " in message and why in message.split(f"{name}: ")[1].split(";")[0], (name, message)
    assert sorted(dataset["text"]) == ["good 0", "good 1", "good 2"]
    assert all(image.mode == "RGB" and image.size == (16, 16) for image in dataset["image"])  # all decodable


def test_bad_images_refused_when_not_skipping(tmp_path):
    folder = make_folder(tmp_path / "imgs", {"text.png": b"hello"})
    with pytest.raises(
        ValueError, match=r"1 of 4 image files are unusable: .*text.png: not an image.*skip_bad_images"
    ):
        build_imagefolder_dataset(folder, cache_dir=tmp_path / "cache", skip_bad_images=False)


def test_folder_of_only_bad_images_is_an_error(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"a.png: empty file .*no usable image is left"):
        build_imagefolder_dataset(folder, cache_dir=tmp_path / "cache")
