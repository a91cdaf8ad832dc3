"""Atomic checkpoints that run no code of theirs when read, and the loop state that makes a resume exact.

A checkpoint `checkpoint-XXXXXX/` holds:

- `model.safetensors`, `optimizer.bin`, `scheduler.bin`: `accelerator.save_state`'s files. The two `.bin` files
  are tensors and plain values pickled by `torch.save`; they are only ever read back with `weights_only=True`
  (torch's restricted unpickler, which builds tensors and containers and runs no code of the file).
- `rng_state_<process>.safetensors`: every RNG of one process (python, numpy, torch CPU/CUDA, the recipe's
  generator); accelerate's own `random_states_<process>.pkl` is removed.
- `ema.safetensors` (with EMA): the EMA's shadow weights, its counters in the file's metadata.
- `hf_t2i_checkpoint.json`, written last: format, step, epoch, data position, recipe config and the size of every
  file above. A folder without it is not a checkpoint; a file of another size (a truncated write) makes the
  checkpoint corrupt, and `resume_from_checkpoint="latest"` then falls back to the previous complete one.

It is written as `checkpoint-XXXXXX.tmp` and renamed to `checkpoint-XXXXXX` only when every process has finished
writing, so a crash (even `kill -9`) mid-save leaves a `.tmp` folder, which resume ignores.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..modeling_utils import give_new_file_modes


CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST_NAME = "hf_t2i_checkpoint.json"
CHECKPOINT_FORMAT = "hf_t2i-training-checkpoint"
CHECKPOINT_VERSION = 1
EMA_NAME = "ema.safetensors"
MODEL_NAME = "model.safetensors"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
# Files that would be unpickled: only those the manifest lists are ever read (and then with weights_only=True).
_PICKLE_SUFFIXES = (".pkl", ".bin", ".pt", ".pth", ".pickle")


class CheckpointError(ValueError):
    """A folder that is not a complete hf_t2i training checkpoint, or one that does not fit the run resuming it."""


@dataclass
class TrainState:
    """Where the loop stands: optimizer steps done, current epoch, micro-batches of that epoch consumed.

    Stored in the checkpoint's `hf_t2i_checkpoint.json`.
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


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint taken after `step` optimizer steps (zero-padded so names sort)."""
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def rng_state_name(process_index: int) -> str:
    return f"rng_state_{process_index}.safetensors"


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Checkpoint folders in `output_dir` as `(step, path)`, oldest first (`.tmp` folders excluded; use
    `check_checkpoint` to know whether one is complete)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for entry in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(entry)
        path = os.path.join(output_dir, entry)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


# ------------------------------------------------------------------------------------------------- validation
def read_manifest(path: str) -> dict:
    """The checkpoint's manifest, after checking that every file it lists is there with its recorded size and that
    no pickle it does not list was added. Raises `CheckpointError` naming the folder and what is wrong."""
    manifest_path = os.path.join(path, MANIFEST_NAME)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is not a folder.")
    if not os.path.isfile(manifest_path):
        legacy = os.path.isfile(os.path.join(path, "custom_checkpoint_0.pkl"))
        hint = (
            " It was written by an older hf_t2i (accelerate's custom_checkpoint_*.pkl); convert it once with "
            "`hf_t2i.training.checkpointing.upgrade_legacy_checkpoint(path)`."
            if legacy
            else " Pass a `checkpoint-XXXXXX` folder written by `hf-t2i train`, or 'latest'."
        )
        raise CheckpointError(f"{path} is not an hf_t2i training checkpoint: it has no {MANIFEST_NAME}.{hint}")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("format") != CHECKPOINT_FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError(f"format is {manifest.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        if manifest.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"version {manifest.get('version')!r}, this hf_t2i reads version {CHECKPOINT_VERSION}")
        TrainState().load_state_dict(manifest["train_state"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{manifest_path} is corrupt or not an hf_t2i checkpoint manifest: {error}") from error
    files = manifest["files"]
    for name, size in files.items():
        file = os.path.join(path, name)
        if os.path.basename(name) != name or not os.path.isfile(file):
            raise CheckpointError(f"{path} is incomplete: {name} (listed in {MANIFEST_NAME}) is missing.")
        if os.path.getsize(file) != size:
            raise CheckpointError(
                f"{path} is corrupt: {name} has {os.path.getsize(file)} bytes, {size} were written (a truncated copy?)."
            )
        if name.endswith(".safetensors"):
            try:
                with safe_open(file, framework="pt") as handle:
                    handle.keys()
            except Exception as error:  # noqa: BLE001 - any parse failure means a corrupt file
                raise CheckpointError(
                    f"{path} is corrupt: {name} is not a readable safetensors file ({error})."
                ) from None
    unlisted = sorted(n for n in os.listdir(path) if n.endswith(_PICKLE_SUFFIXES) and n not in files)
    if unlisted:
        raise CheckpointError(
            f"{path} holds pickle file(s) {unlisted} that hf_t2i did not write ({MANIFEST_NAME} does not list them); "
            "they are never loaded. Remove them, or resume from a checkpoint you trust."
        )
    return manifest


def check_checkpoint(path: str) -> bool:
    """True when `path` is a complete hf_t2i training checkpoint (see `read_manifest` for the reason when not)."""
    try:
        read_manifest(path)
    except CheckpointError:
        return False
    return True


def resolve_resume_path(output_dir: str, resume_from_checkpoint: str | None) -> str | None:
    """Checkpoint folder to resume from, or None for a fresh start.

    "latest" picks the newest complete checkpoint, warning about (and skipping) newer corrupt ones, and falls back
    to a fresh start when `output_dir` has no checkpoint folder at all, so the same command both starts a run and
    continues it after a crash. An explicit path must be a complete checkpoint; anything else raises
    `CheckpointError` (a `ValueError`) naming `resume_from_checkpoint`.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        problems = []
        for _, path in reversed(checkpoints):
            try:
                read_manifest(path)
            except CheckpointError as error:
                problems.append((path, str(error)))
                continue
            if problems:
                skipped = "; ".join(f"{p} ({why})" for p, why in problems)
                warnings.warn(f"Skipping newer checkpoint(s) {skipped}: resuming from {path} instead.", stacklevel=2)
            return path
        if checkpoints:
            raise CheckpointError(
                f"TrainingConfig.resume_from_checkpoint='latest': no complete checkpoint in {output_dir}: "
                + "; ".join(why for _, why in problems)
                + ". Remove the corrupt folders to start afresh."
            )
        return None
    path = os.fspath(resume_from_checkpoint)
    if not os.path.isdir(path) and os.path.isdir(os.path.join(output_dir, path)):
        path = os.path.join(output_dir, path)
    if not os.path.isdir(path) or path.rstrip("/").endswith(".tmp"):
        raise CheckpointError(
            f"TrainingConfig.resume_from_checkpoint={resume_from_checkpoint!r} is not a complete checkpoint folder; "
            f"pass 'latest' or one of {[p for _, p in list_checkpoints(output_dir)]}."
        )
    try:
        read_manifest(path)
    except CheckpointError as error:
        raise CheckpointError(f"TrainingConfig.resume_from_checkpoint={resume_from_checkpoint!r}: {error}") from None
    return path


