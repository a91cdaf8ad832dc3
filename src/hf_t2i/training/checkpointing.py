"""Atomic checkpoints and the loop state that makes a resume exact.

A checkpoint is an `accelerator.save_state` folder (model, optimizer, LR scheduler, per-process RNG states,
`TrainState`, the recipe's generator, EMA) written as `checkpoint-XXXXXX.tmp` and renamed to `checkpoint-XXXXXX`
only when every process has finished writing. A crash mid-save therefore leaves a `.tmp` folder, which resume
ignores.
"""

import os
import re
import shutil
from dataclasses import asdict, dataclass

import torch


CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


@dataclass
class TrainState:
    """Where the loop stands: optimizer steps done, current epoch, micro-batches of that epoch consumed.

    Registered with `accelerator.register_for_checkpointing`, so it is saved and restored with the rest.
    """

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])


class GeneratorState:
    """Checkpointable wrapper of a `torch.Generator`: the recipe's noise source. All training randomness is drawn from
    explicit generators, so saving this state is what lets a resumed run draw the same noise as an uninterrupted one."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["state"])


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint taken after `step` optimizer steps (zero-padded so names sort)."""
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in `output_dir` as `(step, path)`, oldest first (`.tmp` folders excluded)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for entry in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(entry)
        path = os.path.join(output_dir, entry)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume_path(output_dir: str, resume_from_checkpoint: str | None) -> str | None:
    """Checkpoint folder to resume from, or None for a fresh start.

    "latest" picks the newest complete checkpoint and falls back to a fresh start when there is none, so the
    same command both starts a run and continues it after a crash.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = os.fspath(resume_from_checkpoint)
    if not os.path.isdir(path) and os.path.isdir(os.path.join(output_dir, path)):
        path = os.path.join(output_dir, path)
    if not os.path.isdir(path) or path.endswith(".tmp"):
        raise ValueError(
            f"TrainingConfig.resume_from_checkpoint={resume_from_checkpoint!r} is not a complete checkpoint folder; "
            f"pass 'latest' or one of {[p for _, p in list_checkpoints(output_dir)]}."
        )
    return path


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit: int | None) -> str:
    """Write `checkpoint-<step>` atomically on all processes, then prune beyond `total_limit`. Returns its path.

    Every process must call this (each saves its own RNG state); the main process creates, renames and prunes.
    """
    final = os.path.join(output_dir, checkpoint_name(step))
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a stale half-written save of the same step
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: str, total_limit: int | None) -> list[str]:
    """Delete the oldest complete checkpoints so that at most `total_limit` remain; return the deleted paths."""
    if total_limit is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    doomed = [path for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed
