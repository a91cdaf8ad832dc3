"""Faults around training checkpoints: planted pickles, foreign folders, corrupt or mismatched checkpoints, kill -9.

Each test asserts the documented safe behaviour: a checkpoint holds no pickle that is unpickled without torch's
restricted `weights_only` loader, a folder that is not an hf_t2i checkpoint is refused, a corrupt latest checkpoint
falls back to the previous complete one, and a run killed with SIGKILL resumes to bit-identical final weights.
"""

import builtins
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_t2i.training import train
from hf_t2i.training.checkpointing import MANIFEST_NAME, CheckpointError, upgrade_legacy_checkpoint

from ..training.test_training_loop import assert_same, make_config
from ..training.training_toy import ToyConfig, ToyRecipe, reset_accelerate_state


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    reset_accelerate_state()
    yield
    reset_accelerate_state()


class Payload:
    """Unpickling this object creates `marker` (what a malicious pickle would do with `os.system`)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def plant(path: Path, marker: Path, list_in_manifest: bool) -> None:
    """Write a malicious pickle at `path`; optionally also edit the checkpoint's manifest to list it (an attacker
    who can write the folder can rewrite the manifest too)."""
    torch.save(Payload(marker), path)
    if list_in_manifest:
        manifest_path = path.parent / MANIFEST_NAME
        manifest = json.loads(manifest_path.read_text())
        manifest["files"][path.name] = path.stat().st_size
        manifest_path.write_text(json.dumps(manifest))


def run_checkpoints(tmp_path, max_steps=4, **overrides):
    """A toy run saving a checkpoint every 2 steps (with EMA); returns its output dir."""
    out = tmp_path / "run"
    train(ToyRecipe(), make_config(out, max_steps=max_steps, checkpointing_steps=2, ema_decay=0.9, **overrides))
    reset_accelerate_state()
    return out


def resume(out, max_steps=4, recipe=None, resume_from_checkpoint="latest"):
    recipe = recipe or ToyRecipe()
    config = make_config(
        out, max_steps=max_steps, checkpointing_steps=2, ema_decay=0.9, resume_from_checkpoint=resume_from_checkpoint
    )
    metrics = train(recipe, config)
    return recipe, metrics


# ------------------------------------------------------------------------------------------- planted pickles
@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer_1.bin", "evil.pt"])
def test_planted_unlisted_pickle_is_refused_and_never_run(tmp_path, name):
    out = run_checkpoints(tmp_path)
    marker = tmp_path / "pwned"
    plant(out / "checkpoint-000004" / name, marker, list_in_manifest=False)
    with pytest.raises(CheckpointError, match=rf"resume_from_checkpoint=.*checkpoint-000004.*{name}.*never loaded"):
        resume(out, resume_from_checkpoint=str(out / "checkpoint-000004"))
    assert not marker.exists()
    # "latest" skips the tampered checkpoint, with a warning naming it and the one used instead.
    reset_accelerate_state()
    with pytest.warns(UserWarning, match=r"checkpoint-000004.*resuming from .*checkpoint-000002"):
        recipe, _ = resume(out)
    assert recipe.seen[0][0] == 2
    assert not marker.exists()


@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl"])
def test_pickle_listed_in_a_forged_manifest_is_never_run(tmp_path, name):
    out = run_checkpoints(tmp_path)
    marker = tmp_path / "pwned"
    plant(out / "checkpoint-000004" / name, marker, list_in_manifest=True)
    if name == "random_states_0.pkl":
        # Never needed (RNG states are in rng_state_0.safetensors): accelerate's restricted load of it fails, and
        # the resume stays exact.
        recipe, metrics = resume(out, max_steps=6)
        assert recipe.seen[0][0] == 4 and metrics["global_step"] == 6
    else:
        with pytest.raises(CheckpointError, match=r"Cannot resume from .*checkpoint-000004"):
            resume(out, max_steps=6)
    assert not marker.exists()


def test_folder_that_is_not_a_checkpoint_is_refused(tmp_path):
    for folder in ("/etc", str(tmp_path)):
        with pytest.raises(CheckpointError, match=r"resume_from_checkpoint=.*is not an hf_t2i training checkpoint"):
            resume(tmp_path / "run", resume_from_checkpoint=folder)
        reset_accelerate_state()
    assert issubclass(CheckpointError, ValueError)


# ------------------------------------------------------------------------------- max_steps, model size, corruption
def test_max_steps_below_checkpoint_step_is_an_error(tmp_path):
    out = run_checkpoints(tmp_path)
    final_before = load_file(out / "final" / "toy.safetensors")
    with pytest.raises(CheckpointError, match=r"max_steps=2 is below .*checkpoint-000004, step 4"):
        resume(out, max_steps=2)
    assert_same(final_before, load_file(out / "final" / "toy.safetensors"), "final")  # not overwritten


def test_changed_model_size_names_checkpoint_and_change(tmp_path):
    out = run_checkpoints(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"checkpoint-000004.*different model.*\[16, 4\].*\[32, 4\].*hidden: 16 -> 32"
    ):
        resume(out, max_steps=6, recipe=ToyRecipe(ToyConfig(hidden=32)))


def test_truncated_latest_checkpoint_falls_back_to_previous_and_stays_exact(tmp_path):
    straight = tmp_path / "straight"
    train(ToyRecipe(), make_config(straight, max_steps=6, checkpointing_steps=2, ema_decay=0.9))
    reset_accelerate_state()
    out = run_checkpoints(tmp_path)
    model_file = out / "checkpoint-000004" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])  # a truncated copy
    with pytest.raises(CheckpointError, match=r"checkpoint-000004 is corrupt: model.safetensors has 100 bytes"):
        resume(out, max_steps=6, resume_from_checkpoint="checkpoint-000004")
    reset_accelerate_state()
    with pytest.warns(UserWarning, match=r"checkpoint-000004 .*model.safetensors.*resuming from .*checkpoint-000002"):
        recipe, metrics = resume(out, max_steps=6)
    assert recipe.seen[0][0] == 2 and metrics["global_step"] == 6
    assert_same(load_file(straight / "final" / "toy.safetensors"), load_file(out / "final" / "toy.safetensors"))


def test_latest_with_only_corrupt_checkpoints_is_an_error(tmp_path):
    out = run_checkpoints(tmp_path, max_steps=2)
    (out / "checkpoint-000002" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in .*hf_t2i_checkpoint.json is corrupt"):
        resume(out)


# ------------------------------------------------------------------------------------------ legacy checkpoints
def make_legacy(checkpoint: Path, payload_marker: Path | None = None) -> None:
    """Turn a current checkpoint into the layout older hf_t2i wrote (accelerate custom_checkpoint_*.pkl)."""
    import random

    import numpy as np

    manifest = json.loads((checkpoint / MANIFEST_NAME).read_text())
    rng = load_file(checkpoint / "rng_state_0.safetensors")
    ema = load_file(checkpoint / "ema.safetensors")
    from safetensors import safe_open

    with safe_open(checkpoint / "rng_state_0.safetensors", framework="pt") as handle:
        meta = handle.metadata()
    with safe_open(checkpoint / "ema.safetensors", framework="pt") as handle:
        ema_scalars = json.loads(handle.metadata()["ema"])
    version, gauss = json.loads(meta["python"])
    np_name, np_pos, np_has_gauss, np_gauss = json.loads(meta["numpy"])
    torch.save(
        {
            "step": 0,
            "random_state": (version, tuple(rng["python"].tolist()), gauss),
            "numpy_random_seed": (np_name, rng["numpy"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss),
            "torch_manual_seed": rng["torch"],
        },
        checkpoint / "random_states_0.pkl",
    )
    state0 = Payload(payload_marker) if payload_marker else manifest["train_state"]
    torch.save(state0, checkpoint / "custom_checkpoint_0.pkl")
    torch.save({"state": rng["generator"]}, checkpoint / "custom_checkpoint_1.pkl")
    torch.save(
        {**ema_scalars, "shadow_params": [ema[f"shadow_params.{i}"] for i in range(len(ema))]},
        checkpoint / "custom_checkpoint_2.pkl",
    )
    for name in (MANIFEST_NAME, "rng_state_0.safetensors", "ema.safetensors"):
        os.remove(checkpoint / name)
    del random


def test_legacy_checkpoint_is_refused_then_upgraded_without_running_its_pickles(tmp_path):
    straight = tmp_path / "straight"
    train(ToyRecipe(), make_config(straight, max_steps=6, checkpointing_steps=2, ema_decay=0.9))
    reset_accelerate_state()
    out = run_checkpoints(tmp_path)
    make_legacy(out / "checkpoint-000004")
    with pytest.raises(CheckpointError, match=r"checkpoint-000004 is not an hf_t2i .*upgrade_legacy_checkpoint"):
        resume(out, max_steps=6, resume_from_checkpoint="checkpoint-000004")
    upgrade_legacy_checkpoint(str(out / "checkpoint-000004"))
    assert not list((out / "checkpoint-000004").glob("*.pkl"))
    reset_accelerate_state()
    recipe, _ = resume(out, max_steps=6)
    assert recipe.seen[0][0] == 4
    assert_same(load_file(straight / "final" / "toy.safetensors"), load_file(out / "final" / "toy.safetensors"))

    marker = tmp_path / "pwned"
    make_legacy(out / "checkpoint-000002", payload_marker=marker)
    with pytest.raises(CheckpointError, match=r"custom_checkpoint_0.pkl is not a plain state pickle, refused"):
        upgrade_legacy_checkpoint(str(out / "checkpoint-000002"))
    assert not marker.exists()


# -------------------------------------------------------------------------------------------------- kill -9
KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from tests.training.training_toy import ToyRecipe
    from tests.training.test_training_loop import make_config
    from hf_t2i.training import train

    class SlowToy(ToyRecipe):
        def training_step(self, model, batch, step):
            if step >= 3:
                time.sleep(0.05)  # leaves the parent time to kill it mid-run
            return super().training_step(model, batch, step)

    train(SlowToy(), make_config(sys.argv[1], **KWARGS))
    """
)
KILL_KWARGS = {
    "max_steps": 40,
    "checkpointing_steps": 3,
    "ema_decay": 0.9,
    "gradient_accumulation_steps": 2,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 2,
    "resume_from_checkpoint": "latest",
}


