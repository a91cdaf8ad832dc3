"""`hf-t2i study`: Fluid's 2x2 study (Fan et al. 2024, section 4.2) on our data: continuous / discrete tokens x
random / raster order, trained at equal compute (same data, backbone, text encoder, batch, steps and seed), then
validation loss and the evaluation metrics printed side by side.

The image tokenizers are trained first when no folder is given (`autoencoder_kl` for continuous tokens, `dalle_dvae`
for discrete ones, both with `tokenizer_steps` steps), so one command runs the whole study:

    hf-t2i study --output-dir runs/study --max-steps 2000 --eval-num-images 64
    hf-t2i study --output-dir runs/study --vae-path runs/vae/final --vq-path runs/dvae/final --cells continuous-random,discrete-random

Validation losses compare within a token type only (epsilon MSE for continuous tokens, cross-entropy in nats for
discrete ones); the paper's finding to reproduce is that random order beats raster order in both, and that the
generation metrics follow the validation loss. The continuous cells spend a little more compute per step (the
diffusion head, `diffusion_batch_mul` noise draws per token); everything else is identical.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

from .config import TrainingConfig


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
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    encoder_layers: int = 2
    diffusion_head_layers: int = 3
    num_diffusion_steps: int = 50
    eval_num_images: int = field(default=0, metadata={"help": "images per cell for the evaluation metrics (0: off)"})
    eval_metrics: str = field(default="", metadata={"help": "e.g. 'compositional'; '' = all the dataset allows"})
    guidance_scale: float = 3.0
    seed: int = 0
    cache_dir: str | None = None
    report_to: str = field(default="none", metadata={"help": "tensorboard | none"})

    def __post_init__(self):
        cells = self.cell_list()
        unknown = [c for c in cells if c not in CELLS]
        if unknown or not cells:
            raise ValueError(f"`cells` must be a comma-separated subset of {CELLS}, got {self.cells!r}.")
        for name in ("max_steps", "tokenizer_steps", "train_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")

    def cell_list(self) -> list[str]:
        return [c.strip() for c in self.cells.split(",") if c.strip()]


def _train(recipe, output_dir: str, study: StudyConfig, max_steps: int, **overrides) -> dict:
    from .trainer import train

    values = {**recipe.training_defaults, **overrides}
    values.update(
        output_dir=output_dir,
        max_steps=max_steps,
        train_batch_size=study.train_batch_size,
        seed=study.seed,
        report_to=study.report_to,
        eval_steps=max_steps,
        checkpointing_steps=max_steps,
        checkpoints_total_limit=1,
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
    """Train every cell of `study.cells`; return (and write to `<output_dir>/study.json`) their metrics."""
    from .recipes.fluid import FluidRecipe, FluidRecipeConfig

    os.makedirs(study.output_dir, exist_ok=True)
    cells = study.cell_list()
    paths = {}
    if any(c.startswith("continuous") for c in cells):
        paths["continuous"] = {"vae_path": _tokenizer(study, "vae", log)}
    if any(c.startswith("discrete") for c in cells):
        paths["discrete"] = {"vq_path": _tokenizer(study, "vq", log)}
    results = {}
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
            eval_num_images=study.eval_num_images,
            eval_metrics=study.eval_metrics,
            sample_guidance_scale=study.guidance_scale,
            cache_dir=study.cache_dir,
        )
        log(f"training {cell} ({study.max_steps} steps)")
        started = time.perf_counter()
        metrics = _train(
            FluidRecipe(config),
            os.path.join(study.output_dir, cell),
            study,
            study.max_steps,
            learning_rate=study.learning_rate,
        )
        metrics["train_seconds"] = time.perf_counter() - started
        results[cell] = metrics
    report = {"study": dataclasses.asdict(study), "results": results, "table": format_study(results)}
    with open(os.path.join(study.output_dir, "study.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True, default=float)
    log(report["table"])
    return report


def format_study(results: dict[str, dict]) -> str:
    """Markdown table: one row per cell, validation loss then the headline `eval/*` metrics (per-task breakdowns and
    sample counts stay in study.json), then training time."""
    metric_names = sorted(
        {
            k
            for m in results.values()
            for k in m
            if k.startswith("eval/") and k != "eval/loss" and "/per_task" not in k and not k.endswith("num_samples")
        }
    )
    headers = ["cell", "val loss", *[k.removeprefix("eval/") for k in metric_names], "train loss", "train s"]
    rows = []
    for cell, m in results.items():
        rows.append(
            [
                cell,
                _fmt(m.get("eval/loss")),
                *[_fmt(m.get(k)) for k in metric_names],
                _fmt(m.get("train_loss")),
                f"{m.get('train_seconds', 0):.0f}",
            ]
        )
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]

    def line(cells) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


__all__ = ["CELLS", "StudyConfig", "format_study", "run_study"]
