"""GenEval-style scoring: ground truth passes, renders of other captions and broken bindings fail."""

import json

import pytest

from hf_t2i.data.shapes import TASKS, build_shapes_dataset, make_spec
from hf_t2i.evaluation.compositional import compositional_accuracy, parse_spec, position_outcome, score_sample
from hf_t2i.evaluation.shapes_detector import DetectedObject


@pytest.fixture(scope="module")
def test_set():
    return build_shapes_dataset(240, split="test", seed=3)


def _obj(shape, color, x, y, size="small"):
    return DetectedObject(shape=shape, color=color, size=size, x=x, y=y, area=100)


def test_ground_truth_scores_perfectly(test_set):
    result = compositional_accuracy(test_set["image"], test_set["spec"])
    assert result["overall"] == result["sample_accuracy"] == 1.0
    assert set(result["per_task"]) == set(TASKS) and result["num_samples"] == len(test_set)
    strict = compositional_accuracy(test_set["image"], test_set["spec"], strict=True)
    assert strict["sample_accuracy"] == 1.0
    assert all(score_sample(row["spec"], row["objects"], strict=True) for row in test_set)


def test_renders_of_other_captions_are_rejected(test_set):
    rows = list(test_set)
    rejected = checked = 0
    for row, other in zip(rows, rows[1:] + rows[:1]):
        present = {(o["color"], o["shape"]) for o in row["objects"]}
        asked = {(o["color"], o["shape"]) for o in json.loads(other["spec"])["objects"]}
        if asked <= present:
            continue
        checked += 1
        rejected += not compositional_accuracy([row["image"]], [other["spec"]])["correct"][0]
    assert checked > 150 and rejected == checked


def test_counting_needs_the_exact_count(test_set):
    row = next(r for r in test_set if r["task"] == "counting")
    spec = json.loads(row["spec"])
    for delta in (-1, 1):
        wrong = dict(spec, objects=[dict(spec["objects"][0], count=spec["objects"][0]["count"] + delta)])
        if wrong["objects"][0]["count"] > 0:
            assert not compositional_accuracy([row["image"]], [wrong])["correct"][0]
    # an extra object of the same shape in another colour breaks the count
    shape, color = spec["objects"][0]["shape"], spec["objects"][0]["color"]
    other = "blue" if color != "blue" else "red"
    objects = [_obj(shape, color, 10 * i, 10) for i in range(spec["objects"][0]["count"])]
    assert score_sample(spec, objects)
    assert not score_sample(spec, [*objects, _obj(shape, other, 60, 60)])


def test_color_binding_and_position_rules():
    binding = make_spec("color_attr", [{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}])
    right = [_obj("circle", "red", 10, 10), _obj("square", "blue", 40, 10)]
    swapped = [_obj("circle", "blue", 10, 10), _obj("square", "red", 40, 10)]
    assert score_sample(binding, right) and not score_sample(binding, swapped)

    left = make_spec("position", binding["objects"], relation="left of")
    assert score_sample(left, right)
    assert not score_sample(dict(left, relation="right of"), right)
    assert not score_sample(dict(left, relation="above"), right)
    assert not score_sample(left, [_obj("circle", "red", 10, 10), _obj("square", "blue", 12, 30)])  # within margin
    below = [_obj("circle", "red", 10, 40), _obj("square", "blue", 10, 10)]
    assert score_sample(dict(left, relation="below"), below)


def test_position_outcomes_tell_a_reversal_from_a_missing_object():
    from hf_t2i.data import build_contradicting_twins

    spec = make_spec(
        "position", [{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}], "left of"
    )
    assert position_outcome(spec, [_obj("circle", "red", 10, 10), _obj("square", "blue", 40, 10)]) == "correct"
    assert position_outcome(spec, [_obj("circle", "red", 40, 10), _obj("square", "blue", 10, 10)]) == "wrong_relation"
    assert position_outcome(spec, [_obj("circle", "red", 10, 10), _obj("square", "red", 40, 10)]) == "missing_object"
    with pytest.raises(ValueError, match="position"):
        position_outcome(make_spec("colors", [{"shape": "circle", "color": "red"}]), [])

    # each position scene scored against its twin's caption (the relation flipped): all the wrong way round
    rows, twins = build_shapes_dataset(60, "validation"), build_contradicting_twins(60, "validation")
    result = compositional_accuracy(rows["image"], twins["spec"])
    assert result["per_task"]["position"] == 0.0
    assert result["position_outcomes"] == {"correct": 0.0, "wrong_relation": 1.0, "missing_object": 0.0}
    assert compositional_accuracy(rows["image"], rows["spec"])["position_outcomes"]["correct"] == 1.0
    assert "position_outcomes" not in compositional_accuracy(rows["image"][:1], rows["spec"][:1])  # no position row


def test_size_is_checked_only_when_named():
    sized = make_spec("single_object", [{"shape": "diamond", "color": "green", "size": "large"}])
    assert score_sample(sized, [_obj("diamond", "green", 5, 5, size="large")])
    assert not score_sample(sized, [_obj("diamond", "green", 5, 5, size="small")])
    unsized = make_spec("single_object", [{"shape": "diamond", "color": "green"}])
    assert score_sample(unsized, [_obj("diamond", "green", 5, 5, size="small")])


def test_strict_rejects_extra_objects():
    spec = make_spec("colors", [{"shape": "circle", "color": "red"}])
    detections = [_obj("circle", "red", 10, 10), _obj("unknown", "green", 40, 40)]
    assert score_sample(spec, detections)
    assert not score_sample(spec, detections, strict=True)


def test_bad_specs_and_inputs_raise():
    with pytest.raises(ValueError, match="task"):
        parse_spec({"task": "rotation", "objects": []})
    with pytest.raises(ValueError, match="relation"):
        parse_spec(json.dumps({"task": "position", "objects": [], "relation": "behind"}))
    spec = make_spec("colors", [{"shape": "circle", "color": "red"}])
    with pytest.raises(ValueError, match="1 images but 2 specs"):
        compositional_accuracy([None], [spec, spec])
    with pytest.raises(ValueError, match="empty"):
        compositional_accuracy([], [])
