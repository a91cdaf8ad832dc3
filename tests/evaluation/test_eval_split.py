"""`load_eval_split(..., split=)`: shapes' validation split (in-distribution) vs its test split (held-out pairs)."""

import json

import pytest

from hf_t2i.data import is_held_out
from hf_t2i.evaluation import load_eval_split
from hf_t2i.evaluation.runner import EVAL_SPLITS, VALIDATION_DATASETS, check_eval_split


def held_out_pairs(row_spec: str) -> list[tuple[str, str]]:
    objects = json.loads(row_spec)["objects"]
    return [(o["color"], o["shape"]) for o in objects if is_held_out(o["color"], o["shape"])]


def test_shapes_validation_rows_hold_no_held_out_pair_and_differ_from_test():
    validation = load_eval_split("shapes", 24, 32, split="validation")
    test = load_eval_split("shapes", 24, 32, split="test")
    assert len(validation) == len(test) == 24
    assert all(not held_out_pairs(spec) for spec in validation["spec"])
    assert all(held_out_pairs(spec) for spec in test["spec"])
    assert validation["text"] != test["text"]
    assert [image.tobytes() for image in validation["image"]] != [image.tobytes() for image in test["image"]]


def test_the_default_split_is_still_test():
    default = load_eval_split("shapes", 6, 32, data_seed=3)
    assert default["text"] == load_eval_split("shapes", 6, 32, data_seed=3, split="test")["text"]
    assert default["text"] != load_eval_split("shapes", 6, 32, data_seed=3, split="validation")["text"]


@pytest.mark.parametrize("split", ["train", "val", "Test", ""])
def test_an_unknown_split_names_the_argument_the_value_and_the_choices(split):
    with pytest.raises(ValueError, match=rf"`split`.*{split!r}") as error:
        load_eval_split("shapes", 2, 32, split=split)
    assert all(name in str(error.value) for name in EVAL_SPLITS)


@pytest.mark.parametrize("dataset", ["emoji", "fashion_mnist", "imagefolder"])
def test_validation_on_a_dataset_without_one_names_split_dataset_and_what_is_allowed(dataset):
    # raised before any data is looked for (no emoji cache, Fashion-MNIST files or folder needed)
    with pytest.raises(ValueError, match=rf"`split`.*'validation'.*{dataset!r}") as error:
        load_eval_split(dataset, 2, 32, split="validation")
    message = str(error.value)
    assert "--split test" in message and all(name in message for name in VALIDATION_DATASETS)
    check_eval_split("test", dataset)  # the test split stays allowed
