"""The shapes detector is exact on renders and tolerant of the noise generated images carry."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from hf_t2i.data.shapes import PALETTE, TASKS, generate_sample
from hf_t2i.evaluation.shapes_detector import DetectedObject, classify_shape, detect_shapes, shape_template


def _truth(objects):
    return sorted((o["shape"], o["color"], o["size"], float(o["x"]), float(o["y"])) for o in objects)


def _found(detections):
    return sorted((d.shape, d.color, d.size, d.x, d.y) for d in detections)


def test_exact_on_ground_truth_renders():
    rows = [generate_sample(i, split, 64, seed=11) for split in ("train", "test") for i in range(300)]
    exact = [_found(detect_shapes(r["image"])) == _truth(r["objects"]) for r in rows]
    per_task = {t: float(np.mean([ok for ok, r in zip(exact, rows) if r["task"] == t])) for t in TASKS}
    accuracy = float(np.mean(exact))
    print(f"\nshapes detector: {sum(exact)}/{len(exact)} renders exact ({accuracy:.2%}); per task {per_task}")
    assert len(rows) >= 500 and set(per_task) == set(TASKS)
    assert accuracy >= 0.99


@pytest.mark.parametrize("image_size", [32, 128])
def test_exact_at_other_sizes(image_size):
    rows = [generate_sample(i, "train", image_size, seed=2) for i in range(60)]
    exact = [_found(detect_shapes(r["image"])) == _truth(r["objects"]) for r in rows]
    assert np.mean(exact) >= 0.99


def test_tolerates_colour_noise_and_ignores_specks():
    rng = np.random.default_rng(0)
    hits = 0
    rows = [generate_sample(i, "train", 64, seed=4) for i in range(120)]
    for row in rows:
        pixels = np.asarray(row["image"]).astype(np.float32) + rng.normal(0, 20, (64, 64, 3))
        # isolated palette-coloured specks, as a generator's stray pixels
        for y, x in rng.integers(0, 64, size=(6, 2)):
            pixels[y, x] = PALETTE["purple"]
        noisy = np.clip(pixels, 0, 255).astype(np.uint8)
        found = sorted((d.shape, d.color, d.size) for d in detect_shapes(noisy))
        hits += found == sorted((o["shape"], o["color"], o["size"]) for o in row["objects"])
    assert hits / len(rows) >= 0.95


def test_min_area_is_configurable():
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle([10, 10, 13, 13], fill=PALETTE["red"])  # 16 px
    assert [d.shape for d in detect_shapes(image)] == ["square"]
    assert detect_shapes(image, min_area=17) == []


def test_input_formats_agree():
    row = generate_sample(3, "train", 64, seed=0)
    expected = detect_shapes(row["image"])
    pixels = np.asarray(row["image"])
    assert detect_shapes(pixels) == expected
    assert detect_shapes(pixels.transpose(2, 0, 1).astype(np.float32) / 255) == expected
    assert detect_shapes(torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255) == expected
    assert all(isinstance(d, DetectedObject) and d.area > 0 for d in expected)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="shape"):
        detect_shapes(np.zeros((8, 8)))
    with pytest.raises(TypeError, match="PIL.Image or a numpy array"):
        detect_shapes([[0, 0, 0]])
    with pytest.raises(ValueError, match="min_area=0"):
        detect_shapes(np.zeros((8, 8, 3), dtype=np.uint8), min_area=0)


def test_non_shapes_are_unknown():
    bar = np.ones((4, 20), dtype=bool)  # elongated
    corner = np.zeros((18, 18), dtype=bool)
    corner[:, :6] = corner[-6:, :] = True  # an "L"
    diagonal = np.eye(18, dtype=bool) | np.eye(18, k=1, dtype=bool)
    for mask in (bar, corner, diagonal):
        assert classify_shape(mask) == "unknown"
    for shape in ("circle", "square", "triangle", "diamond"):
        assert classify_shape(shape_template(shape, 15, 15)) == shape
