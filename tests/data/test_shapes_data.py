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


# ------------------------------------------------------------------------------------------- contradicting twins
@pytest.mark.parametrize("split", ["train", "test"])
def test_twins_contradict_their_rows_both_ways(split):
    """Neither scene satisfies the other's caption under the evaluation's own rules (scored on the exact objects)."""
    from hf_t2i.data import build_contradicting_twins
    from hf_t2i.evaluation.compositional import score_sample

    rows, twins = build_shapes_dataset(240, split), build_contradicting_twins(240, split)
    assert twins["task"] == rows["task"]
    for row, twin in zip(rows, twins):
        assert twin["text"] != row["text"]
        assert not score_sample(twin["spec"], row["objects"]), (row["text"], twin["text"])
        assert not score_sample(row["spec"], twin["objects"]), (row["text"], twin["text"])
        assert score_sample(twin["spec"], twin["objects"])  # the twin is a true pair of its own
        if split != "test":
            assert not any(is_held_out(c, s) for c, s in _pairs(twin)), twin["text"]


def test_twins_keep_the_words_where_they_can():
    """Structural edits first: position flips the relation, binding swaps the colours, counting changes the count."""
    from hf_t2i.data import build_contradicting_twins

    rows, twins = build_shapes_dataset(120), build_contradicting_twins(120)
    flipped = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for row, twin in zip(rows, twins):
        spec, edit = json.loads(row["spec"]), json.loads(twin["spec"])
        if spec["task"] == "position":
            assert edit["objects"] == spec["objects"] and edit["relation"] == flipped[spec["relation"]]
        elif spec["task"] == "color_attr":
            first, second = spec["objects"]
            swapped = [(second["color"], first["shape"]), (first["color"], second["shape"])]
            if any(is_held_out(*pair) for pair in swapped):  # the swap would name a held-out pair: another edit
                continue
            assert [(o["color"], o["shape"]) for o in edit["objects"]] == swapped
            assert sorted(twin["text"].split()) == sorted(row["text"].split())
        elif spec["task"] == "counting":
            assert edit["objects"][0]["count"] != spec["objects"][0]["count"]
    assert {json.loads(s)["task"] for s in twins["spec"]} == set(TASKS)


def test_twins_are_reproducible_and_prefix_stable():
    from hf_t2i.data import build_contradicting_twins
    from hf_t2i.data.shapes import contradicting_spec

    a, b = build_contradicting_twins(24, seed=3), build_contradicting_twins(12, seed=3)
    assert a["text"][:12] == b["text"]
    assert [np.asarray(im).tobytes() for im in a["image"][:12]] == [np.asarray(im).tobytes() for im in b["image"]]
    assert a["text"] != build_contradicting_twins(24, seed=4)["text"]
    with pytest.raises(ValueError, match="split"):
        contradicting_spec(generate_sample(0)["spec"], "training", np.random.default_rng(0))
