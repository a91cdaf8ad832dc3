"""Behaviour of `hf_t2i.training.train` on the toy recipe: learning, exact resume, checkpoints, EMA, outputs."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hf_t2i.modeling_utils import new_file_mode
from hf_t2i.training import TrainingConfig, list_checkpoints, train
from hf_t2i.training.trainer import append_eval_history, read_eval_history

from .training_toy import ToyConfig, ToyRecipe, reset_accelerate_state


def make_config(output_dir, **overrides) -> TrainingConfig:
    values = {
        "output_dir": str(output_dir),
        "max_steps": 6,
        "train_batch_size": 4,
        "learning_rate": 1e-2,
        "checkpointing_steps": 0,
        "log_steps": 1,
        "report_to": "none",
        "seed": 0,
    }
    values.update(overrides)
    return TrainingConfig(**values)


def load_checkpoint(path) -> dict:
    """Everything a checkpoint folder holds, as tensors / python values."""
    state = {"model": load_file(os.path.join(path, "model.safetensors"))}
    for name in ("optimizer.bin", "scheduler.bin"):
        state[name] = torch.load(os.path.join(path, name), weights_only=True)
    for name in ("rng_state_0.safetensors", "ema.safetensors"):
        if os.path.exists(os.path.join(path, name)):
            state[name] = load_file(os.path.join(path, name))
    with open(os.path.join(path, "hf_t2i_checkpoint.json"), encoding="utf-8") as f:
        state["manifest"] = json.load(f)
    assert not [n for n in os.listdir(path) if n.endswith(".pkl")]  # no pickle that would need a full unpickler
    return state


def assert_same(a, b, where="") -> None:
    """Recursive exact equality of nested dicts / lists / tensors."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), f"arrays differ at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"keys differ at {where}"
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{a!r} != {b!r} at {where}"


def test_loss_decreases(tmp_path):
    recipe = ToyRecipe(ToyConfig(num_samples=64, input_noise=0.0))
    metrics = train(
        recipe, make_config(tmp_path, max_steps=60, train_batch_size=16, log_steps=10, checkpointing_steps=30)
    )
    first, last = sum(recipe.losses[:5]) / 5, sum(recipe.losses[-5:]) / 5
    assert last < 0.3 * first, (first, last)
    assert metrics["global_step"] == 60 and metrics["train_loss"] < first
    assert os.path.exists(tmp_path / "final" / "toy.safetensors")
    if (
        os.name == "posix"
    ):  # safetensors writes 0600 whatever the umask (safetensors#782); the export and checkpoints do not
        for folder in ("final", "checkpoint-000060"):
            modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / folder).rglob("*") if p.is_file()}
            assert set(modes.values()) == {new_file_mode()}, (folder, modes)


@pytest.mark.parametrize(
    "checkpointing_steps, crash_at_step, num_workers",
    # resume at an epoch boundary (3 steps per epoch) / in the middle of the second epoch / with loader workers
    [(3, 3, 0), (2, 5, 0), (2, 5, 2)],
)
def test_exact_resume(tmp_path, checkpointing_steps, crash_at_step, num_workers):
    # 20 rows, micro-batch 4, 2 accumulated -> 3 optimizer steps per epoch, the last one a single micro-batch.
    common = {
        "gradient_accumulation_steps": 2,
        "checkpointing_steps": checkpointing_steps,
        "ema_decay": 0.9,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 2,
        "min_lr_ratio": 0.1,
        "sample_steps": 2,
        "dataloader_num_workers": num_workers,
    }
    straight = ToyRecipe()
    train(straight, make_config(tmp_path / "straight", **common))

    reset_accelerate_state()
    crashed = ToyRecipe(ToyConfig(crash_at_step=crash_at_step))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, make_config(tmp_path / "resumed", **common))
    reset_accelerate_state()  # a new process
    resumed = ToyRecipe()
    metrics = train(resumed, make_config(tmp_path / "resumed", resume_from_checkpoint="latest", **common))

    resume_step = crash_at_step - crash_at_step % checkpointing_steps
    assert resumed.seen[0][0] == resume_step  # it continued, it did not restart
    assert resumed.seen == [s for s in straight.seen if s[0] >= resume_step]  # same batches, same order
    assert metrics["global_step"] == 6
    final_a = load_file(tmp_path / "straight" / "final" / "toy.safetensors")
    final_b = load_file(tmp_path / "resumed" / "final" / "toy.safetensors")
    assert_same(final_a, final_b, "final")
    assert_same(
        load_checkpoint(tmp_path / "straight" / "checkpoint-000006"),
        load_checkpoint(tmp_path / "resumed" / "checkpoint-000006"),
        "checkpoint-000006",
    )


