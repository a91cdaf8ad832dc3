"""GenEval-style compositional accuracy on `shapes` prompts, scored with the exact shapes detector.

A sample is correct when the image holds what its spec (see `hf_t2i.data.shapes.make_spec`) asks for. Rules, per
task (an object "matches" a spec object when shape and colour agree, and size too when the spec names one):

- single_object, colors, two_objects, color_attr: every spec object has at least `count` (= 1) matches. Colour
  binding is part of the match, so "a red circle and a blue square" fails on a blue circle and a red square.
- counting: exactly `count` matches, and no other object of that shape (GenEval's "no extra instances" rule).
- position: both objects match, and some pair of matches satisfies the relation "objects[0] <relation>
  objects[1]": the centres differ along the named axis (x for left/right, y for above/below, y growing downwards)
  by more than `position_margin` pixels.

With `strict=True` the image must also hold nothing else: the number of detections equals the number of objects
the caption asks for (unrecognised blobs count as extra objects).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from PIL import Image

from ..data.shapes import RELATIONS, TASKS
from .shapes_detector import DetectedObject, detect_shapes


def _field(obj, name: str):
    """Attribute of a `DetectedObject`, or key of a ground-truth object dict (a dataset `objects` entry)."""
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def parse_spec(spec) -> dict:
    """Spec as a dict; accepts the dataset's JSON string. Raises ValueError on an unknown task or relation."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    if not isinstance(spec, Mapping) or spec.get("task") not in TASKS:
        raise ValueError(f"spec={spec!r} must be a dict (or JSON string) with 'task' in {TASKS}.")
    if spec["task"] == "position" and spec.get("relation") not in RELATIONS:
        raise ValueError(f"spec relation={spec.get('relation')!r} must be one of {RELATIONS} for the position task.")
    return dict(spec)


def _matches(request: Mapping, detections: Sequence) -> list:
    return [
        d
        for d in detections
        if _field(d, "shape") == request["shape"]
        and _field(d, "color") == request["color"]
        and (request.get("size") is None or _field(d, "size") == request["size"])
    ]


def _relation_holds(relation: str, a, b, margin: float) -> bool:
    """Whether object `a` is `relation` object `b` (image coordinates: y grows downwards)."""
    dx = _field(b, "x") - _field(a, "x")
    dy = _field(b, "y") - _field(a, "y")
    offset = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[relation]
    return offset > margin


def score_sample(spec, detections: Sequence, strict: bool = False, position_margin: float = 3.0) -> bool:
    """Whether `detections` satisfy `spec` under the task's rule (see the module docstring).

    Args:
        spec: dict or JSON string as in the dataset's `spec` column.
        detections: `DetectedObject`s from `detect_shapes`, or ground-truth object dicts (dataset `objects`).
        strict: also reject images that contain objects the caption does not ask for.
        position_margin: smallest centre offset in pixels along the relation's axis.
    """
    spec = parse_spec(spec)
    requests = spec["objects"]
    if strict and len(detections) != sum(r["count"] for r in requests):
        return False
    matches = [_matches(r, detections) for r in requests]
    if spec["task"] == "counting":
        request = requests[0]
        same_shape = [d for d in detections if _field(d, "shape") == request["shape"]]
        return len(matches[0]) == request["count"] and len(same_shape) == request["count"]
    if any(len(m) < r["count"] for m, r in zip(matches, requests)):
        return False
    if spec["task"] == "position":
        return any(
            _relation_holds(spec["relation"], a, b, position_margin)
            for a in matches[0]
            for b in matches[1]
            if a is not b
        )
    return True


def position_outcome(spec, detections: Sequence, position_margin: float = 3.0) -> str:
    """Why a position sample passes or fails: "correct", "wrong_relation" (both objects drawn, the relation does not
    hold: mostly the two the wrong way round) or "missing_object" (an object the caption names is not found)."""
    spec = parse_spec(spec)
    if spec["task"] != "position":
        raise ValueError(f"position_outcome scores position specs, got task {spec['task']!r}.")
    if score_sample(spec, detections, position_margin=position_margin):
        return "correct"
    matches = [_matches(request, detections) for request in spec["objects"]]
    return "wrong_relation" if all(matches) else "missing_object"


def compositional_accuracy(
    images: Iterable,
    specs: Iterable,
    strict: bool = False,
    position_margin: float | None = None,
    **detector_kwargs,
) -> dict:
    """Detect objects in each image and score it against its spec.

    Args:
        images: PIL images or arrays (H, W, 3) / (3, H, W), e.g. a pipeline's `images` or `np` output.
        specs: one spec (dict or JSON string) per image, e.g. the `spec` column of a "test" shapes dataset.
        strict: see `score_sample`.
        position_margin: pixels; default 5% of each image's width.
        **detector_kwargs: passed to `detect_shapes` (`min_area`, `color_tolerance`, `min_blend`).

    Returns:
        dict with "overall" (mean of the per-task accuracies, GenEval's headline number), "sample_accuracy"
        (mean over samples), "per_task" {task: accuracy}, "per_task_count" {task: samples}, "num_samples" and
        "correct" (one bool per sample); with position samples (and `strict=False`) also "position_outcomes"
        {"correct", "wrong_relation", "missing_object": fraction of the position samples} (`position_outcome`).
    """
    images, specs = list(images), [parse_spec(s) for s in specs]
    if len(images) != len(specs):
        raise ValueError(f"got {len(images)} images but {len(specs)} specs; pass one spec per image.")
    if not images:
        raise ValueError("images is empty; pass at least one image and its spec.")
    correct, outcomes = [], []
    for image, spec in zip(images, specs):
        detections: list[DetectedObject] = detect_shapes(image, **detector_kwargs)
        margin = 0.05 * _width(image) if position_margin is None else position_margin
        if spec["task"] == "position" and not strict:  # the outcome says whether it passed, and why not
            outcomes.append(position_outcome(spec, detections, position_margin=margin))
            correct.append(outcomes[-1] == "correct")
        else:
            correct.append(score_sample(spec, detections, strict=strict, position_margin=margin))
    per_task: dict[str, list[bool]] = {}
    for spec, ok in zip(specs, correct):
        per_task.setdefault(spec["task"], []).append(ok)
    accuracy = {task: sum(oks) / len(oks) for task, oks in per_task.items()}
    results = {
        "overall": sum(accuracy.values()) / len(accuracy),
        "sample_accuracy": sum(correct) / len(correct),
        "per_task": accuracy,
        "per_task_count": {task: len(oks) for task, oks in per_task.items()},
        "num_samples": len(correct),
        "correct": correct,
    }
    if outcomes:
        kinds = ("correct", "wrong_relation", "missing_object")
        results["position_outcomes"] = {kind: outcomes.count(kind) / len(outcomes) for kind in kinds}
    return results


def _width(image) -> int:
    """Width in pixels of a PIL image or an (H, W, 3) / (3, H, W) array."""
    if isinstance(image, Image.Image):
        return image.width
    shape = tuple(image.shape)
    return shape[1] if shape[-1] == 3 else shape[-1]
