"""`hf-t2i` command line: generate | grid | data | train | eval | study | export | demo.

Each subcommand's work lives in its own module; this file only parses arguments and dispatches.
"""

from __future__ import annotations

import argparse
import sys

from .checkpoints import DEFAULT_CHECKPOINT, resolve_checkpoint


# The recipes train with caption dropout for guidance, and their checkpoints draw far better with it. A folder that
# names its own scale (`default_guidance_scale` in model_index.json, as every shipped checkpoint does: the scale its
# model card chose) is guided with that one, as a call of its pipeline without `guidance_scale` is; the command line
# guides any other folder with this scale, where the pipelines' own fallback is 1.0 (off).
DEFAULT_GUIDANCE_SCALE = 3.0
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes at most a 64-bit seed
MAX_UPSCALE = 16  # --upscale: a 32px image becomes 512px, a 256px one 4096px; 100000 would need terabytes


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """The checkpoint and sampling options that `generate` and `grid` share."""
    p.add_argument(
        "--model", default=None, help=f"a shipped checkpoint name (default: {DEFAULT_CHECKPOINT}) or a saved folder"
    )
    p.add_argument("--seed", type=int, default=0, help="the generator's seed, in [0, 2**64 - 1] (default 0)")
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance (1 = off); default: the folder's own scale (`default_guidance_scale` in its "
        f"model_index.json: every shipped checkpoint has one), else {DEFAULT_GUIDANCE_SCALE}, for pipelines that take it",
    )
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--num-inference-steps", type=int, default=None, help="diffusion / masked models only")
    p.add_argument(
        "--guidance-interval",
        type=_guidance_interval,
        default=None,
        help="START,STOP: guide only the denoising steps whose progress lies in [START, STOP] (Transfusion; "
        "Fluid: its diffusion head's steps); default: the folder's own (`default_guidance_interval` in its "
        "model_index.json), else every step",
    )
    p.add_argument(
        "--num-candidates",
        type=int,
        default=None,
        help="draw N candidates per image and keep the one the folder's reranking scorer ranks highest (DALL-E's "
        "reranking; folders exported with `--rerank-scorer`)",
    )
    p.add_argument(
        "--super-resolution",
        action="store_true",
        default=None,
        help="decode with the folder's 2x upsampler (Parti's super-resolution stage; folders exported with "
        "`--upsampler`)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])


def _load_for_sampling(args):
    """(pipeline, its folder, the pipeline's keyword arguments) from `_add_sampling_arguments`' options; an option the
    pipeline does not take is an error naming it."""
    import inspect

    import torch

    from .pipelines import T2IPipeline

    checkpoint = args.model or DEFAULT_CHECKPOINT
    path = resolve_checkpoint(checkpoint)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = T2IPipeline.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(device)
    options = {
        "guidance_scale": args.guidance_scale,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "num_inference_steps": args.num_inference_steps,
        "guidance_interval": args.guidance_interval,
        "num_candidates": args.num_candidates,
        "super_resolution": args.super_resolution,
    }
    accepted = inspect.signature(pipe.__call__).parameters
    if options["guidance_scale"] is None and "guidance_scale" in accepted:
        options["guidance_scale"] = pipe.guidance_scale_or_default(None, fallback=DEFAULT_GUIDANCE_SCALE)
    for name, value in options.items():
        if value is not None and name not in accepted:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to {type(pipe).__name__}.")
    return pipe, path, {k: v for k, v in options.items() if v is not None}


def _check_output(output: str) -> None:
    """Before generating: `--output` names a file with an image extension PIL can write, in a folder that exists or
    is created now (missing parents are created, as `save_pretrained` does); a `ValueError` naming `--output`
    otherwise."""
    import os

    from PIL import Image

    extension = os.path.splitext(output)[1].lower()
    if extension not in Image.registered_extensions():
        raise ValueError(
            f"--output {output!r} needs an image file extension such as .png, got {extension or 'none'!r}."
        )
    if os.path.isdir(output):
        raise ValueError(
            f"--output {output!r} is a folder; pass a file path such as {os.path.join(output, 'out.png')!r}."
        )
    folder = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"--output {output!r}: cannot create its folder {folder!r} ({error.strerror or error})."
        ) from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--output {output!r}: its folder {folder!r} is not writable.")