def check_model_fits(path: str, model: torch.nn.Module, manifest: dict, recipe_config: dict) -> None:
    """Raise `CheckpointError` when the checkpoint's model.safetensors does not have `model`'s tensors and shapes,
    naming the checkpoint, the first differences and the recipe fields that changed since it was written."""
    from safetensors.torch import _find_shared_tensors

    state_dict = model.state_dict()
    expected = {name: tuple(t.shape) for name, t in state_dict.items()}
    with safe_open(os.path.join(path, MODEL_NAME), framework="pt") as handle:
        stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    # safetensors stores one name of tied (shared) tensors, like accelerate's save does; the others are not missing
    tied = {name: group for group in _find_shared_tensors(state_dict) if len(group) > 1 for name in group}
    missing = [k for k in set(expected) - set(stored) if not (tied.get(k, set()) & set(stored))]
    problems = [f"missing {k}" for k in sorted(missing)]
    problems += [f"unexpected {k}" for k in sorted(set(stored) - set(expected))]
    problems += [
        f"{k}: {list(stored[k])} in the checkpoint, {list(expected[k])} in this run"
        for k in sorted(set(stored) & set(expected))
        if stored[k] != expected[k]
    ]
    if not problems:
        return
    old = manifest.get("recipe_config") or {}
    changed = sorted(k for k in set(old) | set(recipe_config) if old.get(k) != recipe_config.get(k))
    changes = ", ".join(f"{k}: {old.get(k)!r} -> {recipe_config.get(k)!r}" for k in changed) or "none"
    shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} differences)" if len(problems) > 5 else "")
    raise CheckpointError(
        f"Cannot resume from {path}: it was written for a different model ({shown}). Recipe fields changed since: "
        f"{changes}. Resume with the flags of {manifest.get('recipe') or 'the run'} that wrote it, or use a new "
        "output_dir."
    )


