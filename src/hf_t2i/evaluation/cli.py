"""`hf-t2i eval`: generate images for a dataset's held-out (or validation) captions, compute metrics, write a report.

    hf-t2i eval --model dalle --dataset shapes --num-images 200 --output-dir eval/dalle-shapes
    hf-t2i eval --model dalle --dataset shapes --split validation --guidance-scale 2   # choose guidance here first
    hf-t2i eval --model runs/prior/final --dataset shapes --scorer runs/clip/final --metrics fid,compositional,clip
    hf-t2i eval --scorer runs/clip/final --dataset shapes --metrics retrieval     # the scorer alone, no --model
    hf-t2i eval --tokenizer runs/vit_vqgan/final --dataset shapes --num-images 200   # an image tokenizer alone
    hf-t2i eval --tokenizer runs/dvae/final --dataset emoji --num-images 192 --metrics fid   # + FID of reconstructions
    hf-t2i eval --model parti --dataset shapes --guidance-scale 1,2,3,5      # a sweep: one report per scale + sweep.md
    hf-t2i eval --model dalle --dataset shapes --num-candidates 8 --rerank-scorer runs/clip/final   # best-of-8
    hf-t2i eval --model fluid --dataset shapes --split validation --temperature 0.8   # a sampling setting

`--split test` (default) evaluates on the held-out captions (for shapes: held-out colour-shape pairs), the numbers to
report; `--split validation` (shapes only) on in-distribution captions, to choose settings such as guidance without
looking at test.

The package CLI wires it in with `add_eval_subparser(subparsers)`; the parsed arguments run `run_eval(args)`.
"""

from __future__ import annotations

import argparse
import json
import os

from ..generation.guidance import GUIDANCE_SCHEDULES, guidance_interval_argument
from .runner import DATASETS, EVAL_SPLIT, EVAL_SPLITS, METRICS, VALIDATION_DATASETS


