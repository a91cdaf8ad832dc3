"""The emoji builder: joins, captions, compositing and the concept split, on a small fake npm tree (offline),
plus one slow test against the real pinned packages."""

import json

import numpy as np
import pytest
from PIL import Image

from hf_t2i.data import emoji as emoji_module
from hf_t2i.data.emoji import (
    NPM_PACKAGES,
    build_emoji_dataset,
    install_emoji_packages,
    make_caption,
    split_by_concept,
)


def _write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def _png(path, color, alpha=255):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent background
    image.paste(Image.new("RGBA", (32, 32), (*color, alpha)), (16, 16))
    image.save(path)


@pytest.fixture
def fake_cache(tmp_path):
    """A cache dir whose npm tree holds 3 concepts (one with a skin tone, one needing the FE0F join)."""
    modules = tmp_path / "npm" / "node_modules"
    for name, version in NPM_PACKAGES.items():
        _write_json(modules / name / "package.json", {"name": name, "version": version})
    emoji = [
        {"unified": "1F600", "image": "1f600.png", "sort_order": 1},
        {
            "unified": "1F44B",
            "image": "1f44b.png",
            "sort_order": 2,
            "skin_variations": {"1F3FB": {"unified": "1F44B-1F3FB", "image": "1f44b-1f3fb.png"}},
        },
        {"unified": "2764-FE0F", "image": "2764-fe0f.png", "sort_order": 3},
        {"unified": "1F9FF", "image": "1f9ff.png", "sort_order": 4},  # no emojibase entry: dropped
    ]
    for style, color in (("twitter", (200, 0, 0)), ("google", (0, 0, 200))):
        package = modules / f"emoji-datasource-{style}"
        _write_json(package / "emoji.json", emoji)
        for name in ("1f600.png", "1f44b.png", "1f44b-1f3fb.png", "2764-fe0f.png", "1f9ff.png"):
            _png(package / "img" / style / "64" / name, color)
    _write_json(
        modules / "emojibase-data" / "en" / "data.json",
        [
            {"label": "grinning face", "hexcode": "1F600", "tags": ["face", "grin", "happy", "smile", "teeth"]},
            {
                "label": "waving hand",
                "hexcode": "1F44B",
                "tags": ["bye", "hand", "wave"],
                "skins": [{"label": "waving hand: light skin tone", "hexcode": "1F44B-1F3FB"}],
            },
            {"label": "red heart", "hexcode": "2764", "tags": ["heart", "love"]},
        ],
    )
    return tmp_path


def test_make_caption():
    assert make_caption("Grinning face", ["face", "grin", "happy", "smile", "teeth"], "google") == (
        "grinning face, grin, happy, smile, in google style"
    )
    assert make_caption("red heart", [], "twitter") == "red heart, in twitter style"


def test_build_from_installed_packages(fake_cache, monkeypatch):
    monkeypatch.setattr(emoji_module.shutil, "which", lambda name: None)  # installed: npm is never needed
    dataset = build_emoji_dataset(fake_cache)
    assert dataset.column_names == ["image", "text", "style", "label", "codepoint", "concept"]
    assert len(dataset) == 6  # 3 joined concepts x 2 styles
    assert dataset["text"][:3] == [
        "grinning face, grin, happy, smile, in twitter style",
        "waving hand, bye, wave, in twitter style",
        "red heart, love, in twitter style",
    ]
    assert dataset["codepoint"][2] == "2764-fe0f" and dataset["style"][3:] == ["google"] * 3
    image = dataset[0]["image"]
    pixels = np.asarray(image)
    assert image.mode == "RGB" and image.size == (64, 64)
    assert tuple(pixels[0, 0]) == (255, 255, 255) and tuple(pixels[32, 32]) == (200, 0, 0)


def test_skin_tones_resize_and_styles(fake_cache):
    dataset = build_emoji_dataset(fake_cache, styles=("google",), image_size=32, include_skin_tones=True)
    assert len(dataset) == 4
    row = dataset[2]
    assert row["label"] == "waving hand: light skin tone" and row["concept"] == "1f44b"
    assert row["text"] == "waving hand: light skin tone, bye, wave, in google style"
    assert row["image"].size == (32, 32)
    with pytest.raises(ValueError, match="styles="):
        build_emoji_dataset(fake_cache, styles=("apple",))


def test_split_by_concept_is_deterministic_and_disjoint(fake_cache):
    dataset = build_emoji_dataset(fake_cache, include_skin_tones=True)
    first = split_by_concept(dataset, test_fraction=0.34, seed=1)
    again = split_by_concept(dataset, test_fraction=0.34, seed=1)
    assert first["test"]["codepoint"] == again["test"]["codepoint"]
    train, test = set(first["train"]["concept"]), set(first["test"]["concept"])
    assert train and test and not train & test and len(first["train"]) + len(first["test"]) == len(dataset)
    with pytest.raises(ValueError, match="test_fraction=1.5"):
        split_by_concept(dataset, test_fraction=1.5)


def test_missing_npm_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji_module.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install npm"):
        install_emoji_packages(tmp_path)


@pytest.mark.slow
def test_real_emoji_packages():
    """Installs the pinned npm packages into the default cache (once) and builds both styles."""
    dataset = build_emoji_dataset()
    assert len(dataset) == 2 * 1911
    assert set(dataset["style"]) == {"twitter", "google"}
    assert all(t.endswith(("in twitter style", "in google style")) for t in dataset["text"])
    row = dataset[0]
    assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
    split = split_by_concept(dataset)
    assert not set(split["train"]["concept"]) & set(split["test"]["concept"])
