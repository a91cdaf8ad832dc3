"""The `shapes` dataset: flat coloured shapes on white with GenEval-style captions, generated in code.

Every sample is drawn from its own `numpy.random.Generator` seeded by `(seed, split, index)`, so a dataset is
reproducible bit for bit and the first `n` samples do not depend on `num_samples`. Shapes are drawn at the final
resolution without anti-aliasing: every foreground pixel has an exact palette colour, which is what lets
`hf_t2i.evaluation.shapes_detector` recover the scene exactly and makes compositional accuracy trustworthy.

Columns:
    image (`datasets.Image`, RGB), text (caption), task (one of `TASKS`),
    objects (list of structs `{shape, color, size, x, y}`; `x`, `y` are the centre of the shape's bounding box in
    pixels, `size` is "small" or "large"), spec (JSON string, see `make_spec`: what the caption asks for, so
    evaluation never parses captions).

Tasks (GenEval's six, balanced by cycling through `tasks`): single_object "a red circle" (names the size, "a large
red circle", half the time), colors "a purple square", counting "three green triangles" (1-4, "a" for one),
two_objects "a red circle and a blue square" (different shapes), color_attr (different shapes and different colours,
so the binding is what is tested) and position "a red circle left of a blue square" ("an" before "orange").

Held-out combinations: the (colour, shape) pairs in `HELD_OUT_PAIRS` (4 of the 24) never occur in the "train" and
"validation" splits; every "test" sample contains at least one of them (GenEval-style compositional generalisation).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import datasets
import numpy as np
from PIL import Image, ImageDraw

from ._images import encode_png


SHAPES = ("circle", "square", "triangle", "diamond")
# Far apart in RGB and from white; the detector classifies pixels by their distance to these colours.
PALETTE = {
    "red": (220, 20, 20),
    "green": (20, 160, 40),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 20),
    "purple": (140, 30, 180),
    "orange": (250, 130, 0),
}
COLORS = tuple(PALETTE)
BACKGROUND = (255, 255, 255)
SIZES = ("small", "large")
# Side of the shape's bounding box in pixels at a 64 px canvas (inclusive range); scaled with `image_size`.
SIZE_RANGES_64 = {"small": (10, 12), "large": (18, 22)}
# A bounding box side above this (at 64 px, scaled) is "large": halfway between the two ranges.
SIZE_THRESHOLD_64 = 15.0
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
TASKS = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
SPLITS = ("train", "validation", "test")
# One pair per shape, each with a different colour, so every shape and colour still appears in training.
HELD_OUT_PAIRS = frozenset({("red", "triangle"), ("green", "circle"), ("blue", "diamond"), ("yellow", "square")})
MIN_IMAGE_SIZE = 32

_ALL_PAIRS = tuple((color, shape) for color in COLORS for shape in SHAPES)


def is_held_out(color: str, shape: str) -> bool:
    """Whether the (colour, shape) pair is reserved for the "test" split."""
    return (color, shape) in HELD_OUT_PAIRS


def size_range(size: str, image_size: int) -> tuple[int, int]:
    """Inclusive range of bounding-box sides (pixels) for `size` ("small" / "large") on an `image_size` canvas."""
    low, high = SIZE_RANGES_64[size]
    scale = image_size / 64
    return max(2, round(low * scale)), max(2, round(high * scale))


def object_phrase(shape: str, color: str, count: int = 1, size: str | None = None) -> str:
    """'a red circle', 'an orange square', 'a large blue diamond', 'three green triangles'."""
    words = ([size] if size else []) + [color]
    if count == 1:
        article = "an" if words[0][0] in "aeiou" else "a"
        return f"{article} {' '.join(words)} {shape}"
    return f"{COUNT_WORDS[count]} {' '.join(words)} {shape}s"


def caption_from_spec(spec: dict) -> str:
    """The lower-case English caption of a spec (see `make_spec`)."""
    phrases = [object_phrase(o["shape"], o["color"], o["count"], o.get("size")) for o in spec["objects"]]
    if spec["task"] in ("two_objects", "color_attr"):
        return f"{phrases[0]} and {phrases[1]}"
    if spec["task"] == "position":
        return f"{phrases[0]} {spec['relation']} {phrases[1]}"
    return phrases[0]


def make_spec(task: str, objects: Sequence[dict], relation: str | None = None) -> dict:
    """What a caption asks for: `{"task", "objects": [{"shape", "color", "count", "size"}], "relation"}`.

    `size` is None when the caption does not name one; `relation` (one of `RELATIONS`, position task only) reads
    `objects[0] <relation> objects[1]`.
    """
    objs = [
        {"shape": o["shape"], "color": o["color"], "count": int(o.get("count", 1)), "size": o.get("size")}
        for o in objects
    ]
    return {"task": task, "objects": objs, "relation": relation}


def _sample_spec(task: str, split: str, rng: np.random.Generator) -> dict:
    """Draw a valid spec for `task` whose pairs respect the split's held-out rule (rejection sampling)."""
    n_objects = 2 if task in ("two_objects", "color_attr", "position") else 1
    while True:
        picks = [_ALL_PAIRS[i] for i in rng.integers(len(_ALL_PAIRS), size=n_objects)]
        held = [is_held_out(c, s) for c, s in picks]
        if (split == "test") != any(held):
            continue
        if n_objects == 2:
            (c0, s0), (c1, s1) = picks
            if task in ("two_objects", "color_attr") and s0 == s1:
                continue
            if task == "color_attr" and c0 == c1:
                continue
            if task == "position" and (c0, s0) == (c1, s1):
                continue
        break
    objects = [{"color": c, "shape": s} for c, s in picks]
    relation = None
    if task == "counting":
        objects[0]["count"] = int(rng.integers(1, 5))
    elif task == "single_object" and rng.random() < 0.5:
        objects[0]["size"] = SIZES[int(rng.integers(len(SIZES)))]
    elif task == "position":
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    return make_spec(task, objects, relation)