def test_kill_9_then_resume_gives_identical_final_weights(tmp_path):
    straight = tmp_path / "straight"
    train(ToyRecipe(), make_config(straight, **KILL_KWARGS))
    reset_accelerate_state()

    out = tmp_path / "killed"
    script = tmp_path / "slow_toy.py"
    script.write_text(KILL_SCRIPT.replace("**KWARGS", f"**{KILL_KWARGS!r}"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    process = subprocess.Popen(
        [sys.executable, str(script), str(out)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint-000006").is_dir():  # killed after a checkpoint, likely during the next ones
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL and not (out / "final").exists()

    recipe = ToyRecipe()
    metrics = train(recipe, make_config(out, **KILL_KWARGS))
    assert recipe.seen[0][0] >= 6 and metrics["global_step"] == 40
    assert_same(load_file(straight / "final" / "toy.safetensors"), load_file(out / "final" / "toy.safetensors"))


def test_cli_reports_an_unresumable_checkpoint_without_a_traceback(tmp_path, monkeypatch, capsys):
    from hf_t2i.training import RECIPES
    from hf_t2i.training.cli import main

    monkeypatch.setitem(RECIPES, "toy", ToyRecipe)
    code = main(["toy", "--output-dir", str(tmp_path), "--report-to", "none", "--resume-from-checkpoint", "/etc"])
    assert code == 2
    err = capsys.readouterr().err
    assert "hf-t2i train toy: error: TrainingConfig.resume_from_checkpoint='/etc'" in err
    assert "is not an hf_t2i training checkpoint" in err and "Traceback" not in err


def test_generator_state_of_another_device_kind_reseeds_reproducibly(tmp_path):
    """A checkpoint written on a GPU (its recipe generator's state: a CUDA seed and offset, 16 bytes) resumed on a
    CPU, or back: the generator cannot take that state, so it is seeded from it, the same way every time."""
    from hf_t2i.training.checkpointing import load_rng_state, save_rng_state

    cuda_like_state = torch.arange(16, dtype=torch.uint8)
    save_rng_state(str(tmp_path), 0, cuda_like_state)
    draws = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(123)
        with pytest.warns(UserWarning, match=r"another kind of device than this run's \(cpu\).*seeded from"):
            assert load_rng_state(str(tmp_path), 0, generator)
        draws.append(torch.rand(4, generator=generator))
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], torch.rand(4, generator=torch.Generator().manual_seed(123)))

    same_kind = torch.Generator().manual_seed(7)  # a state of the same kind still restores exactly
    save_rng_state(str(tmp_path), 0, same_kind)
    expected = torch.rand(4, generator=same_kind)
    generator = torch.Generator()
    assert load_rng_state(str(tmp_path), 0, generator)
    assert torch.equal(torch.rand(4, generator=generator), expected)
