"""`hf-t2i study`: Fluid's 2x2 study (Fan et al. 2024, section 4.2) on our data: continuous / discrete tokens x
random / raster order, trained at equal compute (same data, backbone, text encoder, batch, steps and seed), then
validation loss and the evaluation metrics printed side by side.

The image tokenizers are trained first when no folder is given (`autoencoder_kl` for continuous tokens, `dalle_dvae`
for discrete ones, both with `tokenizer_steps` steps), so one command runs the whole study:

    hf-t2i study --output-dir runs/study --max-steps 2000 --eval-num-images 64
    hf-t2i study --output-dir runs/study --vae-path runs/vae/final --vq-path runs/dvae/final --cells continuous-random,discrete-random

The study is resumable: every cell checkpoints every `checkpointing_steps`, and the same command run again continues
each unfinished cell from its newest checkpoint and reuses the finished ones (their settings are recorded in
`<cell>/study_cell.json`; a rerun with other settings is refused, except a larger `max_steps`, which trains the finished
cells on, with other evaluation settings if wanted). With `eval_steps`, each cell is evaluated every
that many steps too, and study.json and the printed tables hold the curves (`eval_history.jsonl` of each cell), which
show whether the cells have converged, and how closely each cell's metrics follow its validation loss
(`format_tracking`). They cover every cell of the folder: a run of a subset (`cells`) reports the
cells an earlier run finished as well, each with the steps it was trained for. The study ends by drawing
`<output_dir>/study_samples.png`, every reported cell's final model side by side on the same prompts and seed
(`grid_prompts`):

    hf-t2i study --output-dir runs/study64 --image-size 64 --vae-path runs/akl64/final --vq-path runs/vq64/final \
        --position-embedding-init sincos_2d --max-steps 12000 --eval-steps 3000 --eval-num-images 200 \
        --mixed-precision bf16

Validation losses compare within a token type only (epsilon MSE for continuous tokens, cross-entropy in nats for
discrete ones); the paper's finding to reproduce is that random order beats raster order in both, and that the
generation metrics follow the validation loss. The continuous cells spend a little more compute per step (the
diffusion head, `diffusion_batch_mul` noise draws per token); everything else is identical.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from dataclasses import dataclass, field

from ..configuration_utils import check_choice
from .config import LR_SCHEDULERS, MIXED_PRECISIONS, TrainingConfig


CELLS = ("continuous-random", "continuous-raster", "discrete-random", "discrete-raster")


@dataclass
class StudyConfig:
    """Settings of `hf-t2i study` (one `--flag` each)."""

    output_dir: str = field(metadata={"help": "folder of the tokenizers, the four runs and study.json"})
    cells: str = field(default=",".join(CELLS), metadata={"help": "comma-separated subset of " + ", ".join(CELLS)})
    dataset: str = field(default="shapes", metadata={"help": "shapes | emoji | fashion_mnist | imagefolder"})
    dataset_size: int = 20000
    data_dir: str | None = None
    image_size: int = 32
    eval_size: int = 256
    vae_path: str = field(default="", metadata={"help": "an AutoencoderKL folder; default: train one"})
    vq_path: str = field(default="", metadata={"help": "a DalleDVAE / ViTVQGAN folder; default: train a dVAE"})
    tokenizer_steps: int = field(default=2000, metadata={"help": "steps of each tokenizer trained here"})
    max_steps: int = field(default=2000, metadata={"help": "optimizer steps of every cell (equal compute)"})
    train_batch_size: int = 32
    learning_rate: float = 5e-4
    lr_scheduler: str = field(
        default="cosine",
        metadata={
            "help": "cosine | constant_with_warmup | linear: with a constant LR (and the EMA weights that "
            "evaluation uses), a study trained on with a larger --max-steps continues its curves seamlessly"
        },
    )
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    encoder_layers: int = 2
    diffusion_head_layers: int = 3
    num_diffusion_steps: int = 50
    text_vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary trained on the captions"})
    text_seq_len: int = 32
    patch_size: int = field(default=2, metadata={"help": "latent patch grouped into one token (continuous cells)"})
    position_embedding_init: str = field(
        default="normal", metadata={"help": "normal | sincos_2d: how every cell's learned image positions start"}
    )
    mixed_precision: str = field(default="no", metadata={"help": "no | bf16 | fp16"})
    checkpointing_steps: int = field(
        default=500, metadata={"help": "checkpoint every N steps: a rerun of the command resumes from the newest"}
    )
    eval_steps: int = field(
        default=0, metadata={"help": "also evaluate every N steps (the curves; 0: only at the end)"}
    )
    eval_num_images: int = field(default=0, metadata={"help": "images per cell for the evaluation metrics (0: off)"})
    eval_metrics: str = field(default="", metadata={"help": "e.g. 'compositional'; '' = all the dataset allows"})
    guidance_scale: float = 3.0
    seed: int = 0
    grid_prompts: str = field(
        default="",
        metadata={
            "help": "'|'-separated prompts of study_samples.png (one row per cell, one column per prompt, guidance "
            "--guidance-scale); default: six shapes prompts (two with held-out pairs) on shapes, else the first six "
            "validation captions; 'none': no picture"
        },
    )
    cache_dir: str | None = None
    report_to: str = field(default="none", metadata={"help": "tensorboard | none"})

    def __post_init__(self):
        cells = self.cell_list()
        unknown = [c for c in cells if c not in CELLS]
        if unknown or not cells:
            raise ValueError(f"`cells` must be a comma-separated subset of {CELLS}, got {self.cells!r}.")
        for name in ("max_steps", "tokenizer_steps", "train_batch_size", "checkpointing_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.eval_steps < 0:
            raise ValueError(f"`eval_steps` must be >= 0 (0: evaluate at the end only), got {self.eval_steps}.")
        # checked here, before any tokenizer trains, not when the first cell builds its TrainingConfig
        for name, allowed in (("lr_scheduler", LR_SCHEDULERS), ("mixed_precision", MIXED_PRECISIONS)):
            check_choice(name, getattr(self, name), allowed)

    def cell_list(self) -> list[str]:
        return [c.strip() for c in self.cells.split(",") if c.strip()]


# settings that may change between runs of one study folder: a larger max_steps trains the cells on, and the
# evaluation settings change what is measured from then on (a finished cell refuses them without more steps)
RERUN_SETTINGS = (
    "max_steps",
    "eval_steps",
    "eval_num_images",
    "eval_metrics",
    "guidance_scale",
    "num_diffusion_steps",
)
# settings that never change a cell's training
NOT_CELL_SETTINGS = (
    "output_dir",
    "cells",
    "cache_dir",
    "report_to",
    "checkpointing_steps",
    "tokenizer_steps",
    "grid_prompts",
)


def _train(recipe, output_dir: str, study: StudyConfig, max_steps: int, **overrides) -> dict:
    from .trainer import train

    values = {**recipe.training_defaults, **overrides}
    values.update(
        output_dir=output_dir,
        max_steps=max_steps,
        train_batch_size=study.train_batch_size,
        seed=study.seed,
        report_to=study.report_to,
        mixed_precision=study.mixed_precision,
        eval_steps=study.eval_steps or max_steps,
        checkpointing_steps=min(study.checkpointing_steps, max_steps),
        checkpoints_total_limit=1,
        resume_from_checkpoint="latest",
    )
    values["lr_warmup_steps"] = min(values.get("lr_warmup_steps", 0), max_steps // 10)
    return train(recipe, TrainingConfig(**values))


def _data(study: StudyConfig) -> dict:
    return dict(
        dataset=study.dataset,
        dataset_size=study.dataset_size,
        data_dir=study.data_dir,
        image_size=study.image_size,
        eval_size=study.eval_size,
        data_seed=study.seed,
    )


def _tokenizer(study: StudyConfig, kind: str, log) -> str:
    """The folder of the continuous ("vae") or discrete ("vq") tokenizer, trained here when not given."""
    given = study.vae_path if kind == "vae" else study.vq_path
    if given:
        return given
    final = os.path.join(study.output_dir, kind, "final")
    if os.path.isfile(os.path.join(final, "config.json")):
        log(f"reusing the {kind} tokenizer in {final}")
        return final
    from .recipes.autoencoder_kl import AutoencoderKLRecipe, AutoencoderKLRecipeConfig
    from .recipes.dalle import DalleDVAERecipe, DalleDVAERecipeConfig

    if kind == "vae":
        recipe = AutoencoderKLRecipe(AutoencoderKLRecipeConfig(**_data(study)))
    else:  # the VAE's token grid: image / 4 (VAE) / 2 (patch) = image / 8, i.e. three halvings
        recipe = DalleDVAERecipe(DalleDVAERecipeConfig(**_data(study), channel_multipliers="1,2,2,2"))
    log(f"training the {kind} tokenizer ({study.tokenizer_steps} steps)")
    _train(recipe, os.path.join(study.output_dir, kind), study, study.tokenizer_steps)
    return final


def run_study(study: StudyConfig, log=print) -> dict:
    """Train every cell of `study.cells`; return (and write to `<output_dir>/study.json`) their metrics, and those of
    the cells an earlier run of this study finished in `output_dir` (with other steps or evaluations at most)."""
    from .recipes.fluid import FluidRecipe, FluidRecipeConfig
    from .trainer import read_eval_history

    os.makedirs(study.output_dir, exist_ok=True)
    cells = study.cell_list()
    paths = {}
    if any(c.startswith("continuous") for c in cells):
        paths["continuous"] = {"vae_path": _tokenizer(study, "vae", log)}
    if any(c.startswith("discrete") for c in cells):
        paths["discrete"] = {"vq_path": _tokenizer(study, "vq", log)}
    results, histories, recipes = {}, {}, {}
    for cell in cells:
        token_type, order = cell.split("-")
        config = FluidRecipeConfig(
            **_data(study),
            **paths[token_type],
            token_type=token_type,
            generation_order=order,
            hidden_size=study.hidden_size,
            num_hidden_layers=study.num_hidden_layers,
            num_attention_heads=study.num_attention_heads,
            intermediate_size=study.intermediate_size,
            encoder_layers=study.encoder_layers,
            encoder_attention_heads=study.num_attention_heads,
            encoder_intermediate_size=study.intermediate_size,
            diffusion_head_layers=study.diffusion_head_layers,
            num_diffusion_steps=study.num_diffusion_steps,
            text_vocab_size=study.text_vocab_size,
            text_seq_len=study.text_seq_len,
            patch_size=study.patch_size,
            position_embedding_init=study.position_embedding_init,
            eval_num_images=study.eval_num_images,
            eval_metrics=study.eval_metrics,
            sample_guidance_scale=study.guidance_scale,
            cache_dir=study.cache_dir,
        )
        cell_dir = os.path.join(study.output_dir, cell)
        recipes[cell] = FluidRecipe(config)
        results[cell] = _run_cell(study, cell, cell_dir, recipes[cell], log)
        histories[cell] = read_eval_history(cell_dir)
    for cell in CELLS:  # the cells an earlier run of this folder finished stay in the report (`--cells` a subset)
        cell_dir = os.path.join(study.output_dir, cell)
        metrics = None if cell in results else _earlier_cell(study, cell, cell_dir)
        if metrics is not None:
            log(f"reporting the {cell} cell an earlier run finished ({metrics.get('global_step')} steps)")
            results[cell], histories[cell] = metrics, read_eval_history(cell_dir)
    results = {cell: results[cell] for cell in CELLS if cell in results}
    histories = {cell: histories[cell] for cell in results}
    report = {
        "study": dataclasses.asdict(study),
        "results": results,
        "history": histories,
        "table": format_study(results),
        "curves": format_curves(histories),
        "tracking": format_tracking(histories),
    }
    _write_json(os.path.join(study.output_dir, "study.json"), report)
    log(report["table"])
    if any(len(rows) > 1 for rows in histories.values()):
        log(report["curves"])
    if report["tracking"]:
        log(report["tracking"])
    if study.grid_prompts != "none":
        path = os.path.join(study.output_dir, "study_samples.png")
        _draw_samples(study, {cell: m.get("global_step") for cell, m in results.items()}, recipes, path)
        log(f"saved {path}: one row per cell, one column per prompt")
    return report


def _draw_samples(study: StudyConfig, steps: dict, recipes: dict, path: str) -> None:
    """`path`: the final model of every cell of `steps` (cell -> steps trained) side by side on the same prompts and
    seed (`grids.draw_comparison_grid`), each row labelled with its steps when the cells' differ; `recipes` (the cells
    of this run) give the captions on data other than shapes."""
    import torch

    from ..grids import DEFAULT_GRID_PROMPTS, draw_comparison_grid
    from ..modeling_utils import write_atomically
    from ..pipelines import T2IPipeline

    prompts = [p.strip() for p in study.grid_prompts.split("|") if p.strip()]
    if not prompts:
        first_recipe = next(iter(recipes.values()))
        prompts = DEFAULT_GRID_PROMPTS if study.dataset == "shapes" else first_recipe._splits()[1]["text"][:6]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipes, same_steps = {}, len(set(steps.values())) == 1
    for cell, cell_steps in steps.items():
        pipe = T2IPipeline.from_pretrained(os.path.join(study.output_dir, cell, "final"), dtype=torch.float32)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        pipes[cell if same_steps else f"{cell} ({cell_steps} steps)"] = pipe
    grid = draw_comparison_grid(pipes, list(prompts), seed=study.seed, guidance_scale=study.guidance_scale)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_atomically(path, lambda tmp: grid.save(tmp, format="PNG", optimize=True))


TOKENIZER_PATH = {"continuous": "vae_path", "discrete": "vq_path"}  # each token type's tokenizer folder setting
# settings of the other token type, which never change a cell: a study may add the discrete cells (and their
# --vq-path) after its continuous ones have trained, or the reverse
OTHER_TOKEN_TYPE_SETTINGS = {
    "continuous": ("vq_path",),
    "discrete": ("vae_path", "patch_size", "diffusion_head_layers", "num_diffusion_steps"),
}


def _cell_settings(study: StudyConfig, token_type: str) -> dict:
    ignored = (*NOT_CELL_SETTINGS, *OTHER_TOKEN_TYPE_SETTINGS[token_type])
    settings = {k: v for k, v in dataclasses.asdict(study).items() if k not in ignored}
    return json.loads(json.dumps(settings))  # as read back from study_cell.json


def _read_record(cell_dir: str) -> dict | None:
    """`<cell_dir>/study_cell.json` (settings, and metrics once the cell finished), or None when there is none."""
    record_path = os.path.join(cell_dir, "study_cell.json")
    if not os.path.isfile(record_path):
        return None
    with open(record_path, encoding="utf-8") as f:
        return json.load(f)


def _changed_settings(before: dict, settings: dict) -> list[str]:
    return sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))


def _earlier_cell(study: StudyConfig, cell: str, cell_dir: str) -> dict | None:
    """The metrics of a cell that is not in `study.cells` but that an earlier run of this study (settings that differ
    in `RERUN_SETTINGS` only: other steps, other evaluations) finished in `cell_dir`; None when there is none."""
    record = _read_record(cell_dir)
    if record is None:
        return None
    token_type = cell.split("-")[0]
    changed = _changed_settings(record.get("settings", {}), _cell_settings(study, token_type))
    if all(not c.startswith(token_type) for c in study.cell_list()):  # this run need not name that tokenizer
        changed = [k for k in changed if k != TOKENIZER_PATH[token_type]]
    if "metrics" not in record or any(k not in RERUN_SETTINGS for k in changed):
        return None
    return record["metrics"]


def _run_cell(study: StudyConfig, cell: str, cell_dir: str, recipe, log) -> dict:
    """Train one cell (or continue it from its newest checkpoint), or reuse it when it is finished with these
    settings; `<cell_dir>/study_cell.json` records the settings from the start and the metrics at the end."""
    from .checkpointing import list_checkpoints

    record_path = os.path.join(cell_dir, "study_cell.json")
    settings = _cell_settings(study, cell.split("-")[0])
    record = _read_record(cell_dir)
    if record is not None:
        before = record.get("settings", {})
        changed = _changed_settings(before, settings)
        refused = [k for k in changed if k not in RERUN_SETTINGS]
        if refused:
            raise ValueError(
                f"{cell_dir} holds the {cell} cell of a study with other settings ("
                + ", ".join(f"{k}: {before.get(k)!r} there, {settings.get(k)!r} now" for k in refused)
                + "). Rerun with the same settings to continue that study, or pass another `output_dir`."
            )
        if before.get("max_steps", 0) > study.max_steps:
            raise ValueError(
                f"`max_steps` ({study.max_steps}) is below the {before['max_steps']} steps the {cell} cell in "
                f"{cell_dir} was trained for; pass max_steps >= {before['max_steps']} or another `output_dir`."
            )
        if "metrics" in record and before.get("max_steps") == study.max_steps:
            if changed:  # only evaluation settings: a finished cell trains no more, so nothing would measure them
                raise ValueError(
                    f"The {cell} cell in {cell_dir} has finished its {study.max_steps} steps, evaluated with "
                    + ", ".join(f"{k}={before.get(k)!r}" for k in changed)
                    + f". Evaluate its final model with `hf-t2i eval --model {os.path.join(cell_dir, 'final')}`, "
                    "or train it on with a larger `max_steps`."
                )
            log(f"reusing the finished {cell} cell in {cell_dir}")
            return record["metrics"]
    _write_json(record_path, {"settings": settings})
    steps_before = max((step for step, _ in list_checkpoints(cell_dir)), default=0)
    log(f"training {cell} ({study.max_steps} steps" + (f", from step {steps_before})" if steps_before else ")"))
    started = time.perf_counter()
    metrics = _train(
        recipe, cell_dir, study, study.max_steps, learning_rate=study.learning_rate, lr_scheduler=study.lr_scheduler
    )
    seconds = time.perf_counter() - started
    metrics["train_seconds"] = seconds
    if metrics["global_step"] > steps_before:
        metrics["seconds_per_step"] = seconds / (metrics["global_step"] - steps_before)
    _write_json(record_path, {"settings": settings, "metrics": metrics})
    return metrics


def _write_json(path: str, value: dict) -> None:
    from ..modeling_utils import write_json_atomically

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_json_atomically(path, value, sort_keys=True, default=float)


def _headline_metrics(rows) -> list[str]:
    """The `eval/*` keys worth a column: the metrics' overall values (per-task breakdowns, position outcomes and
    sample counts stay in study.json), without the loss, which has its own column."""
    return sorted(
        {
            k
            for m in rows
            for k in m
            if k.startswith("eval/")
            and k != "eval/loss"
            and "/per_task" not in k
            and "/position_outcomes" not in k
            and not k.endswith("num_samples")
        }
    )


def format_study(results: dict[str, dict]) -> str:
    """Markdown table: one row per cell, its steps, validation loss then the headline `eval/*` metrics, then the last
    training loss, the seconds of the run that finished the cell and its seconds per step (data preparation and
    evaluations included)."""
    metric_names = _headline_metrics(results.values())
    headers = [
        "cell",
        "steps",
        "val loss",
        *[k.removeprefix("eval/") for k in metric_names],
        "train loss",
        "train s",
        "s / step",
    ]
    rows = []
    for cell, m in results.items():
        rows.append(
            [
                cell,
                str(m.get("global_step", "")),
                _fmt(m.get("eval/loss")),
                *[_fmt(m.get(k)) for k in metric_names],
                _fmt(m.get("train_loss")),
                f"{m.get('train_seconds', 0):.0f}",
                _fmt(m.get("seconds_per_step")),
            ]
        )
    return _markdown(headers, rows)


def format_curves(histories: dict[str, list[dict]]) -> str:
    """Markdown table of every evaluation of every cell (`eval_steps`): one row per (cell, step), validation loss and
    the headline metrics; whether the last rows still move says whether the cells have converged."""
    metric_names = _headline_metrics(row for rows in histories.values() for row in rows)
    headers = ["cell", "step", "val loss", *[k.removeprefix("eval/") for k in metric_names]]
    rows = [
        [cell, str(row["step"]), _fmt(row.get("eval/loss")), *[_fmt(row.get(k)) for k in metric_names]]
        for cell, cell_rows in histories.items()
        for row in cell_rows
    ]
    return _markdown(headers, rows)


def format_tracking(histories: dict[str, list[dict]], min_evaluations: int = 3) -> str:
    """Markdown table of how closely each cell's metrics follow its validation loss along its curve (the paper's second
    finding: validation loss tracks the generation metrics almost linearly): per cell, the Pearson correlation of the
    loss with each headline metric over its evaluations (-1: accuracy rises exactly linearly as the loss falls). Cells
    with fewer than `min_evaluations` evaluations are left out; "" when none has that many."""
    rows_by_cell = {
        cell: [row for row in rows if row.get("eval/loss") is not None] for cell, rows in histories.items()
    }
    rows_by_cell = {cell: rows for cell, rows in rows_by_cell.items() if len(rows) >= min_evaluations}
    metric_names = _headline_metrics(row for rows in rows_by_cell.values() for row in rows)
    if not rows_by_cell or not metric_names:
        return ""
    headers = ["cell", "evaluations", *[f"r(val loss, {k.removeprefix('eval/')})" for k in metric_names]]
    table = []
    for cell, rows in rows_by_cell.items():
        losses = [row["eval/loss"] for row in rows]
        correlations = []
        for name in metric_names:
            pairs = [(loss, row[name]) for loss, row in zip(losses, rows) if row.get(name) is not None]
            correlations.append(_fmt(_pearson(*zip(*pairs))) if len(pairs) >= min_evaluations else "")
        table.append([cell, str(len(rows)), *correlations])
    return _markdown(headers, table)


def _pearson(xs, ys) -> float | None:
    """Pearson correlation of two equal-length sequences; None when either is constant."""
    if min(xs) == max(xs) or min(ys) == max(ys):  # checked exactly: rounding makes the stdlib's constant check miss
        return None
    return statistics.correlation(xs, ys)


def _markdown(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]

    def line(cells) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


__all__ = ["CELLS", "StudyConfig", "format_curves", "format_study", "format_tracking", "run_study"]
