"""Shared model helpers: the GPT-2 style init outside `torch.no_grad`, the file modes of a saved folder, and the
atomic JSON writer."""

import json
import os

import pytest
import torch
from torch import nn

from hf_t2i import DallePytorchDVAE, DallePytorchDVAEConfig
from hf_t2i.modeling_utils import (
    give_new_file_modes,
    init_transformer_weights,
    new_file_mode,
    write_json_atomically,
)


def test_init_transformer_weights_runs_on_trainable_parameters_with_grad_enabled():
    layer = nn.Linear(4, 4)
    with torch.enable_grad():  # in-place init of a leaf that requires grad: only allowed under no_grad
        assert init_transformer_weights(layer, 0.02, owner=None)
    assert torch.equal(layer.bias, torch.zeros(4)) and layer.weight.requires_grad


@pytest.mark.skipif(os.name != "posix", reason="permission bits are a POSIX notion")
def test_give_new_file_modes_undoes_owner_only_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for path in (tmp_path / "a.safetensors", tmp_path / "sub" / "b.json"):
        path.write_bytes(b"x")
        path.chmod(0o600)
    previous = os.umask(0o027)
    try:
        assert new_file_mode() == 0o640
        give_new_file_modes(tmp_path)
    finally:
        os.umask(previous)
    assert {p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()} == {0o640}


@pytest.mark.skipif(os.name != "posix", reason="permission bits are a POSIX notion")
def test_new_file_mode_leaves_the_umask_and_the_folder_as_they_were(tmp_path):
    previous = os.umask(0o077)
    try:
        assert new_file_mode(tmp_path) == 0o600
        assert os.umask(0o077) == 0o077  # read back: unchanged by the probe
    finally:
        os.umask(previous)
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


@pytest.mark.skipif(os.name != "posix", reason="permission bits are a POSIX notion")
def test_a_models_own_save_pretrained_gives_its_files_the_umasks_mode_and_leaves_other_files_alone(tmp_path):
    model = DallePytorchDVAE(DallePytorchDVAEConfig(image_size=16, vocab_size=32, codebook_dim=8, num_layers=2))
    tmp_path.joinpath("mine.txt").write_text("not written by the save")
    tmp_path.joinpath("mine.txt").chmod(0o600)
    previous = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()}
    assert modes.pop("mine.txt") == 0o600
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes


def test_write_json_atomically_replaces_the_file_or_leaves_it_as_it_was(tmp_path):
    path = tmp_path / "report.json"
    write_json_atomically(path, {"b": 1, "a": [2]}, sort_keys=True)
    assert path.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    with pytest.raises(TypeError):  # json cannot write it, halfway through
        write_json_atomically(path, {"a": 1, "b": object()})
    assert json.loads(path.read_text()) == {"a": [2], "b": 1}  # the previous file, whole
    assert os.listdir(tmp_path) == ["report.json"]  # and no temporary file left behind
