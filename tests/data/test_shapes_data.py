"""The shapes dataset: determinism, held-out pairs, captions that agree with metadata, clean renders."""

import json
from collections import Counter

import numpy as np
import pytest

from hf_t2i.data.shapes import (
    COLORS,
    HELD_OUT_PAIRS,
    PALETTE,
    SHAPES,
    TASKS,
    build_shapes_dataset,
    caption_from_spec,
    generate_sample,
    is_held_out,
)


@pytest.fixture(scope="module")
def train_set():
    return build_shapes_dataset(600, split="train", seed=0)


@pytest.fixture(scope="module")
def test_set():
    return build_shapes_dataset(300, split="test", seed=0)


def _pairs(row):
    return {(o["color"], o["shape"]) for o in row["objects"]}


def test_same_seed_same_rows_and_prefix_stability():
    a = build_shapes_dataset(24, seed=7)
    b = build_shapes_dataset(24, seed=7)
    c = build_shapes_dataset(12, seed=7)
    d = build_shapes_dataset(24, seed=8)
    bytes_a = [np.asarray(im).tobytes() for im in a["image"]]
    assert bytes_a == [np.asarray(im).tobytes() for im in b["image"]]
    assert a["text"] == b["text"] and a["spec"] == b["spec"]
    assert a["text"][:12] == c["text"] and bytes_a[:12] == [np.asarray(im).tobytes() for im in c["image"]]
    assert a["text"] != d["text"]
    assert generate_sample(5, seed=7)["text"] == a["text"][5]


def test_splits_differ():
    assert build_shapes_dataset(12, split="train")["text"] != build_shapes_dataset(12, split="validation")["text"]


def test_held_out_pairs_never_in_train(train_set):
    assert len(HELD_OUT_PAIRS) == len(SHAPES) * len(COLORS) // 6
    assert is_held_out(*next(iter(HELD_OUT_PAIRS))) and not is_held_out("purple", "circle")
    for row in train_set:
        assert not any(is_held_out(c, s) for c, s in _pairs(row)), row["text"]
    validation = build_shapes_dataset(120, split="validation")
    assert not any(is_held_out(c, s) for row in validation for c, s in _pairs(row))


def test_every_test_row_has_a_held_out_pair(test_set):
    seen = set()
    for row in test_set:
        held = {p for p in _pairs(row) if is_held_out(*p)}
        spec_pairs = {(o["color"], o["shape"]) for o in json.loads(row["spec"])["objects"]}
        assert held and held <= spec_pairs, row["text"]
        seen |= held
    assert seen == set(HELD_OUT_PAIRS)


@pytest.mark.parametrize("split", ["train", "test"])
def test_captions_agree_with_metadata(split, train_set, test_set):
    rows = train_set if split == "train" else test_set
    assert Counter(rows["task"]) == Counter({t: len(rows) // len(TASKS) for t in TASKS})
    for row in rows:
        spec = json.loads(row["spec"])
        assert spec["task"] == row["task"]
        assert caption_from_spec(spec) == row["text"] == row["text"].lower()
        found = Counter((o["color"], o["shape"]) for o in row["objects"])
        wanted = Counter({(o["color"], o["shape"]): o["count"] for o in spec["objects"]})
        assert found == wanted, row["text"]
        for request in spec["objects"]:
            assert request["color"] in row["text"] and request["shape"] in row["text"]
            if request["size"] is not None:
                assert request["size"] in row["text"]
                assert all(o["size"] == request["size"] for o in row["objects"] if o["shape"] == request["shape"])
        if spec["task"] == "position":
            a, b = row["objects"]
            dx, dy = b["x"] - a["x"], b["y"] - a["y"]
            offset = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[spec["relation"]]
            assert offset > 10 and spec["relation"] in row["text"]
        if spec["task"] == "color_attr":
            (c0, s0), (c1, s1) = [(o["color"], o["shape"]) for o in spec["objects"]]
            assert c0 != c1 and s0 != s1


def test_captions_read_as_english():
    texts = build_shapes_dataset(240, seed=1)["text"]
    assert not any(" a orange" in f" {t}" or " an red" in f" {t}" for t in texts)
    assert any(t.startswith("an orange") for t in texts)
    assert any(t.startswith(("two ", "three ", "four ")) and t.endswith("s") for t in texts)


def test_renders_are_flat_palette_colours_inside_the_canvas(train_set):
    allowed = {tuple(c) for c in PALETTE.values()} | {(255, 255, 255)}
    for row in train_set.select(range(120)):
        pixels = np.asarray(row["image"])
        assert row["image"].mode == "RGB" and pixels.shape == (64, 64, 3)
        assert {tuple(p) for p in np.unique(pixels.reshape(-1, 3), axis=0)} <= allowed
        border = np.concatenate(
            [pixels[:1], pixels[-1:], pixels[:, :1].transpose(1, 0, 2), pixels[:, -1:].transpose(1, 0, 2)], axis=1
        )
        assert (border == 255).all()


def test_image_size_scales_shapes():
    row = build_shapes_dataset(1, image_size=128)[0]
    assert row["image"].size == (128, 128)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "dev"}, "split='dev'"),
        ({"image_size": 16}, "image_size=16"),
        ({"tasks": ["counting", "rotation"]}, "tasks="),
        ({"num_samples": -1}, "num_samples=-1"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_shapes_dataset(**{"num_samples": 2, **kwargs})


def test_task_subset():
    rows = build_shapes_dataset(6, tasks=["counting"])
    assert set(rows["task"]) == {"counting"}