def _structural_edits(spec: dict) -> list[dict]:
    """Specs that keep `spec`'s objects but change what it says about them: their order, binding, count or size."""
    task, objects = spec["task"], spec["objects"]
    if task == "position":
        flipped = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        return [make_spec(task, objects, flipped[spec["relation"]])]
    if task in ("two_objects", "color_attr") and objects[0]["color"] != objects[1]["color"]:
        first, second = objects
        return [make_spec(task, [dict(first, color=second["color"]), dict(second, color=first["color"])])]
    if task == "counting":
        return [make_spec(task, [dict(objects[0], count=n)]) for n in COUNT_WORDS if n != objects[0]["count"]]
    if task == "single_object" and objects[0].get("size"):
        other = next(size for size in SIZES if size != objects[0]["size"])
        return [make_spec(task, [dict(objects[0], size=other)])]
    return []


def _attribute_edits(spec: dict) -> list[dict]:
    """Specs with one object's colour or shape replaced."""
    edits = []
    for i, obj in enumerate(spec["objects"]):
        for key, values in (("color", COLORS), ("shape", SHAPES)):
            for value in values:
                if value != obj[key]:
                    objects = [dict(o) for o in spec["objects"]]
                    objects[i][key] = value
                    edits.append(make_spec(spec["task"], objects, spec.get("relation")))
    return edits


def contradicting_spec(spec, split: str, rng: np.random.Generator) -> dict:
    """A spec the scene rendered for `spec` contradicts, for hard-negative contrastive training (NegCLIP, Yuksekgonul
    et al. 2023: in-batch negatives alone let a contrastive model read captions as bags of words).

    Structural edits come first, as they keep the objects and change only what the caption says about them: the
    relation flipped ("left of" <-> "right of", "above" <-> "below"; the renderer keeps the objects apart along that
    axis, so the flipped relation never holds), the two objects' colours swapped, another count, the other size.
    Where none applies, one object's colour or shape is replaced (never into a copy of the other object). Either way
    the result respects `split`'s held-out rule (no pair of `HELD_OUT_PAIRS` outside "test"), so training negatives
    never name a held-out pair.

    Args:
        spec: a spec dict or the dataset's JSON string (see `make_spec`).
        split: the split the spec comes from ("train", "validation" or "test").
        rng: draws among the admissible edits.
    """
    spec = json.loads(spec) if isinstance(spec, str) else spec
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    caption = caption_from_spec(spec)

    def admissible(edit: dict) -> bool:
        pairs = [(o["color"], o["shape"]) for o in edit["objects"]]
        held = any(is_held_out(*pair) for pair in pairs)
        return caption_from_spec(edit) != caption and len(set(pairs)) == len(pairs) and (split == "test" or not held)

    for edits in (_structural_edits(spec), _attribute_edits(spec)):
        edits = [edit for edit in edits if admissible(edit)]
        if edits:
            return edits[int(rng.integers(len(edits)))]
    raise ValueError(f"spec {spec!r} admits no contradicting edit in split {split!r}.")


def _relation_mask(relation: str, a: tuple[float, float], centres: np.ndarray, min_offset: float) -> np.ndarray:
    """Mask of centres (N, 2) that lie clearly `relation`-wise from centre `a` (i.e. "a <relation> centre").

    Clearly means: the offset along the named axis is at least `min_offset` and at least twice the offset across.
    """
    dx, dy = centres[:, 0] - a[0], centres[:, 1] - a[1]
    if relation in ("left of", "right of"):
        along, across = (dx if relation == "left of" else -dx), dy
    else:
        along, across = (dy if relation == "above" else -dy), dx
    return (along >= min_offset) & (np.abs(across) <= along / 2)