def _check_sampling_arguments(args, count_option: str, count: int) -> None:
    """Checks of the `generate` / `grid` options made before the checkpoint loads, each a `ValueError` naming the
    option (`main` prints it as one `error: ...` line and exits with status 2)."""
    if count < 1:
        raise ValueError(f"{count_option} must be >= 1, got {count}.")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must be in [0, 2**64 - 1] (a torch.Generator seed), got {args.seed}.")
    if not 1 <= args.upscale <= MAX_UPSCALE:
        raise ValueError(f"--upscale must be in [1, {MAX_UPSCALE}], got {args.upscale}.")
    _check_output(args.output)


def _add_generate(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate images from a prompt with a checkpoint")
    p.add_argument("prompt", nargs="+", help="the prompt (several words are joined)")
    p.add_argument(
        "--output",
        default="out.png",
        help="output image (.png, .jpg, ...); with --num-images > 1 a grid. Missing parent folders are created "
        "(as save_pretrained does).",
    )
    p.add_argument("--num-images", type=int, default=1, help="images to draw (>= 1); more than one are saved as a row")
    p.add_argument(
        "--upscale",
        type=int,
        default=4,
        help=f"save the image N times larger (nearest), 1 = as drawn, at most {MAX_UPSCALE}",
    )
    _add_sampling_arguments(p)
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    import torch
    from diffusers.utils import make_image_grid

    _check_sampling_arguments(args, "--num-images", args.num_images)
    pipe, path, kwargs = _load_for_sampling(args)
    pipe.check_batch_size(1, args.num_images, "--num-images")  # the pipeline's own limit, before drawing
    prompt = " ".join(args.prompt)
    generator = torch.Generator().manual_seed(args.seed)
    images = pipe(prompt, num_images_per_prompt=args.num_images, generator=generator, **kwargs).images
    if args.upscale > 1:
        images = [im.resize((im.width * args.upscale, im.height * args.upscale), 0) for im in images]
    image = images[0] if len(images) == 1 else make_image_grid(images, rows=1, cols=len(images))
    image.save(args.output)
    print(f"saved {args.output} ({image.width}x{image.height}) for {prompt!r} with {path}")
    return 0


def _add_grid(subparsers) -> None:
    from .grids import DEFAULT_GRID_PROMPTS

    p = subparsers.add_parser(
        "grid", help="a labelled picture grid of a checkpoint: one row per prompt, one column per sample"
    )
    p.add_argument(
        "--output",
        required=True,
        help="the PNG to write (missing parent folders are created, as save_pretrained does)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="a row's prompt (repeat the flag for more rows); default: six shapes prompts, the last two with "
        f"held-out colour-shape pairs: {' | '.join(DEFAULT_GRID_PROMPTS)}",
    )
    p.add_argument("--num-images-per-prompt", type=int, default=4, help="columns (>= 1)")
    p.add_argument(
        "--upscale",
        type=int,
        default=2,
        help=f"tile size = N x the model's resolution (nearest), at most {MAX_UPSCALE}",
    )
    p.add_argument("--no-labels", action="store_true", help="leave out the prompt column")
    _add_sampling_arguments(p)
    p.set_defaults(func=_run_grid)


def _run_grid(args) -> int:
    from .grids import DEFAULT_GRID_PROMPTS, draw_prompt_grid

    _check_sampling_arguments(args, "--num-images-per-prompt", args.num_images_per_prompt)
    pipe, path, kwargs = _load_for_sampling(args)
    prompts = args.prompt or DEFAULT_GRID_PROMPTS
    pipe.check_batch_size(len(prompts), args.num_images_per_prompt, "--num-images-per-prompt")
    pipe.set_progress_bar_config(disable=True)
    grid = draw_prompt_grid(
        pipe,
        prompts,
        num_images_per_prompt=args.num_images_per_prompt,
        seed=args.seed,
        upscale=args.upscale,
        labels=not args.no_labels,
        **kwargs,
    )
    grid.save(args.output, optimize=True)
    print(f"saved {args.output} ({grid.width}x{grid.height}) with {path}")
    return 0


def _add_data(subparsers) -> None:
    p = subparsers.add_parser("data", help="build a dataset (installs what it needs, e.g. the emoji npm packages)")
    p.add_argument("name", choices=["shapes", "emoji", "fashion_mnist", "imagefolder"])
    p.add_argument("--output", default=None, help="save the dataset here (datasets.save_to_disk)")
    p.add_argument("--num-samples", type=int, default=1000, help="shapes only")
    p.add_argument("--split", default="train", help="shapes: train|validation|test; fashion_mnist: train|test")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--cache-dir", default=None, help="emoji: where the npm packages go (default $HF_T2I_CACHE)")
    p.add_argument("--path", default=None, help="imagefolder: the folder with metadata.jsonl")
    p.set_defaults(func=_run_data)


def _run_data(args) -> int:
    from . import data

    if args.name == "shapes":
        dataset = data.build_shapes_dataset(args.num_samples, args.split, args.image_size)
    elif args.name == "emoji":
        dataset = data.build_emoji_dataset(args.cache_dir, image_size=args.image_size)
    elif args.name == "fashion_mnist":
        dataset = data.build_fashion_mnist_dataset(args.split, image_size=args.image_size)
    else:
        if not args.path:
            raise ValueError("`--path` is required for imagefolder: the folder with images and metadata.jsonl.")
        dataset = data.build_imagefolder_dataset(args.path)
    print(dataset)
    print("first captions:", dataset["text"][:3])
    if args.output:
        dataset.save_to_disk(args.output)
        print(f"saved to {args.output}")
    return 0


def _add_study(subparsers) -> None:
    from .training.cli import add_dataclass_arguments
    from .training.study import StudyConfig

    p = subparsers.add_parser(
        "study", help="Fluid's 2x2 study: continuous/discrete x random/raster at equal compute, metrics side by side"
    )
    p.set_defaults(func=_run_study, study_fields=add_dataclass_arguments(p, StudyConfig, title="study"))


def _run_study(args) -> int:
    from .training.study import StudyConfig, run_study

    run_study(StudyConfig(**{name: getattr(args, name) for name in args.study_fields}))
    return 0


def _add_export(subparsers) -> None:
    p = subparsers.add_parser("export", help="copy a trained pipeline folder as a small shippable checkpoint")
    p.add_argument("source", help="a saved pipeline folder (a recipe's final/ export)")
    p.add_argument("destination", help="the folder to write")
    p.add_argument(
        "--model-card",
        default=None,
        help="a markdown file copied in as README.md (its metadata completed); default: the source's README.md, or "
        "a new card",
    )
    p.add_argument(
        "--eval-report",
        default=None,
        help="the report.json of `hf-t2i eval` whose FID and compositional accuracy go into the card's model-index "
        "(default: the source's report.json, if any)",
    )
    p.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    p.add_argument(
        "--default-guidance-scale",
        type=float,
        default=None,
        help="the guidance scale the card's numbers were measured at, written to model_index.json: the folder's "
        "pipeline (and generate / eval) use it unless told otherwise (default: keep the source's, if any)",
    )
    p.add_argument(
        "--default-guidance-interval",
        type=_guidance_interval,
        default=None,
        metavar="START,STOP",
        help="the guidance interval the card's numbers were measured at (the fractions of the denoising steps that are "
        "guided, e.g. 0.2,1), written to model_index.json like --default-guidance-scale (Transfusion, continuous "
        "Fluid; default: keep the source's, if any)",
    )
    p.add_argument(
        "--default-temperature",
        type=float,
        default=None,
        help="DALL-E and Parti: the sampling temperature the card's numbers were measured at, written to the prior's "
        "generation_config.json: the pipeline, `sample_image_tokens` and stock `generate()` use it unless told "
        "otherwise (default: keep the source's)",
    )
    p.add_argument(
        "--rerank-scorer",
        default=None,
        help="a `clip_scorer` folder stored in the export as the pipeline's reranking scorer (DALL-E's reranking, "
        "any family), so that `--num-candidates N` / `pipe(prompt, num_candidates=N)` keep the best of N without "
        "naming one",
    )
    p.add_argument(
        "--image-tokenizer",
        default=None,
        help="an image tokenizer folder that replaces the one nested in the prior: a decoder-only fine-tune of it "
        "(`hf-t2i train vit_vqgan|dalle_dvae --no-train-encoder`), checked to encode alike, so the prior's tokens "
        "decode through the new decoder",
    )
    p.add_argument(
        "--upsampler",
        default=None,
        help="a `vit_vqgan_upsampler` folder trained on the prior's tokenizer, stored as Parti's 2x super-resolution "
        "stage (`--super-resolution` / `pipe(prompt, super_resolution=True)`), checked to decode the prior's tokens",
    )
    p.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        default=None,
        help="then upload the exported folder with its card to this Hub model repository (created when missing)",
    )
    p.set_defaults(func=_run_export)


