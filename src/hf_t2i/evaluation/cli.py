"""`hf-t2i eval`: generate images for a dataset's held-out (or validation) captions, compute metrics, write a report.

    hf-t2i eval --model dalle --dataset shapes --num-images 200 --output-dir eval/dalle-shapes
    hf-t2i eval --model dalle --dataset shapes --split validation --guidance-scale 2   # choose guidance here first
    hf-t2i eval --model runs/prior/final --dataset shapes --scorer runs/clip/final --metrics fid,compositional,clip
    hf-t2i eval --scorer runs/clip/final --dataset shapes --metrics retrieval     # the scorer alone, no --model
    hf-t2i eval --tokenizer runs/vit_vqgan/final --dataset shapes --num-images 200   # an image tokenizer alone

`--split test` (default) evaluates on the held-out captions (for shapes: held-out colour-shape pairs), the numbers to
report; `--split validation` (shapes only) on in-distribution captions, to choose settings such as guidance without
looking at test.

The package CLI wires it in with `add_eval_subparser(subparsers)`; the parsed arguments run `run_eval(args)`.
"""

from __future__ import annotations

import argparse
import json
import os

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
        "reconstruction error, codebook usage (discrete ones) and (shapes) the compositional accuracy of its "
        "reconstructions",
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
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's")
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
        results = evaluate_image_tokenizer(
            args.tokenizer, args.dataset, args.num_images, args.data_dir, args.data_seed, split=split
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
    report = evaluate_pipeline(
        args.model,
        args.dataset,
        num_images=args.num_images,
        batch_size=args.batch_size,
        seed=args.seed,
        scorer_path=args.scorer,
        output_dir=output_dir,
        guidance_scale=args.guidance_scale,
        metrics=metrics,
        data_dir=args.data_dir,
        data_seed=args.data_seed,
        device=device,
        split=split,
    )
    print(json.dumps(report["metrics"], indent=2))
    print(f"wrote {os.path.join(output_dir, 'report.json')} and {os.path.join(output_dir, 'grid.png')}")
    return 0


def _settings(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


__all__ = ["add_eval_subparser", "run_eval"]