def add_eval_subparser(subparsers) -> argparse.ArgumentParser:
    """Add the `eval` sub-command (sets `func=run_eval`)."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: FID, compositional accuracy, CLIP score; writes report.json and grid.png",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--model", default=None, help="a shipped checkpoint name (e.g. dalle) or a saved pipeline folder")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="evaluate an image tokenizer folder instead (DalleDVAE, ViTVQGAN or a diffusers AutoencoderKL): held-out "
        "reconstruction error, codebook usage (discrete ones), (shapes) the compositional accuracy of its "
        "reconstructions and, with --metrics fid, their FID",
    )
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}; --split says which split")
    p.add_argument(
        "--split",
        choices=EVAL_SPLITS,
        default=EVAL_SPLIT,
        help="test (default): held-out captions (shapes: held-out colour-shape pairs), for reporting; validation "
        f"({', '.join(VALIDATION_DATASETS)} only): in-distribution captions, for choosing settings such as guidance",
    )
    p.add_argument(
        "--num-images", type=int, default=64, help="images to generate (FID: ~0.12-0.7 s per image on a CPU)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="prompts per pipeline call")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator every image is drawn from")
    p.add_argument("--scorer", default=None, help="a clip_scorer folder (enables the clip / retrieval metrics)")
    p.add_argument(
        "--output-dir",
        default=None,
        help="where report.json and grid.png go (default eval/<dataset>; eval/<dataset>-validation with "
        "--split validation)",
    )
    p.add_argument(
        "--guidance-scale",
        type=_guidance_scales,
        default=None,
        help="default: the pipeline's (the checkpoint's `default_guidance_scale`). Several comma-separated values "
        "run a sweep: one report per value in OUTPUT_DIR/guidance_<value>/, and sweep.json + sweep.md (a table of the "
        "metrics against the scale) in OUTPUT_DIR",
    )
    p.add_argument(
        "--num-candidates",
        type=int,
        default=None,
        help="best-of-N (DALL-E section 2.6; DALL-E and Parti pipelines): draw N images per caption and keep the "
        "one --rerank-scorer ranks first",
    )
    p.add_argument(
        "--rerank-scorer",
        default=None,
        help="a clip_scorer folder used to rerank with --num-candidates (default: --scorer; a separate one keeps the "
        "clip metric unbiased)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="the pipeline's sampling temperature (default: its own; Fluid: the diffusion head's noise scale)",
    )
    p.add_argument(
        "--guidance-schedule",
        choices=GUIDANCE_SCHEDULES,
        default=None,
        help="constant (default) or linear: guidance rising from 1 to the scale over the steps (Muse, MAR)",
    )
    p.add_argument("--top-k", type=int, default=None, help="the pipeline's top-k (default: its own)")
    p.add_argument(
        "--guidance-interval",
        type=guidance_interval_argument,
        default=None,
        help="START,STOP: guide only the denoising steps whose progress i/(N-1) lies in [START, STOP] (guidance in a "
        "limited interval; Transfusion; Fluid: its diffusion head's steps). Default: the folder's own "
        "(`default_guidance_interval` in its model_index.json), else every step",
    )
    p.add_argument(
        "--num-inference-steps",
        type=int,
        default=None,
        help="the pipeline's steps or iterations (diffusion / masked models; default: its own)",
    )
    p.add_argument(
        "--super-resolution",
        action="store_true",
        default=None,
        help="decode with the folder's 2x upsampler (Parti's super-resolution stage); the shapes references are "
        "rendered at the doubled size",
    )
    p.add_argument(
        "--metrics", default=None, help=f"comma-separated subset of {','.join(METRICS)} (default: all that apply)"
    )
    p.add_argument("--data-dir", default=None, help="emoji: npm cache folder; imagefolder: the folder")
    p.add_argument("--data-seed", type=int, default=0, help="dataset seed, as in training")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda if available)")
    p.set_defaults(func=run_eval)
    return p


def run_eval(args) -> int:
    """Run `hf-t2i eval` with parsed arguments; prints the metrics and where the report went."""
    import torch

    from .runner import evaluate_pipeline, evaluate_scorer, resolve_metrics

    split = getattr(args, "split", EVAL_SPLIT)
    if args.tokenizer is not None:
        from .tokenizer import evaluate_image_tokenizer

        if args.model is not None:
            raise ValueError("Pass either `--model` (a pipeline) or `--tokenizer` (an image tokenizer), not both.")
        asked = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else []
        if any(m != "fid" for m in asked):
            raise ValueError(
                f"--metrics {args.metrics!r} with --tokenizer: an image tokenizer is evaluated on reconstructions, "
                "which takes only 'fid' (the FID of its reconstructions); leave --metrics out for the rest."
            )
        results = evaluate_image_tokenizer(
            args.tokenizer, args.dataset, args.num_images, args.data_dir, args.data_seed, split=split, fid=bool(asked)
        )
        print(json.dumps(results, indent=2))
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "tokenizer_report.json"), "w", encoding="utf-8") as f:
                json.dump({"metrics": results, "settings": _settings(args)}, f, indent=2)
        return 0
    metrics = resolve_metrics(args.metrics, args.dataset, args.scorer is not None) if args.metrics else None
    if args.model is None:
        if metrics != ["retrieval"]:
            raise ValueError(
                "`--model` is required (a shipped checkpoint name or a pipeline folder), unless only the scorer is "
                "evaluated with `--scorer PATH --metrics retrieval`."
            )
        results = evaluate_scorer(
            args.scorer, args.dataset, args.num_images, args.data_dir, args.data_seed, split=split
        )
        print(json.dumps(results, indent=2))
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "scorer_report.json"), "w", encoding="utf-8") as f:
                json.dump({"metrics": {"retrieval": results}, "settings": _settings(args)}, f, indent=2)
        return 0

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    default_dir = args.dataset if split == EVAL_SPLIT else f"{args.dataset}-{split}"
    output_dir = args.output_dir or os.path.join("eval", default_dir)
    scales = args.guidance_scale if args.guidance_scale is not None else [None]
    num_candidates = getattr(args, "num_candidates", None)
    rerank_scorer = getattr(args, "rerank_scorer", None) or (args.scorer if num_candidates is not None else None)
    sampling = {
        name: getattr(args, name, None)
        for name in (
            "temperature",
            "guidance_schedule",
            "guidance_interval",
            "top_k",
            "num_inference_steps",
            "super_resolution",
        )
    }
    sampling = {name: value for name, value in sampling.items() if value is not None}
    reports = []
    for scale in scales:
        folder = output_dir if len(scales) == 1 else os.path.join(output_dir, f"guidance_{scale:g}")
        report = evaluate_pipeline(
            args.model,
            args.dataset,
            num_images=args.num_images,
            batch_size=args.batch_size,
            seed=args.seed,
            scorer_path=args.scorer,
            output_dir=folder,
            guidance_scale=scale,
            metrics=metrics,
            data_dir=args.data_dir,
            data_seed=args.data_seed,
            device=device,
            split=split,
            num_candidates=num_candidates,
            rerank_scorer_path=rerank_scorer,
            **sampling,
        )
        reports.append(report)
        print(json.dumps(report["metrics"], indent=2))
        print(f"wrote {os.path.join(folder, 'report.json')} and {os.path.join(folder, 'grid.png')}")
    if len(scales) > 1:
        write_sweep(reports, output_dir)
        print(f"wrote {os.path.join(output_dir, 'sweep.json')} and {os.path.join(output_dir, 'sweep.md')}")
    return 0


def _guidance_scales(text: str) -> list[float]:
    """`--guidance-scale` values: one number, or several comma-separated ones for a sweep."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas (e.g. 3 or 1,2,3,5), got {text!r}"
        ) from None
    if any(not value >= 0 or value == float("inf") for value in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct finite numbers >= 0, got {text!r}")
    return values


def write_sweep(reports: list[dict], output_dir: str) -> list[dict]:
    """sweep.json (one row of flat metrics per report, with its guidance scale) and sweep.md (the same rows as a
    markdown table) in `output_dir`; returns the rows."""
    from .runner import flatten_metrics

    rows = []
    for report in reports:
        flat = flatten_metrics(report["metrics"])
        row = {"guidance_scale": report["settings"]["guidance_scale"]}
        for key in ("fid", "compositional/overall", "clip_score", "clip_cosine"):
            if key in flat:
                row[key] = flat[key]
        row.update({k: v for k, v in flat.items() if k.startswith("compositional/per_task/")})
        rows.append(row)
    settings = {k: v for k, v in reports[0]["settings"].items() if k != "guidance_scale"}
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "sweep.json"), "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "settings": settings, "machine": reports[0]["machine"]}, f, indent=2)
        f.write("\n")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [
        "| " + " | ".join(c.replace("compositional/per_task/", "") for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [f"{row['guidance_scale']:g}" if row["guidance_scale"] is not None else "default"]
        cells += [f"{row[c]:.3f}" if isinstance(row.get(c), float) else "" for c in columns[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    with open(os.path.join(output_dir, "sweep.md"), "w", encoding="utf-8") as f:
        f.write(
            f"{settings['model']} on {settings['dataset']} ({settings['split']} split, {settings['num_images']} "
            f"images, seed {settings['seed']}):\n\n" + "\n".join(lines) + "\n"
        )
    return rows


def _settings(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


__all__ = ["add_eval_subparser", "run_eval", "write_sweep"]