def _boxes_apart(cand: np.ndarray, side: int, corner: tuple[int, int], other: int, gap: int) -> np.ndarray:
    """Mask of candidate boxes (N, 2 top-left corners, side `side`) at least `gap` px away from another box."""
    x_free = (cand[:, 0] + side + gap <= corner[0]) | (corner[0] + other + gap <= cand[:, 0])
    y_free = (cand[:, 1] + side + gap <= corner[1]) | (corner[1] + other + gap <= cand[:, 1])
    return x_free | y_free


def _layout(
    sides: list[int], image_size: int, rng: np.random.Generator, relation: str | None
) -> list[tuple[int, int]]:
    """Top-left corners for boxes of the given sides: inside the canvas, pairwise separated by a minimum gap.

    Objects are placed one by one at a random valid candidate; a dead end restarts the layout, and after many
    restarts a jittered 2x2 grid (always feasible for at most 4 objects) is used, so the loop always ends.
    With `relation`, the second object is placed so that "object 0 <relation> object 1" clearly holds.
    """
    scale = image_size / 64
    margin, gap = max(1, round(2 * scale)), max(2, round(3 * scale))
    for _ in range(64):
        corners: list[tuple[int, int]] = []
        for side in sides:
            cand = rng.integers(margin, image_size - margin - side + 1, size=(128, 2))  # (N, 2) top-left x, y
            ok = np.ones(len(cand), dtype=bool)
            for corner, other in zip(corners, sides):
                ok &= _boxes_apart(cand, side, corner, other, gap)
            if relation is not None and corners:
                a = (corners[0][0] + (sides[0] - 1) / 2, corners[0][1] + (sides[0] - 1) / 2)
                ok &= _relation_mask(relation, a, cand + (side - 1) / 2, (sides[0] + side) / 2 + gap)
            valid = np.flatnonzero(ok)
            if len(valid) == 0:
                break
            x, y = cand[valid[int(rng.integers(len(valid)))]]
            corners.append((int(x), int(y)))
        else:
            return corners
    if relation is not None:
        raise RuntimeError(f"could not lay out {sides} with relation {relation!r} on a {image_size} px canvas.")
    return _grid_layout(sides, image_size, margin, gap, rng)