def _guidance_interval(text: str):
    """`--guidance-interval` / `--default-guidance-interval` values (the parser imports torch, so it loads late)."""
    from .generation.guidance import guidance_interval_argument

    return guidance_interval_argument(text)


def _run_export(args) -> int:
    import os

    import torch

    from .export import export_checkpoint

    if args.push_to_hub is not None:
        from .hub import check_repo_id

        check_repo_id(args.push_to_hub, "--push-to-hub")  # before the export, not after it
    path = export_checkpoint(
        args.source,
        args.destination,
        args.model_card,
        getattr(torch, args.dtype),
        eval_report=args.eval_report,
        default_guidance_scale=args.default_guidance_scale,
        default_guidance_interval=args.default_guidance_interval,
        default_temperature=args.default_temperature,
        rerank_scorer=args.rerank_scorer,
        image_tokenizer=args.image_tokenizer,
        upsampler=args.upsampler,
    )
    print(f"exported {args.source} to {path} ({args.dtype})")
    if args.push_to_hub is not None:
        from .hub import push_folder_to_hub

        commit = push_folder_to_hub(path, args.push_to_hub, commit_message=f"Upload {os.path.basename(path)}")
        print(f"pushed {path} to {commit.commit_url}")
    return 0


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="serve the Gradio app (the Hugging Face Space) that draws a prompt with every checkpoint side by side",
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="a shipped checkpoint name or a saved pipeline folder (repeat the flag for more; default: every shipped "
        "checkpoint)",
    )
    p.add_argument(
        "--host",
        default=None,
        help="the address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1; 0.0.0.0 for every interface)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="the port (default: $GRADIO_SERVER_PORT or 7860, else the next free one)",
    )
    p.add_argument("--share", action="store_true", help="also serve the app through a temporary public share link")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda if available)")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    import os

    from .checkpoints import SHIPPED_CHECKPOINTS

    if args.port is not None and not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}.")
    for model in args.model or ():
        # a Hub id has one "/"; anything else must be a shipped name or a folder here
        if model not in SHIPPED_CHECKPOINTS and not os.path.isdir(model) and model.count("/") != 1:
            raise ValueError(
                f"--model {model!r} is neither a shipped checkpoint ({', '.join(SHIPPED_CHECKPOINTS)}) nor a folder."
            )
    from .demo import DemoModels, build_demo

    demo = build_demo(DemoModels(args.model, device=args.device))
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-t2i", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_generate(subparsers)
    _add_grid(subparsers)
    _add_data(subparsers)
    from .training.cli import add_train_subparser

    add_train_subparser(subparsers)
    from .evaluation.cli import add_eval_subparser

    add_eval_subparser(subparsers)
    _add_study(subparsers)
    _add_export(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