def test_data_order_is_shuffled_and_covers_each_epoch(tmp_path):
    recipe = ToyRecipe()
    train(recipe, make_config(tmp_path, max_steps=10))  # 5 micro-batches per epoch, 2 epochs
    epochs = [[i for _, idx in recipe.seen[e * 5 : (e + 1) * 5] for i in idx] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(20))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(20))


def test_stale_tmp_checkpoint_is_ignored_and_limit_prunes(tmp_path):
    config = make_config(tmp_path, max_steps=4, checkpointing_steps=1, checkpoints_total_limit=2)
    train(ToyRecipe(), config)
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [3, 4]

    # A crash while saving step 99 (or step 5) leaves half-written folders behind.
    for name in ("checkpoint-000099.tmp", "checkpoint-000005.tmp"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "junk").write_text("half written")
    reset_accelerate_state()
    recipe = ToyRecipe()
    config = make_config(
        tmp_path, max_steps=5, checkpointing_steps=1, checkpoints_total_limit=2, resume_from_checkpoint="latest"
    )
    train(recipe, config)
    assert {step for step, _ in recipe.seen} == {4}  # resumed from checkpoint-000004, not from the .tmp
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [4, 5]
    assert not os.path.exists(tmp_path / "checkpoint-000005" / "junk")
    assert not os.path.exists(tmp_path / "checkpoint-000005.tmp")


