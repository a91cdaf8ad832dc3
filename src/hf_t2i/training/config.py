"""`TrainingConfig`: every knob of the shared training loop, validated in one place.

The loop itself lives in `trainer.py`; a model's own hyperparameters live in its recipe's config
(`recipe.py`). Both are plain dataclasses so that the CLI can generate one flag per field (`cli.py`).
"""

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal


LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
REPORT_TO = ("tensorboard", "wandb", "all", "none")


def _help(text: str, **kwargs) -> Any:
    """A dataclass field whose `metadata["help"]` becomes the CLI help of its flag."""
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainingConfig:
    """Hyperparameters of the shared Accelerate training loop (`hf_t2i.training.train`).

    Steps are optimizer steps (one step = `gradient_accumulation_steps` micro-batches on every process).
    `train_batch_size` is per process, so the global batch is
    `train_batch_size * gradient_accumulation_steps * num_processes`. Every `*_steps` period of 0 turns the
    feature off.
    """

    output_dir: str = _help("Folder for checkpoints, logs, samples and the final export (`<output_dir>/final`).")
    max_steps: int = _help("Number of optimizer steps to train for.", default=1000)
    train_batch_size: int = _help("Micro-batch size per process.", default=16)
    gradient_accumulation_steps: int = _help("Micro-batches accumulated per optimizer step.", default=1)
    learning_rate: float = _help("Peak learning rate of AdamW.", default=1e-4)
    weight_decay: float = _help("AdamW decoupled weight decay.", default=0.0)
    adam_beta1: float = _help("AdamW beta1.", default=0.9)
    adam_beta2: float = _help("AdamW beta2.", default=0.999)
    adam_epsilon: float = _help("AdamW epsilon.", default=1e-8)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = _help(
        "Learning-rate schedule over `max_steps` (transformers `get_scheduler`).", default="constant"
    )
    lr_warmup_steps: int = _help(
        "Linear warm-up steps (use 'constant_with_warmup' rather than 'constant').", default=0
    )
    min_lr_ratio: float = _help("Final LR of the 'cosine' schedule as a fraction of the peak LR.", default=0.0)
    max_grad_norm: float | None = _help("Clip the global gradient norm to this value; None disables.", default=1.0)
    mixed_precision: Literal["no", "fp16", "bf16"] = _help(
        "Autocast precision; fp16 needs a GPU, bf16 runs on CPU too.", default="no"
    )
    gradient_checkpointing: bool = _help("Call `model.gradient_checkpointing_enable()`.", default=False)
    ema_decay: float | None = _help(
        "Maximum EMA decay (diffusers `EMAModel`, which ramps up as (1+n)/(10+n)); None disables EMA.", default=None
    )
    ema_update_after_step: int = _help("Optimizer steps before the EMA starts averaging.", default=0)
    checkpointing_steps: int = _help("Save an exact-resume checkpoint every N steps (and at the end).", default=500)
    checkpoints_total_limit: int | None = _help(
        "Keep at most N checkpoints (oldest deleted); None keeps all.", default=None
    )
    resume_from_checkpoint: str | None = _help(
        "'latest' (newest complete checkpoint in output_dir, skipping corrupt ones with a warning; a fresh start if "
        "there is none) or a checkpoint path. A folder that is not an hf_t2i checkpoint is refused.",
        default=None,
    )
    sample_steps: int = _help("Save a sample grid every N steps (needs `recipe.sample_images`).", default=0)
    log_steps: int = _help("Log mean loss / LR to tensorboard every N steps.", default=10)
    eval_steps: int = _help("Run evaluation every N steps (and at the end).", default=0)
    seed: int = _help("Seed of model init, data order and per-process noise.", default=0)
    dataloader_num_workers: int = _help("DataLoader worker processes.", default=0)
    report_to: Literal["tensorboard", "wandb", "all", "none"] = _help(
        "Tracker of scalars and sample grids: 'tensorboard' (under output_dir/logs), 'wandb' (needs `pip install "
        "wandb` and a login), 'all' (every tracker Accelerate finds installed) or 'none'.",
        default="tensorboard",
    )
    ddp_find_unused_parameters: bool = _help(
        "Pass find_unused_parameters=True to DDP (models whose steps leave some parameters unused).", default=False
    )
    push_to_hub: bool = _help(
        "Upload the final export with its model card to the Hub repository `hub_model_id` at the end (the repository "
        "is created at the start, so a missing login fails before training). Log in first (`hf auth login` or "
        "HF_TOKEN).",
        default=False,
    )
    hub_model_id: str | None = _help(
        "Hub repository for --push-to-hub ('user/name' or 'name'); default: the name of output_dir.", default=None
    )

    def __post_init__(self):
        self.output_dir = os.fspath(self.output_dir) if isinstance(self.output_dir, os.PathLike) else self.output_dir
        checks = (
            self._check_counts,
            self._check_optimizer,
            self._check_choices,
            self._check_ema_and_ckpt,
            self._check_hub,
        )
        for check in checks:
            check()

    # ----------------------------------------------------------------------------------------- validation
    def _fail(self, name: str, fix: str) -> None:
        raise ValueError(f"TrainingConfig.{name}={getattr(self, name)!r} is invalid: {fix}.")

    def _check_int(self, name: str, minimum: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self._fail(name, f"pass an integer >= {minimum}")

    def _check_counts(self) -> None:
        if not isinstance(self.output_dir, str) or not self.output_dir:
            self._fail("output_dir", "pass a non-empty folder path")
        for name in ("max_steps", "train_batch_size", "gradient_accumulation_steps", "log_steps"):
            self._check_int(name, 1)
        for name in ("lr_warmup_steps", "ema_update_after_step", "checkpointing_steps", "sample_steps"):
            self._check_int(name, 0)
        for name in ("eval_steps", "seed", "dataloader_num_workers"):
            self._check_int(name, 0)
        if self.checkpoints_total_limit is not None:
            self._check_int("checkpoints_total_limit", 1)

    def _check_optimizer(self) -> None:
        if not _is_real(self.learning_rate) or self.learning_rate <= 0:
            self._fail("learning_rate", "pass a positive float such as 1e-4")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            self._fail("weight_decay", "pass a float >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if not _is_real(value) or not 0 <= value < 1:
                self._fail(name, "pass a float in [0, 1)")
        if not _is_real(self.adam_epsilon) or self.adam_epsilon <= 0:
            self._fail("adam_epsilon", "pass a positive float such as 1e-8")
        if self.max_grad_norm is not None and (not _is_real(self.max_grad_norm) or self.max_grad_norm <= 0):
            self._fail("max_grad_norm", "pass a positive float, or None to disable clipping")

    def _check_choices(self) -> None:
        for name, choices in (
            ("lr_scheduler", LR_SCHEDULERS),
            ("mixed_precision", MIXED_PRECISIONS),
            ("report_to", REPORT_TO),
        ):
            if getattr(self, name) not in choices:
                self._fail(name, f"choose one of {list(choices)}")
        if not _is_real(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            self._fail("min_lr_ratio", "pass a float in [0, 1]")
        if self.min_lr_ratio and self.lr_scheduler != "cosine":
            self._fail("min_lr_ratio", "it only applies to lr_scheduler='cosine'; set it to 0 or use 'cosine'")
        if self.lr_scheduler == "constant" and self.lr_warmup_steps:
            self._fail("lr_warmup_steps", "'constant' has no warm-up; use lr_scheduler='constant_with_warmup'")
        for name in ("gradient_checkpointing", "ddp_find_unused_parameters", "push_to_hub"):
            if not isinstance(getattr(self, name), bool):
                self._fail(name, "pass True or False")

    def _check_hub(self) -> None:
        if self.hub_model_id is not None and not self.push_to_hub:
            self._fail("hub_model_id", "it only applies with push_to_hub=True; add --push-to-hub or drop it")
        if self.push_to_hub:
            from ..hub import check_repo_id

            check_repo_id(self.hub_repo_id(), "TrainingConfig.hub_model_id")

    def hub_repo_id(self) -> str:
        """The Hub repository of `push_to_hub`: `hub_model_id`, or the name of `output_dir`."""
        return self.hub_model_id or os.path.basename(os.path.abspath(self.output_dir))

    def _check_ema_and_ckpt(self) -> None:
        if self.ema_decay is not None and (not _is_real(self.ema_decay) or not 0 < self.ema_decay < 1):
            self._fail("ema_decay", "pass a float in (0, 1) such as 0.999, or None to disable EMA")
        resume = self.resume_from_checkpoint
        if resume is not None and (not isinstance(resume, (str, os.PathLike)) or not os.fspath(resume)):
            self._fail("resume_from_checkpoint", "pass None, 'latest' or the path of a checkpoint folder")

    # ---------------------------------------------------------------------------------------- conversion
    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        """Build from a dict; unknown keys raise (a typo must not be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown TrainingConfig field(s) {unknown}; valid fields are {sorted(known)}.")
        return cls(**values)

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write the config as indented JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "TrainingConfig":
        """Read a config written by `to_json_file` (or by hand)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _is_real(value: Any) -> bool:
    """True for finite ints/floats (not bools): the type every float field accepts."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
