"""`train(recipe, config)`: the one Accelerate training loop of hf_t2i, shared by every model so that precision,
accumulation, EMA, checkpoints and resume are written (and tested) once.

What the loop owns: AdamW + LR schedule, mixed precision, gradient accumulation and clipping, gradient
checkpointing, EMA (diffusers `EMAModel`), tensorboard scalars, every evaluation in `eval_history.jsonl`, sample
grids, atomic checkpoints with exact resume and an atomic final export. Multi-process comes from the launcher
(`accelerate launch`, `torchrun`), never from here.

Exact resume rests on three things: (1) everything stateful is in the checkpoint (model, optimizer, scheduler,
EMA, per-process global RNG states, the recipe's `generator`, `TrainState`; `checkpointing.py` lists the files and
why none is ever unpickled without torch's restricted `weights_only` loader); (2) the data order is a function of
`(seed, epoch)` only and the partly consumed epoch is skipped with `accelerator.skip_first_batches` (a streamed
dataset, `StreamingDataset`, skips the rows it already yielded, still undecoded); (3) sampling and evaluation run
under a forked RNG, so how often they run never changes the training trajectory.
"""

import contextlib
import json
import math
import os
import shutil

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    ProjectConfiguration,
    send_to_device,
    set_seed,
)
from tqdm.auto import tqdm

from ..modeling_utils import give_new_file_modes
from .checkpointing import (
    CheckpointError,
    TrainState,
    check_model_fits,
    load_ema,
    load_rng_state,
    read_manifest,
    resolve_resume_path,
    save_checkpoint,
)
from .config import TrainingConfig
from .data_utils import build_dataloader
from .recipe import Recipe
from .streaming import StreamingDataset


logger = get_logger(__name__)


EVAL_HISTORY = "eval_history.jsonl"


def append_eval_history(output_dir: str, step: int, values: dict[str, float]) -> None:
    """Add one evaluation (`{"step": step, **values}`) as a line of `<output_dir>/eval_history.jsonl`, so that a
    run's curve survives without a tracker. A resumed run may evaluate a step again; `read_eval_history` keeps the
    last row of each step."""
    os.makedirs(output_dir, exist_ok=True)
    line = json.dumps({"step": step, **values}, sort_keys=True).encode() + b"\n"
    with open(os.path.join(output_dir, EVAL_HISTORY), "a+b") as f:  # appends go to the end whatever the seek
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a run killed while writing its last line: start a new one
                line = b"\n" + line
        f.write(line)


def read_eval_history(output_dir: str) -> list[dict]:
    """The evaluations `append_eval_history` recorded in `output_dir`, one per step (the last), by step; [] if none.
    A torn last line (a run killed while writing it) is skipped."""
    path = os.path.join(output_dir, EVAL_HISTORY)
    if not os.path.isfile(path):
        return []
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[int(row["step"])] = row
    return [rows[step] for step in sorted(rows)]


def make_image_grid(images: list, cols: int | None = None):
    """Paste PIL images (same size) into a near-square grid, padding with black tiles (diffusers' helper)."""
    from diffusers.utils import make_image_grid as diffusers_make_image_grid
    from PIL import Image

    if not images or not all(isinstance(image, Image.Image) for image in images):
        raise TypeError("make_image_grid expects a non-empty list of PIL images (what `sample_images` returns).")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    images = [image.convert("RGB") for image in images]
    images += [Image.new("RGB", images[0].size)] * (rows * cols - len(images))
    return diffusers_make_image_grid(images, rows=rows, cols=cols)