def test_resume_from_explicit_path_and_bad_path(tmp_path):
    train(ToyRecipe(), make_config(tmp_path, max_steps=2, checkpointing_steps=1))
    reset_accelerate_state()
    recipe = ToyRecipe()
    train(recipe, make_config(tmp_path, max_steps=3, resume_from_checkpoint="checkpoint-000001"))
    assert {step for step, _ in recipe.seen} == {1, 2}
    reset_accelerate_state()
    with pytest.raises(ValueError, match="resume_from_checkpoint"):
        train(ToyRecipe(), make_config(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-000009")))


def test_latest_without_checkpoint_starts_fresh(tmp_path):
    recipe = ToyRecipe()
    metrics = train(recipe, make_config(tmp_path, max_steps=2, resume_from_checkpoint="latest"))
    assert recipe.seen[0][0] == 0 and metrics["global_step"] == 2


def test_ema_weights_are_exported(tmp_path):
    # With diffusers' EMAModel the decay of update n is min(decay, (1 + (n-1)) / (10 + (n-1))), 0 for n = 1:
    # after 2 steps ema = d * raw_1 + (1 - d) * raw_2 with d = 2 / 11.
    train(ToyRecipe(), make_config(tmp_path, max_steps=2, checkpointing_steps=1, ema_decay=0.9))
    raw_1 = load_file(tmp_path / "checkpoint-000001" / "model.safetensors")
    raw_2 = load_file(tmp_path / "checkpoint-000002" / "model.safetensors")
    exported = load_file(tmp_path / "final" / "toy.safetensors")
    d = 2 / 11
    for name, value in exported.items():
        assert not torch.equal(value, raw_2[name])
        torch.testing.assert_close(value, d * raw_1[name] + (1 - d) * raw_2[name])
    # The raw weights stay in the checkpoint, the EMA next to them.
    ema_state = load_file(tmp_path / "checkpoint-000002" / "ema.safetensors")
    shadow_params = [ema_state[f"shadow_params.{i}"] for i in range(len(ema_state))]
    names = [name for name, _ in ToyRecipe().build_model().named_parameters()]  # the order EMAModel keeps
    for shadow, name in zip(shadow_params, names, strict=True):
        torch.testing.assert_close(shadow, exported[name])


def test_samples_logs_and_eval(tmp_path):
    class EvalToy(ToyRecipe):
        def build_eval_dataset(self):
            return self.build_train_dataset()

        def evaluate(self, model, step):
            return {"step": step}

    metrics = train(
        EvalToy(), make_config(tmp_path, max_steps=4, sample_steps=2, eval_steps=3, report_to="tensorboard")
    )
    assert sorted(os.listdir(tmp_path / "samples")) == ["step_000002.png", "step_000004.png"]
    from PIL import Image

    assert Image.open(tmp_path / "samples" / "step_000002.png").size == (8, 8)  # 3 tiles of 4x4 -> 2x2 grid
    events = [f for _, _, files in os.walk(tmp_path / "logs") for f in files if f.startswith("events.out")]
    assert events
    assert metrics["eval/step"] == 4.0 and metrics["eval/loss"] > 0
    assert os.path.exists(tmp_path / "training_config.json")
    history = read_eval_history(str(tmp_path))  # every evaluation, without a tracker
    assert [row["step"] for row in history] == [3, 4] and [row["eval/step"] for row in history] == [3.0, 4.0]
    assert history[-1]["eval/loss"] == metrics["eval/loss"]


def test_eval_history_keeps_the_last_row_of_each_step_and_skips_a_torn_line(tmp_path):
    append_eval_history(str(tmp_path), 4, {"eval/loss": 2.0})
    append_eval_history(str(tmp_path), 2, {"eval/loss": 3.0})
    append_eval_history(str(tmp_path), 4, {"eval/loss": 1.0})  # a resumed run evaluated step 4 again
    with open(tmp_path / "eval_history.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 6, "eval/lo')  # killed while writing
    assert read_eval_history(str(tmp_path)) == [{"step": 2, "eval/loss": 3.0}, {"step": 4, "eval/loss": 1.0}]
    append_eval_history(str(tmp_path), 6, {"eval/loss": 0.5})  # the resumed run's row starts a line of its own
    assert read_eval_history(str(tmp_path))[-1] == {"step": 6, "eval/loss": 0.5}
    assert read_eval_history(str(tmp_path / "absent")) == []


def test_bf16_mixed_precision(tmp_path):
    recipe = ToyRecipe()
    metrics = train(recipe, make_config(tmp_path, max_steps=3, mixed_precision="bf16"))
    assert metrics["global_step"] == 3 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    exported = load_file(tmp_path / "final" / "toy.safetensors")
    assert all(t.dtype == torch.float32 for t in exported.values())  # master weights stay fp32


def test_gradient_checkpointing(tmp_path):
    class CheckpointedToy(ToyRecipe):
        def build_model(self):
            model = super().build_model()
            model.gradient_checkpointing_enable = lambda: setattr(model, "checkpointing_on", True)
            self.model = model
            return model

    recipe = CheckpointedToy()
    train(recipe, make_config(tmp_path, max_steps=1, gradient_checkpointing=True))
    assert recipe.model.checkpointing_on
    reset_accelerate_state()
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        train(ToyRecipe(), make_config(tmp_path / "plain", max_steps=1, gradient_checkpointing=True))


def test_frozen_parameters_do_not_move(tmp_path):
    class FrozenFirstLayer(ToyRecipe):
        def parameters(self, model):
            return [{"params": model[3].parameters(), "weight_decay": 0.0}]

    recipe = FrozenFirstLayer()
    train(recipe, make_config(tmp_path, max_steps=2, checkpointing_steps=1))
    first = load_file(tmp_path / "checkpoint-000001" / "model.safetensors")
    second = load_file(tmp_path / "checkpoint-000002" / "model.safetensors")
    assert torch.equal(first["0.weight"], second["0.weight"])
    assert not torch.equal(first["3.weight"], second["3.weight"])