# --------------------------------------------------------------------------------------------- RNG and EMA
def save_rng_state(path: str, process_index: int, generator: torch.Generator | torch.Tensor | None) -> None:
    """Every RNG of this process as `rng_state_<process_index>.safetensors` (no pickle); `generator` is the
    recipe's generator (or its `get_state()`)."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {
        "python": torch.tensor(mt, dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "torch": torch.get_rng_state(),
    }
    if generator is not None:
        tensors["generator"] = generator if isinstance(generator, torch.Tensor) else generator.get_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    metadata = {
        "python": json.dumps([version, gauss]),
        "numpy": json.dumps([np_name, int(np_pos), int(np_has_gauss), float(np_gauss)]),
    }
    save_file(tensors, os.path.join(path, rng_state_name(process_index)), metadata=metadata)


def load_rng_state(path: str, process_index: int, generator: torch.Generator | None) -> bool:
    """Restore what `save_rng_state` wrote; False (nothing changed) when this process has no file there."""
    file = os.path.join(path, rng_state_name(process_index))
    if not os.path.isfile(file):
        return False
    tensors = load_file(file)
    with safe_open(file, framework="pt") as handle:
        metadata = handle.metadata()
    version, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(int(v) for v in tensors["python"].tolist()), gauss))
    np_name, np_pos, np_has_gauss, np_gauss = json.loads(metadata["numpy"])
    np.random.set_state((np_name, tensors["numpy"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(tensors["torch"])
    if generator is not None and "generator" in tensors:
        _restore_generator(generator, tensors["generator"], file)
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    return True


def _restore_generator(generator: torch.Generator, state: torch.Tensor, file: str) -> None:
    """Set the recipe's generator to the saved `state`. A generator's state only fits a generator on the same kind
    of device (a CPU one holds the Mersenne Twister's 5,056 bytes, a CUDA one a seed and an offset), so a checkpoint
    written on a CPU and resumed on a GPU, or back, cannot restore it: the generator is then seeded from the saved
    state instead, so the resumed run stays reproducible, though not bit-identical to an uninterrupted one."""
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
        return
    seed = int.from_bytes(hashlib.sha256(state.numpy().tobytes()).digest()[:8], "little") >> 1
    generator.manual_seed(seed)
    warnings.warn(
        f"{file} holds the recipe generator's state of another kind of device than this run's "
        f"({generator.device.type}): it was seeded from that state instead (seed {seed}). The run continues, but not "
        "bit-identically to an uninterrupted one.",
        stacklevel=3,
    )


_EMA_SCALARS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")


def save_ema(path: str, ema) -> None:
    """A diffusers `EMAModel` as `ema.safetensors`: shadow weights as tensors, counters as JSON metadata."""
    state = ema.state_dict()
    tensors = {f"shadow_params.{i}": p.detach().contiguous() for i, p in enumerate(state["shadow_params"])}
    scalars = {k: state[k] for k in _EMA_SCALARS if k in state}
    save_file(tensors, os.path.join(path, EMA_NAME), metadata={"ema": json.dumps(scalars)})


def load_ema(path: str, ema) -> None:
    """Restore what `save_ema` wrote into `ema` (same number and shapes of shadow weights, else `CheckpointError`)."""
    file = os.path.join(path, EMA_NAME)
    if not os.path.isfile(file):
        raise CheckpointError(
            f"Cannot resume from {path}: this run has EMA (ema_decay set) but the checkpoint has no {EMA_NAME}; "
            "resume with the ema_decay it was written with."
        )
    tensors = load_file(file)
    with safe_open(file, framework="pt") as handle:
        scalars = json.loads(handle.metadata()["ema"])
    shadow = [tensors[f"shadow_params.{i}"] for i in range(len(tensors))]
    current = [tuple(p.shape) for p in ema.shadow_params]
    if [tuple(p.shape) for p in shadow] != current:
        raise CheckpointError(
            f"Cannot resume from {path}: {EMA_NAME} holds {len(shadow)} EMA weights that do not match the "
            f"{len(current)} trained parameters of this run; resume with the recipe flags that wrote it."
        )
    ema.load_state_dict({**scalars, "shadow_params": shadow})


# ------------------------------------------------------------------------------------------------ save / prune
def save_checkpoint(
    accelerator,
    output_dir: str,
    step: int,
    total_limit: int | None,
    train_state: TrainState | None = None,
    generator: torch.Generator | None = None,
    ema=None,
    recipe: dict | None = None,
) -> str:
    """Write `checkpoint-<step>` atomically on all processes, then prune beyond `total_limit`. Returns its path.

    Every process must call this (each saves its own RNG state); the main process writes the model, optimizer,
    scheduler, EMA and manifest, renames and prunes. `recipe` (`{"recipe": name, **config}`) is recorded so that a
    resume with other model flags can say which changed.
    """
    final = os.path.join(output_dir, checkpoint_name(step))
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a stale half-written save of the same step
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    process_index = accelerator.process_index
    legacy_rng = os.path.join(tmp, f"random_states_{process_index}.pkl")
    if os.path.exists(legacy_rng):
        os.remove(legacy_rng)  # replaced by rng_state_<i>.safetensors
    save_rng_state(tmp, process_index, generator)
    if accelerator.is_main_process and ema is not None:
        save_ema(tmp, ema)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        give_new_file_modes(tmp)  # safetensors writes its files 0600: as readable as the manifest instead
        recipe = dict(recipe or {})
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "train_state": (train_state or TrainState(global_step=step)).state_dict(),
            "num_processes": accelerator.num_processes,
            "recipe": recipe.pop("recipe", None),
            "recipe_config": recipe,
            "files": {name: os.path.getsize(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))},
        }
        with open(os.path.join(tmp, MANIFEST_NAME), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: str, total_limit: int | None) -> list[str]:
    """Delete the oldest checkpoints so that at most `total_limit` remain; return the deleted paths."""
    if total_limit is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    doomed = [path for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


# ---------------------------------------------------------------------------------------------------- legacy
def upgrade_legacy_checkpoint(path: str) -> str:
    """Convert, in place, a checkpoint written by an older hf_t2i (accelerate's `custom_checkpoint_*.pkl` and
    `random_states_*.pkl`) to the current format. The old pickles are read with `torch.load(weights_only=True)`
    (a pickle that holds anything but tensors and plain values is refused, never run) and then deleted."""
    from accelerate.utils.other import load as restricted_load  # torch.load(weights_only=True) + numpy's types

    def read(name):
        try:
            return restricted_load(os.path.join(path, name), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - pickle.UnpicklingError and friends
            raise CheckpointError(
                f"{os.path.join(path, name)} is not a plain state pickle, refused: {error}"
            ) from None

    if os.path.isfile(os.path.join(path, MANIFEST_NAME)):
        return path
    if not (os.path.isfile(os.path.join(path, MODEL_NAME)) and os.path.isfile(os.path.join(path, "optimizer.bin"))):
        raise CheckpointError(f"{path} is not an hf_t2i training checkpoint (no {MODEL_NAME} / optimizer.bin).")
    train_state = TrainState()
    train_state.load_state_dict(read("custom_checkpoint_0.pkl"))
    generator_state = None
    if os.path.isfile(os.path.join(path, "custom_checkpoint_1.pkl")):
        generator_state = read("custom_checkpoint_1.pkl")["state"]
    if os.path.isfile(os.path.join(path, "custom_checkpoint_2.pkl")):
        state = read("custom_checkpoint_2.pkl")
        tensors = {f"shadow_params.{i}": p.contiguous() for i, p in enumerate(state["shadow_params"])}
        scalars = {k: state[k] for k in _EMA_SCALARS if k in state}
        save_file(tensors, os.path.join(path, EMA_NAME), metadata={"ema": json.dumps(scalars)})
    rng_files = sorted(n for n in os.listdir(path) if re.match(r"^random_states_\d+\.pkl$", n))
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        for name in rng_files:
            states = read(name)
            random.setstate(states["random_state"])
            np.random.set_state(states["numpy_random_seed"])
            torch.set_rng_state(states["torch_manual_seed"])
            save_rng_state(path, int(re.findall(r"\d+", name)[0]), generator_state)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
    for name in rng_files + [n for n in os.listdir(path) if n.startswith("custom_checkpoint_")]:
        os.remove(os.path.join(path, name))
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "train_state": train_state.state_dict(),
        "num_processes": max(1, len(rng_files)),
        "recipe": None,
        "recipe_config": {},
        "files": {name: os.path.getsize(os.path.join(path, name)) for name in sorted(os.listdir(path))},
    }
    with open(os.path.join(path, MANIFEST_NAME), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return path