def train(recipe: Recipe, training_config: TrainingConfig) -> dict[str, float]:
    """Train `recipe`'s model as `training_config` says; export it to `<output_dir>/final`.

    Every process of a launch calls this. Returns the final metrics (`global_step`, `epoch`, `train_loss` over
    the last logging window and averaged over processes, `lr`, and the last `eval/*` values).
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"train expects a Recipe instance as `recipe`, got {type(recipe).__name__}.")
    if not isinstance(training_config, TrainingConfig):
        raise TypeError(f"train expects a TrainingConfig as `training_config`, got {type(training_config).__name__}.")
    run = _TrainingRun(recipe, training_config)
    try:
        return run.run()
    finally:
        run.accelerator.end_training()


def _build_accelerator(config: TrainingConfig) -> Accelerator:
    """The Accelerator of one run. The scheduler is stepped by hand once per optimizer step, so the LR schedule
    is in optimizer steps whatever the number of processes."""
    handlers = (
        [DistributedDataParallelKwargs(find_unused_parameters=True)] if config.ddp_find_unused_parameters else []
    )
    _check_tracker_installed(config.report_to)
    _skip_fsdp_module_sync_on_cpu()
    accelerator = Accelerator(
        cpu=_distributed_cpu_only_launch(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, "logs")
        ),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=handlers,
    )
    launched = _launched_world_size()
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(
            f"The launcher started {launched} processes but Accelerate sees {accelerator.num_processes}: each would "
            "train alone into the same output_dir. On a machine without CUDA set ACCELERATE_USE_CPU=1."
        )
    if _fsdp_requested() and accelerator.distributed_type != DistributedType.FSDP:
        logger.warning(
            "FSDP was requested (accelerate launch --use_fsdp / a distributed_type: FSDP config), but Accelerate "
            "only shards on accelerators (CUDA, XPU, NPU, ...): these %d processes run %s data parallel, every "
            "parameter replicated. The same command shards the model on GPUs.",
            accelerator.num_processes,
            accelerator.distributed_type.value,
        )
    return accelerator


def _check_tracker_installed(report_to: str) -> None:
    """Fail before any work when the chosen tracker's package is missing (Accelerate would only warn and log
    nothing). `all` takes every tracker that is installed."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    if report_to in available and not available[report_to]():
        package = {"tensorboard": "tensorboard", "wandb": "wandb"}[report_to]
        raise ValueError(
            f"TrainingConfig.report_to={report_to!r} needs the {package!r} package: `pip install {package}` (and, "
            "for wandb, `wandb login`), or pass --report-to tensorboard / none."
        )


def _fsdp_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _skip_fsdp_module_sync_on_cpu() -> None:
    """Turn off FSDP's broadcast of the initial weights from rank 0 on a machine without an accelerator.

    `accelerate launch --use_fsdp` defaults to `--fsdp_sync_module_states true` (and to
    `--fsdp_cpu_ram_efficient_loading true`, which forces it), and Accelerate's FSDP plugin refuses that on a CPU
    ("sync_module_states=True is not supported on cpu") before any training starts. hf_t2i does not need the
    broadcast: `train()` seeds every process identically before `build_model`, and every process loads the same
    pretrained parts itself, so all processes start from the same weights anyway. (On a CPU Accelerate does not
    shard at all; see the warning in `_build_accelerator`.)
    """
    if not _fsdp_requested() or torch.accelerator.is_available():
        return
    for name in ("FSDP_SYNC_MODULE_STATES", "FSDP_CPU_RAM_EFFICIENT_LOADING"):
        if os.environ.get(name, "false").lower() in ("true", "1"):
            os.environ[name] = "false"