def _grid_layout(
    sides: list[int], image_size: int, margin: int, gap: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Fallback: one object per quadrant, jittered inside it while keeping `gap` / 2 px from the cell border."""
    cell, half_gap = (image_size - 2 * margin) // 2, (gap + 1) // 2
    corners = []
    for c, side in zip(rng.permutation(4)[: len(sides)], sides):
        room = max(0, cell - 2 * half_gap - side)
        x0 = margin + (c % 2) * cell + half_gap + int(rng.integers(room + 1))
        y0 = margin + (c // 2) * cell + half_gap + int(rng.integers(room + 1))
        corners.append((x0, y0))
    return corners


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], color) -> None:
    """Draw one shape filling the inclusive pixel box (x0, y0, x1, y1) exactly, without anti-aliasing.

    Triangles point up with the base on the bottom row; diamonds are squares turned 45 degrees. The detector
    draws its templates with this function too, so renders match templates pixel for pixel.
    """
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=color)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)
    else:
        raise ValueError(f"shape={shape!r} is not one of {SHAPES}.")


def render_spec(spec: dict, image_size: int, rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """Render a spec to an RGB image and return it with the ground-truth objects `{shape, color, size, x, y}`.

    Objects whose size the spec leaves open get a random size; counts expand into that many objects.
    """
    objects = []
    for o in spec["objects"]:
        for _ in range(o["count"]):
            size = o["size"] or SIZES[int(rng.integers(len(SIZES)))]
            low, high = size_range(size, image_size)
            objects.append(
                {"shape": o["shape"], "color": o["color"], "size": size, "side": int(rng.integers(low, high + 1))}
            )
    corners = _layout([o["side"] for o in objects], image_size, rng, spec.get("relation"))
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    truth = []
    for o, (x0, y0) in zip(objects, corners):
        draw_shape(draw, o["shape"], (x0, y0, x0 + o["side"] - 1, y0 + o["side"] - 1), PALETTE[o["color"]])
        centre = (o["side"] - 1) / 2
        truth.append({"shape": o["shape"], "color": o["color"], "size": o["size"], "x": x0 + centre, "y": y0 + centre})
    return image, truth


def _check_args(num_samples: int, split: str, image_size: int, tasks) -> tuple[str, ...]:
    if not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"num_samples={num_samples!r} must be a non-negative int.")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}.")
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size={image_size!r} must be an int >= {MIN_IMAGE_SIZE}; smaller shapes cannot be told apart "
            "exactly. Render at 32+ px and downsample afterwards if you need smaller images."
        )
    tasks = TASKS if tasks is None else (tasks,) if isinstance(tasks, str) else tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks={tasks!r} must be a non-empty subset of {TASKS}.")
    return tasks


FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "task": datasets.Value("string"),
        "objects": datasets.List(
            {
                "shape": datasets.Value("string"),
                "color": datasets.Value("string"),
                "size": datasets.Value("string"),
                "x": datasets.Value("float32"),
                "y": datasets.Value("float32"),
            }
        ),
        "spec": datasets.Value("string"),
    }
)


def generate_sample(index: int, split: str = "train", image_size: int = 64, seed: int = 0, tasks=None) -> dict:
    """Row `index` of `build_shapes_dataset(..., split, image_size, seed, tasks)` as a dict, without building it.

    Returns:
        dict with image (PIL RGB), text, task, objects (list of dicts) and spec (dict, not JSON).
    """
    return _generate(index, split, image_size, seed, _check_args(0, split, image_size, tasks))


def _row_rng(index: int, split: str, seed: int, *stream: int) -> np.random.Generator:
    # One generator per row: rows are independent of `num_samples`. `stream` keys a row's other generators (its twin's).
    return np.random.default_rng([seed, SPLITS.index(split), index, *stream])


def _row_spec(index: int, split: str, seed: int, tasks: tuple[str, ...]) -> tuple[str, dict, np.random.Generator]:
    # The task cycles so tasks stay balanced. The spec is the first thing the row's generator draws, so a row's twin
    # knows the row's spec without rendering the row.
    rng = _row_rng(index, split, seed)
    task = tasks[index % len(tasks)]
    return task, _sample_spec(task, split, rng), rng


def _generate(index: int, split: str, image_size: int, seed: int, tasks: tuple[str, ...]) -> dict:
    task, spec, rng = _row_spec(index, split, seed, tasks)
    image, objects = render_spec(spec, image_size, rng)
    return {"image": image, "text": caption_from_spec(spec), "task": task, "objects": objects, "spec": spec}


def _generate_twin(index: int, split: str, image_size: int, seed: int, tasks: tuple[str, ...]) -> dict:
    task, spec, _ = _row_spec(index, split, seed, tasks)
    rng = _row_rng(index, split, seed, 1)  # the twin's own, apart from every row's
    twin = contradicting_spec(spec, split, rng)
    image, objects = render_spec(twin, image_size, rng)
    return {"image": image, "text": caption_from_spec(twin), "task": task, "objects": objects, "spec": twin}


def build_shapes_dataset(
    num_samples: int, split: str = "train", image_size: int = 64, seed: int = 0, tasks=None
) -> datasets.Dataset:
    """Build an in-memory `datasets.Dataset` of `num_samples` rendered shape scenes with captions.

    Args:
        num_samples: number of rows.
        split: "train" / "validation" (no held-out pair) or "test" (every row has one of `HELD_OUT_PAIRS`).
        image_size: side of the square RGB images in pixels (>= 32); shape sizes scale with it.
        seed: base seed; the same (seed, split, index) always gives the same row.
        tasks: task names to cycle through (default: all of `TASKS`).

    Returns:
        Dataset with columns image, text, task, objects, spec (JSON string); see the module docstring.
    """
    return _build(_generate, num_samples, split, image_size, seed, tasks)


def build_contradicting_twins(
    num_samples: int, split: str = "train", image_size: int = 64, seed: int = 0, tasks=None
) -> datasets.Dataset:
    """Row `i` is the contradicting twin of row `i` of `build_shapes_dataset` (same arguments): the scene of a spec
    the row's own scene contradicts (`contradicting_spec`: the relation flipped, the colours swapped, another count
    or size, ...), with its caption. Row and twin side by side are hard negatives for each other in contrastive
    training: "a red circle left of a blue square" beside a picture where it is right of it.

    Returns:
        Dataset with the columns of `build_shapes_dataset`; `task` is the original row's task.
    """
    return _build(_generate_twin, num_samples, split, image_size, seed, tasks)


def _build(generate, num_samples: int, split: str, image_size: int, seed: int, tasks) -> datasets.Dataset:
    tasks = _check_args(num_samples, split, image_size, tasks)
    columns = {name: [] for name in FEATURES}
    for index in range(num_samples):
        row = generate(index, split, image_size, seed, tasks)
        columns["image"].append(encode_png(row["image"]))
        columns["text"].append(row["text"])
        columns["task"].append(row["task"])
        columns["objects"].append(row["objects"])
        columns["spec"].append(json.dumps(row["spec"]))
    return datasets.Dataset.from_dict(columns, features=FEATURES, split=split)