def _launched_world_size() -> int:
    """WORLD_SIZE set by `torchrun` / `accelerate launch` (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _distributed_cpu_only_launch() -> bool:
    """True for a multi-process launch on a machine without an accelerator.

    Accelerate only selects its gloo `MULTI_CPU` mode when told to use the CPU (`ACCELERATE_USE_CPU=1`, which
    `accelerate launch --cpu` sets); under `torchrun` or `accelerate launch --multi_gpu` on a CPU-only machine it
    would otherwise fall back to N independent single-process runs.
    """
    return _launched_world_size() > 1 and not torch.accelerator.is_available()


def _enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """transformers' `activation_checkpointing_enable` (`gradient_checkpointing_enable` before 5.x) or diffusers'
    `enable_gradient_checkpointing`, whichever the model has."""
    for method in (
        "activation_checkpointing_enable",
        "gradient_checkpointing_enable",
        "enable_gradient_checkpointing",
    ):
        if hasattr(model, method):
            getattr(model, method)()
            return
    raise ValueError(
        f"TrainingConfig.gradient_checkpointing=True but {type(model).__name__} has no "
        "`gradient_checkpointing_enable()`; set gradient_checkpointing=False."
    )


def _parameter_groups(recipe: Recipe, model: torch.nn.Module, weight_decay: float):
    """`recipe.parameters(model)` as AdamW groups plus the flat list of trained parameters (for EMA, clipping)."""
    items = list(recipe.parameters(model))
    groups = items if items and isinstance(items[0], dict) else [{"params": items}]
    for group in groups:
        group["params"] = list(group["params"])
        group.setdefault("weight_decay", weight_decay)
    params = [p for group in groups for p in group["params"]]
    if not params:
        raise ValueError(f"{type(recipe).__name__}.parameters(model) returned no parameters to train.")
    return groups, params


def _build_optimizer(groups: list[dict], config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over the recipe's parameter groups (a group may set its own `weight_decay`)."""
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )


def _build_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig):
    """transformers' `get_scheduler`; cosine with `min_lr_ratio > 0` is its 'cosine_with_min_lr'."""
    from transformers import get_scheduler

    name, extra = config.lr_scheduler, None
    if name == "cosine" and config.min_lr_ratio > 0:
        name, extra = "cosine_with_min_lr", {"min_lr_rate": config.min_lr_ratio}
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.max_steps,
        scheduler_specific_kwargs=extra,
    )


def _is_due(step: int, every: int, last: int) -> bool:
    """True when a periodic action (every `every` steps, 0 = never) is due at `step`; also at the last step."""
    return every > 0 and (step % every == 0 or step == last)


def _batch_size(batch) -> int:
    """Rows in a collated batch: the leading size of its first tensor (1 when it has none)."""
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    sizes = [v.shape[0] for v in values if isinstance(v, torch.Tensor) and v.ndim > 0]
    return sizes[0] if sizes else 1


def _hparams(config: TrainingConfig, recipe: Recipe) -> dict:
    """Scalar-only view of both configs for the tracker's hyperparameter table."""
    values = {**config.to_dict(), **{f"recipe.{k}": v for k, v in recipe.config_dict().items()}}
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}


def _empty_window() -> dict:
    """The logging window: loss sum (a device tensor once a step is recorded), micro-step count, and per recipe
    metric a (sum, count) pair."""
    return {"loss_sum": 0.0, "count": 0, "metrics": {}}


def _device_scalar(value: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float32 0-d tensor on `device` (no copy for one that is already there)."""
    return torch.as_tensor(value, dtype=torch.float32, device=device).reshape(())


class _TrainingRun:
    """State and steps of one call to `train()`; split into short methods, not meant for direct use."""

    def __init__(self, recipe: Recipe, config: TrainingConfig):
        self.recipe, self.config = recipe, config
        self.accelerator = _build_accelerator(config)
        recipe.accelerator = self.accelerator
        self.state = TrainState()
        self.window = _empty_window()
        self.results: dict[str, float] = {}
        self.grad_norm = None
        self._setup()

    # ------------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        config, recipe, accelerator = self.config, self.recipe, self.accelerator
        self.hub_repo_id = None
        if config.push_to_hub and accelerator.is_main_process:
            # created now, as diffusers' training scripts do, so that a missing login fails before hours of training
            from ..hub import create_hub_repo

            self.hub_repo_id = create_hub_repo(config.hub_repo_id())
        set_seed(config.seed)  # same initial weights on every process
        model = recipe.build_model()
        if config.gradient_checkpointing:
            _enable_gradient_checkpointing(model)
        groups, self.params = _parameter_groups(recipe, model, config.weight_decay)
        optimizer = _build_optimizer(groups, config)
        scheduler = _build_lr_scheduler(optimizer, config)
        train_loader, eval_loader = self._build_dataloaders()
        self.streaming = isinstance(train_loader.dataset, StreamingDataset)
        if self.streaming:  # shuffled and split across processes by the dataset itself, not by Accelerate
            self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(model, optimizer, scheduler)
            self.train_loader, self.sampler = train_loader, None
        else:
            self.model, self.optimizer, self.train_loader, self.lr_scheduler = accelerator.prepare(
                model, optimizer, train_loader, scheduler
            )
            self.sampler = train_loader.sampler
        self.eval_loader = accelerator.prepare(eval_loader) if eval_loader is not None else None
        self.ema = self._build_ema()
        self._register_checkpoint_state()
        set_seed(config.seed, device_specific=True)  # different noise per process; overwritten by a resume
        self._maybe_resume()
        self._init_output()

    def _register_checkpoint_state(self) -> None:
        """Give the recipe its seeded per-process generator. It is checkpointed with the loop state and the EMA by
        `save_checkpoint` as safetensors / JSON, never through accelerate's `register_for_checkpointing` (whose
        `custom_checkpoint_*.pkl` files are loaded with `torch.load(weights_only=False)`, i.e. could run code)."""
        accelerator, seed = self.accelerator, self.config.seed
        self.recipe.generator = torch.Generator(accelerator.device).manual_seed(seed + accelerator.process_index)

    def _build_dataloaders(self):
        config, recipe = self.config, self.recipe
        with self.accelerator.main_process_first():  # lets the main process fill dataset caches first
            train_dataset = recipe.build_train_dataset()
            eval_dataset = recipe.build_eval_dataset()
        if isinstance(train_dataset, StreamingDataset):
            self._log_streaming(train_dataset)
            train_dataset.set_process(self.accelerator.process_index, self.accelerator.num_processes)
        kwargs = {"collate_fn": recipe.collate_fn, "seed": config.seed, "num_workers": config.dataloader_num_workers}
        train_loader = build_dataloader(train_dataset, config.train_batch_size, **kwargs)
        eval_loader = None
        if eval_dataset is not None:
            eval_loader = build_dataloader(eval_dataset, config.train_batch_size, shuffle=False, **kwargs)
        return train_loader, eval_loader

    def _log_streaming(self, dataset: StreamingDataset) -> None:
        processes, shards = self.accelerator.num_processes, dataset.source.num_shards
        logger.info("Training on a stream: %r, %d process(es).", dataset, processes)
        if processes > 1 and shards % processes:
            logger.warning(
                "The stream has %d shard(s), not a multiple of the %d processes: every process reads all of them and "
                "keeps one row in %d. Write the data as a multiple of %d shards to read each file once.",
                shards,
                processes,
                processes,
                processes,
            )

    def _build_ema(self):
        if self.config.ema_decay is None:
            return None
        from diffusers.training_utils import EMAModel

        return EMAModel(self.params, decay=self.config.ema_decay, update_after_step=self.config.ema_update_after_step)

    def _maybe_resume(self) -> None:
        path = resolve_resume_path(self.config.output_dir, self.config.resume_from_checkpoint)
        if path is None:
            if self.config.resume_from_checkpoint is not None:
                logger.info("No complete checkpoint in %s: starting a new run.", self.config.output_dir)
            return
        logger.info("Resuming from %s", path)
        manifest = read_manifest(path)
        checkpoint_step = int(manifest["train_state"]["global_step"])
        if checkpoint_step > self.config.max_steps:
            raise CheckpointError(
                f"TrainingConfig.max_steps={self.config.max_steps} is below the step of the checkpoint resumed from "
                f"({path}, step {checkpoint_step}): the run would export that later model as final. Pass "
                f"max_steps >= {checkpoint_step}, or resume from an earlier checkpoint."
            )
        recipe_config = {k: v for k, v in self._recipe_record().items() if k != "recipe"}
        check_model_fits(
            path,
            self.accelerator.unwrap_model(self.model),
            manifest,
            json.loads(json.dumps(recipe_config, default=str)),
        )
        try:  # the optimizer and scheduler `.bin` pickles are read by torch's restricted loader only
            self.accelerator.load_state(path, load_kwargs={"weights_only": True})
        except Exception as error:  # noqa: BLE001 - re-raised with the checkpoint named
            raise CheckpointError(
                f"Cannot resume from {path}: its state does not fit this run or is unreadable "
                f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}). "
                "Resume with the recipe and training flags that wrote it, or use a new output_dir."
            ) from error
        self.state.load_state_dict(manifest["train_state"])
        if not load_rng_state(path, self.accelerator.process_index, self.recipe.generator):
            logger.warning(
                "%s has no RNG state of process %d (written by %s processes, resumed by %d): the run continues, "
                "but not bit-identically to an uninterrupted one.",
                path,
                self.accelerator.process_index,
                manifest.get("num_processes"),
                self.accelerator.num_processes,
                main_process_only=False,
            )
        if self.ema is not None:
            load_ema(path, self.ema)
            self.ema.to(self.accelerator.device)
        if self.streaming:
            if manifest.get("num_processes") != self.accelerator.num_processes:
                logger.warning(
                    "%s was written by %s processes and is resumed by %d: the stream is split differently, so epoch "
                    "%d restarts from its first rows instead of continuing where it stopped.",
                    path,
                    manifest.get("num_processes"),
                    self.accelerator.num_processes,
                    self.state.epoch,
                )
                self.state.batches_in_epoch = 0
            return
        if self.state.batches_in_epoch >= len(self.train_loader):  # saved at the very end of an epoch
            self.state.epoch, self.state.batches_in_epoch = self.state.epoch + 1, 0

    def _init_output(self) -> None:
        config, accelerator = self.config, self.accelerator
        if accelerator.is_main_process:
            os.makedirs(config.output_dir, exist_ok=True)
            config.to_json_file(os.path.join(config.output_dir, "training_config.json"))
            recipe_config = self._recipe_record()
            with open(os.path.join(config.output_dir, "recipe_config.json"), "w", encoding="utf-8") as f:
                json.dump(recipe_config, f, indent=2, sort_keys=True, default=str)
        accelerator.init_trackers(self.recipe.name or "hf_t2i", config=_hparams(config, self.recipe))

    def _recipe_record(self) -> dict:
        """`{"recipe": name, **recipe config}`: written to recipe_config.json and into every checkpoint."""
        return {"recipe": self.recipe.name, **self.recipe.config_dict()}

    # ------------------------------------------------------------------------------------------------- loop
    def run(self) -> dict[str, float]:
        """Train until `max_steps`, then export. Returns the final metrics."""
        config = self.config
        self.progress = tqdm(
            total=config.max_steps,
            initial=self.state.global_step,
            disable=not self.accelerator.is_local_main_process,
            desc=f"train {self.recipe.name}".strip(),
        )
        self.model.train()
        while self.state.global_step < config.max_steps:
            for batch in self._epoch_batches():
                self.state.batches_in_epoch += 1
                self._micro_step(batch)
                if self.accelerator.sync_gradients:
                    self._after_optimizer_step()
                    if self.state.global_step >= config.max_steps:
                        break
            else:
                if self.state.batches_in_epoch == 0:  # only a stream can be empty (build_dataloader checks the rest)
                    raise ValueError(
                        f"The training stream gave process {self.accelerator.process_index} of "
                        f"{self.accelerator.num_processes} no rows: the dataset is empty, or smaller than the "
                        "held-out eval_size."
                    )
                self.state.epoch, self.state.batches_in_epoch = self.state.epoch + 1, 0
        self.progress.close()
        self._export()
        return {"global_step": self.state.global_step, "epoch": self.state.epoch, **self.results}

    def _epoch_batches(self):
        """The current epoch's loader: order from `(seed, epoch)`, already-consumed batches skipped."""
        epoch, skip = self.state.epoch, self.state.batches_in_epoch
        if self.streaming:
            return self._stream_batches(epoch, skip)
        loader = self.accelerator.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        self.sampler.set_epoch(epoch)
        self.train_loader.set_epoch(epoch)
        loader.set_epoch(epoch)
        if self.train_loader.generator is not None:  # worker seeds of this epoch
            self.train_loader.generator.manual_seed(self.config.seed + epoch)
        return loader

    def _stream_batches(self, epoch: int, skip: int):
        """The epoch's batches of a `StreamingDataset`, on the device. All processes end the epoch together (when
        the first of them runs out of rows), so that every process is at the same `(epoch, batches_in_epoch)`, the
        data position a checkpoint records."""
        dataset = self.train_loader.dataset
        dataset.set_epoch(epoch)
        dataset.set_skip(skip, self.config.train_batch_size)
        if skip:
            logger.info(
                "Resuming epoch %d of the stream: skipping the %d rows per process it already trained on.",
                epoch,
                skip * self.config.train_batch_size,
            )
        self.train_loader.generator.manual_seed(self.config.seed + epoch)  # worker seeds of this epoch
        device, several = self.accelerator.device, self.accelerator.num_processes > 1
        batches = iter(self.train_loader)
        while True:
            batch = next(batches, None)
            if several:
                flags = torch.tensor([batch is not None], dtype=torch.int32, device=device)
                if self.accelerator.reduce(flags, reduction="sum").item() < self.accelerator.num_processes:
                    return
            if batch is None:
                return
            yield send_to_device(batch, device)

    def _micro_step(self, batch) -> None:
        """Forward/backward of one micro-batch; the optimizer only steps when Accelerate syncs gradients."""
        accelerator, config = self.accelerator, self.config
        with accelerator.accumulate(self.model):
            with accelerator.autocast():
                loss, metrics = self.recipe.training_step(self.model, batch, self.state.global_step)
            if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
                raise TypeError(f"{type(self.recipe).__name__}.training_step must return (scalar loss tensor, dict).")
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm is not None:
                self.grad_norm = accelerator.clip_grad_norm_(self.params, config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._record(loss, metrics or {})

    def _record(self, loss: torch.Tensor, metrics: dict[str, float | torch.Tensor]) -> None:
        """Add a micro-step to the logging window. Tensors stay on the device until `_log` reads the window, so a
        step never waits for the accelerator to finish it."""
        window = self.window
        window["loss_sum"] = window["loss_sum"] + loss.detach().float()
        window["count"] += 1
        for key, value in metrics.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            total, count = window["metrics"].get(key, (0.0, 0))
            window["metrics"][key] = (total + value, count + 1)

    def _after_optimizer_step(self) -> None:
        """Bookkeeping after an optimizer step: schedule, EMA, progress, logs, eval, samples, checkpoint."""
        config, step = self.config, self.state.global_step + 1
        if not self.accelerator.optimizer_step_was_skipped:  # fp16 overflow steps do not advance the schedule
            self.lr_scheduler.step()
        self.state.global_step = step
        if self.ema is not None:
            self.ema.step(self.params)
        self.progress.update(1)
        if _is_due(step, config.log_steps, config.max_steps):
            self._log()
        if _is_due(step, config.eval_steps, config.max_steps):
            self._evaluate()
        if _is_due(step, config.sample_steps, config.max_steps):
            self._sample()
        if _is_due(step, config.checkpointing_steps, config.max_steps):
            save_checkpoint(
                self.accelerator,
                config.output_dir,
                step,
                config.checkpoints_total_limit,
                train_state=self.state,
                generator=self.recipe.generator,
                ema=self.ema,
                recipe=self._recipe_record(),
            )

    def _lr(self) -> float:
        return self.lr_scheduler.get_last_lr()[0]

    # ---------------------------------------------------------------------------------------------- logging
    def _log(self) -> None:
        """Log the window's loss (mean over micro-batches and processes), LR, grad norm and recipe metrics (means over
        the window, main process), reading them from the device in one transfer; show loss and LR on the bar."""
        window, device = self.window, self.accelerator.device
        totals = torch.stack([_device_scalar(window["loss_sum"], device), _device_scalar(window["count"], device)])
        totals = self.accelerator.reduce(totals, reduction="sum")
        extras = {
            f"train/{key}": _device_scalar(total, device) / count for key, (total, count) in window["metrics"].items()
        }
        if self.grad_norm is not None:
            extras["train/grad_norm"] = _device_scalar(self.grad_norm, device)
        loss, *extra_values = torch.stack([totals[0] / totals[1].clamp(min=1), *extras.values()]).tolist()
        values = {"train/loss": loss, "train/lr": self._lr(), "train/epoch": self.state.epoch}
        values.update(zip(extras, extra_values))
        self.accelerator.log(values, step=self.state.global_step)
        self.results.update({"train_loss": values["train/loss"], "lr": values["train/lr"]})
        self.progress.set_postfix(loss=f"{loss:.4g}", lr=f"{values['train/lr']:.3g}")
        self.window = _empty_window()

    @contextlib.contextmanager
    def _inference_mode(self):
        """Eval mode, no grad, EMA weights swapped in (when on) and a forked RNG, all undone on exit."""
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            if self.ema is not None:
                self.ema.store(self.params)
                self.ema.copy_to(self.params)
            self.model.eval()
            try:
                yield
            finally:
                self.model.train()
                if self.ema is not None:
                    self.ema.restore(self.params)

    def _evaluate(self) -> None:
        """Mean `training_step` loss on the eval set (all processes) plus `recipe.evaluate` (main process)."""
        values = {}
        with self._inference_mode():
            if self.eval_loader is not None:
                values["eval/loss"] = self._eval_loss()
            if self.accelerator.is_main_process:
                model = self.accelerator.unwrap_model(self.model)
                extra = self.recipe.evaluate(model, self.state.global_step) or {}
                values.update({f"eval/{k}": float(v) for k, v in extra.items()})
        self.accelerator.log(values, step=self.state.global_step)
        if self.accelerator.is_main_process:
            append_eval_history(self.config.output_dir, self.state.global_step, values)
        self.results.update(values)

    def _eval_loss(self) -> float:
        totals = torch.zeros(2, device=self.accelerator.device)
        for batch in self.eval_loader:
            with self.accelerator.autocast():
                loss, _ = self.recipe.training_step(self.model, batch, self.state.global_step)
            size = _batch_size(batch)
            totals += torch.tensor([loss.float().item() * size, size], device=totals.device)
        totals = self.accelerator.reduce(totals, reduction="sum")
        return (totals[0] / totals[1]).item()

    def _sample(self) -> None:
        """Save `recipe.sample_images` as `samples/step_XXXXXX.png` and log it (main process)."""
        if not self.accelerator.is_main_process:
            return
        with self._inference_mode():
            images = self.recipe.sample_images(self.accelerator.unwrap_model(self.model), self.state.global_step)
        if not images:
            return
        grid = make_image_grid(images)
        folder = os.path.join(self.config.output_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        grid.save(os.path.join(folder, f"step_{self.state.global_step:06d}.png"))
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                import numpy as np

                tracker.writer.add_image("samples", np.asarray(grid), self.state.global_step, dataformats="HWC")
            elif tracker.name == "wandb":
                tracker.log_images({"samples": [grid]}, step=self.state.global_step)

    # ----------------------------------------------------------------------------------------------- export
    def _export(self) -> None:
        """`recipe.save_pretrained` of the (EMA) model into `final.tmp`, then renamed to `final` (main process); with
        `push_to_hub`, `final` is then uploaded with its model card (`hf_t2i.hub.push_folder_to_hub`)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            final = os.path.join(self.config.output_dir, "final")
            tmp, old = final + ".tmp", final + ".old"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            with self._inference_mode():
                self.recipe.save_pretrained(accelerator.unwrap_model(self.model, keep_fp32_wrapper=False), tmp)
            give_new_file_modes(tmp)  # safetensors writes its files 0600: as readable as config.json instead
            if os.path.isdir(final):
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        if self.hub_repo_id is not None:  # main process only; after the barrier, so an upload cannot time it out
            from ..hub import push_folder_to_hub

            final, step = os.path.join(self.config.output_dir, "final"), self.state.global_step
            push_folder_to_hub(final, self.hub_repo_id, commit_message=f"{self.recipe.name}: step {step}")
            logger.info("Pushed %s to the Hub repository %s", final, self.hub_repo_id)
