"""`evaluate_pipeline`: generate images for a dataset's held-out captions and compute every metric that applies.

    report = evaluate_pipeline("dalle", "shapes", num_images=64, scorer_path="runs/clip/final", output_dir="eval")

Captions (`load_eval_split`, `split=` one of `EVAL_SPLITS`, default "test"):
- "test" (report on it): `shapes` -> its "test" split, whose every caption holds a colour-shape pair kept out of
  training (GenEval-style); `emoji` -> the concepts `split_by_concept` holds out; `fashion_mnist` -> its test file;
  `imagefolder` -> the seeded split training holds out.
- "validation" (choose settings such as guidance on it): `shapes` only (`VALIDATION_DATASETS`) -> its "validation"
  split, in-distribution captions with no held-out pair (the split whose losses training reports, see
  `load_image_text_splits`). The other datasets have no validation split apart from the held-out one above, so they
  raise a `ValueError`.
One image is generated per caption, in batches, from one generator seeded with `seed` (the images depend on
`batch_size` as well).

Metrics (`METRICS`):
- "fid": FID between the generated images and the split's real images at the model's resolution (`fid.py`); the
  real side is cached on disk. About 0.12-0.7 s per image on 2 CPU cores for each side: keep `num_images` small on a
  CPU, and compare FIDs only at equal `num_images` (small sets bias FID upwards).
- "compositional": GenEval-style accuracy per task with the exact shapes detector (`shapes` only).
- "clip": CLIP score (100 x mean cosine, clipped at 0) and mean cosine of the generated images with their captions
  under a trained scorer (`scorer_path`), with the real images' values as the reference.
- "retrieval": the scorer's own text <-> image recall@1/5 on the split's real pairs (a check of the scorer).

During training, call `evaluate_for_training` from `Recipe.evaluate`; it returns flat floats for the logger.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import os
import platform
import time
from collections.abc import Sequence

import torch
from PIL import Image


METRICS = ("fid", "compositional", "clip", "retrieval")
DATASETS = ("shapes", "emoji", "fashion_mnist", "imagefolder")
GRID_IMAGES = 16
GRID_TILE = 128  # grid tiles are upscaled (nearest) to at least this many pixels
EVAL_SPLIT = "test"  # the default: every dataset's held-out split is called "test" (see `load_eval_split`)
# "validation": in-distribution captions, for choosing settings (guidance, ...) without looking at "test".
EVAL_SPLITS = ("test", "validation")
VALIDATION_DATASETS = ("shapes",)  # the datasets with a validation split apart from their held-out test split


# ------------------------------------------------------------------------------------------------------- data
def check_eval_split(split: str, dataset_name: str) -> None:
    """Raise a `ValueError` naming `split` unless it is one of `EVAL_SPLITS` and `dataset_name` has it."""
    if split not in EVAL_SPLITS:
        raise ValueError(
            f"`split` (--split) must be one of {list(EVAL_SPLITS)}, got {split!r}: 'validation' (in-distribution "
            "captions) to choose settings such as guidance, 'test' (held-out captions) to report."
        )
    if split == "validation" and dataset_name in DATASETS and dataset_name not in VALIDATION_DATASETS:
        raise ValueError(
            f"`split` (--split) {split!r} is not available for dataset {dataset_name!r}: its only held-out split is "
            f"'test' (the one training evaluates on). 'validation' is supported for {list(VALIDATION_DATASETS)}; "
            f"pass split='test' (--split test) for {dataset_name!r}."
        )


def load_eval_split(
    dataset_name: str,
    num_images: int,
    image_size: int,
    data_dir: str | None = None,
    data_seed: int = 0,
    split: str = EVAL_SPLIT,
):
    """The first `num_images` pairs of `dataset_name`'s `split` (columns image, text; `shapes` also spec, task).

    Args:
        dataset_name: one of `DATASETS`.
        num_images: number of pairs; a `ValueError` names it when the split is smaller.
        image_size: resolution of the images (shapes are rendered at max(image_size, 32)).
        data_dir: the emoji npm cache folder or the imagefolder path.
        data_seed: seed of generation / splitting, as in training (`--data-seed`).
        split: "test" (held-out captions, to report on) or "validation" (`shapes` only: in-distribution captions
            without a held-out pair, to choose settings such as guidance on); see the module docstring.
    """
    from .. import data

    if dataset_name not in DATASETS:
        raise ValueError(f"`dataset_name` must be one of {list(DATASETS)}, got {dataset_name!r}.")
    check_eval_split(split, dataset_name)
    if dataset_name == "shapes":
        from ..data.shapes import MIN_IMAGE_SIZE

        return data.build_shapes_dataset(num_images, split, max(image_size, MIN_IMAGE_SIZE), seed=data_seed)
    # the other datasets: "test" only (`check_eval_split`)
    if dataset_name == "emoji":
        rows = data.split_by_concept(data.build_emoji_dataset(data_dir, image_size=image_size), seed=data_seed)
        rows = rows["test"]
    elif dataset_name == "fashion_mnist":
        rows = data.build_fashion_mnist_dataset("test", image_size=image_size, num_samples=num_images)
    else:  # imagefolder
        if not data_dir:
            raise ValueError("`data_dir` is required with dataset='imagefolder': the folder with metadata.jsonl.")
        rows = data.build_imagefolder_dataset(data_dir).train_test_split(test_size=num_images, seed=data_seed)
        rows = rows["test"]
    if len(rows) < num_images:
        raise ValueError(
            f"`num_images`={num_images} but the held-out {dataset_name} split has only {len(rows)} pairs; "
            f"pass --num-images {len(rows)} or fewer."
        )
    return rows.select(range(num_images))


def _resized(images: list, size: int) -> list:
    """Images at `size` x `size` (short side resize + centre crop, as training preprocesses them)."""
    if all(image.size == (size, size) for image in images):
        return [image.convert("RGB") for image in images]
    from ..image_processing import T2IImageProcessor

    processor = T2IImageProcessor(image_size=size)
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    return T2IImageProcessor.postprocess(pixels, "pil")


def _dataset_tag(dataset_name: str, data_dir: str | None) -> str:
    """Cache-file prefix: the dataset name, plus a hash of its folder when it comes from one."""
    if not data_dir:
        return dataset_name
    digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:8]
    return f"{dataset_name}_{digest}"


# ------------------------------------------------------------------------------------------------ validation
def resolve_metrics(metrics: str | Sequence[str] | None, dataset_name: str, has_scorer: bool) -> list[str]:
    """The metrics to compute: the given ones (checked), or all that apply (fid; compositional on shapes; clip with
    a scorer)."""
    if metrics is None:
        return ["fid"] + (["compositional"] if dataset_name == "shapes" else []) + (["clip"] if has_scorer else [])
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"`metrics` must be a non-empty subset of {list(METRICS)}, got {metrics!r}.")
    if "compositional" in metrics and dataset_name != "shapes":
        raise ValueError(f"`metrics` includes 'compositional', which needs dataset 'shapes', not {dataset_name!r}.")
    needs_scorer = [m for m in metrics if m in ("clip", "retrieval")]
    if needs_scorer and not has_scorer:
        raise ValueError(f"`metrics` {needs_scorer} need a scorer: pass `scorer_path` (a trained clip_scorer folder).")
    return metrics


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _load_pipeline(model, device=None):
    """A pipeline object, or a shipped checkpoint name / saved folder to load it from (onto `device`)."""
    if not isinstance(model, (str, os.PathLike)):
        if not callable(model):
            raise TypeError(f"`pipe` must be a pipeline or a path / checkpoint name, got {type(model).__name__}.")
        return model, None
    from ..checkpoints import resolve_checkpoint
    from ..pipelines import T2IPipeline

    path = resolve_checkpoint(model)
    if not os.path.isdir(path):
        raise ValueError(
            f"`pipe` (--model) {os.fspath(model)!r} is neither a shipped checkpoint name nor an existing folder; "
            "pass a saved pipeline folder."
        )
    pipe = T2IPipeline.from_pretrained(path)
    return (pipe.to(device) if device is not None else pipe), path


def _pipeline_image_size(pipe) -> int | None:
    processor = getattr(getattr(pipe, "processor", None), "image_processor", None)
    return getattr(processor, "image_size", None)


# ------------------------------------------------------------------------------------------------ generation
def generate_images(
    pipe,
    prompts: Sequence[str],
    batch_size: int = 16,
    seed: int = 0,
    guidance_scale: float | None = None,
    progress: bool = True,
    **pipeline_kwargs,
) -> list:
    """One PIL image per prompt, `batch_size` prompts per pipeline call, all drawn from one generator seeded with
    `seed`. Prompts longer than the model's text context are truncated when the pipeline supports it."""
    from tqdm.auto import tqdm

    accepted = inspect.signature(pipe.__call__).parameters
    unknown = [name for name in pipeline_kwargs if name not in accepted]
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise ValueError(
            f"`pipeline_kwargs` {unknown} are not arguments of {type(pipe).__name__}.__call__ (on the command line: "
            f"{flags}); leave them out for this pipeline."
        )
    kwargs = dict(pipeline_kwargs)
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    if "truncation" in accepted:
        kwargs.setdefault("truncation", True)
    generator = torch.Generator().manual_seed(seed)
    previous = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # one bar over all images instead of one per call
    images: list = []
    try:
        with tqdm(total=len(prompts), desc="generate", unit="img", disable=not progress) as bar:
            for start in range(0, len(prompts), batch_size):
                batch = list(prompts[start : start + batch_size])
                out = pipe(batch, num_images_per_prompt=1, generator=generator, output_type="pil", **kwargs)
                images.extend(out.images)
                bar.update(len(batch))
    finally:
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(**previous)
    return images


def save_image_grid(images: list, path: str, cols: int = 4, tile: int = GRID_TILE) -> Image.Image:
    """Save the first `cols * cols` images as a grid PNG, each upscaled (nearest) to at least `tile` pixels."""
    images = [image.convert("RGB") for image in images[: cols * cols]]
    side = images[0].width
    scale = max(1, math.ceil(tile / side))
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * side * scale, rows * side * scale), (255, 255, 255))
    for i, image in enumerate(images):
        tile_image = image.resize((side * scale, side * scale), Image.NEAREST)
        grid.paste(tile_image, ((i % cols) * side * scale, (i // cols) * side * scale))
    grid.save(path)
    return grid


# --------------------------------------------------------------------------------------------------- reports
def _sampling_settings(pipe, pipeline_kwargs: dict) -> dict | None:
    """The token-sampling settings the run used, the call's own or, where it left one out, the checkpoint's
    (generation_config.json, e.g. a temperature its card chose); None for a pipeline whose model has no such settings."""
    from ..generation.config import SAMPLING_SETTINGS
    from ..generation.stock_generate import ImageGenerationMixin

    model = getattr(pipe, "model", None)
    if not isinstance(model, ImageGenerationMixin):
        return None
    sampling = model.image_sampling_config(**{name: pipeline_kwargs.get(name) for name in SAMPLING_SETTINGS})
    return {name: getattr(sampling, name) for name in SAMPLING_SETTINGS}


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    from .. import __version__

    versions = {
        "hf_t2i": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
    }
    try:
        import torchmetrics

        versions["torchmetrics"] = torchmetrics.__version__
    except ImportError:
        pass
    return versions


def _machine(device) -> dict:
    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested report metrics -> {"fid": ..., "compositional/overall": ..., "compositional/per_task/position": ...}
    with numbers only (what a training logger takes)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


# ----------------------------------------------------------------------------------------------------- entry
def evaluate_pipeline(
    pipe,
    dataset_name: str,
    num_images: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    scorer_path: str | None = None,
    output_dir: str | None = None,
    guidance_scale: float | None = None,
    metrics: str | Sequence[str] | None = None,
    data_dir: str | None = None,
    data_seed: int = 0,
    fid_cache_dir: str | None = None,
    fid_feature_extractor: torch.nn.Module | None = None,
    scorer=None,
    scorer_processor=None,
    device: str | torch.device | None = None,
    progress: bool = True,
    split: str = EVAL_SPLIT,
    num_candidates: int | None = None,
    rerank_scorer_path: str | None = None,
    **pipeline_kwargs,
) -> dict:
    """Generate `num_images` images for the captions of `dataset_name`'s `split` and compute the metrics.

    Args:
        pipe: a text-to-image pipeline (`pipe(prompts, num_images_per_prompt=, generator=, output_type="pil")`), or
            a shipped checkpoint name / saved pipeline folder.
        dataset_name: one of `DATASETS`.
        num_images: images (= captions of `split`) to generate; FID costs ~0.12-0.7 s per image per side on a CPU.
        batch_size: prompts per pipeline call.
        seed: seed of the one generator all images are drawn from.
        scorer_path: a `clip_scorer` folder, for "clip" and "retrieval" (or pass `scorer` + `scorer_processor`).
        output_dir: where `report.json` and `grid.png` go (None: write nothing).
        guidance_scale: passed to the pipeline; default: the pipeline's (the checkpoint's `default_guidance_scale`),
            which the report records.
        metrics: a subset of `METRICS` (list or comma-separated); None: all that apply.
        data_dir: emoji npm cache folder / imagefolder path.
        data_seed: dataset seed, as in training.
        fid_cache_dir: where reference statistics are cached (default `$HF_T2I_CACHE/fid`).
        fid_feature_extractor: FID feature network (default the standard Inception-v3).
        scorer, scorer_processor: an already loaded scorer, instead of `scorer_path`.
        device: where a pipeline loaded from a path goes (a given pipeline object is used where it is); the FID
            network and the scorer run on the pipeline's device.
        progress: show progress bars.
        split: "test" (default: held-out captions, to report on) or "validation" (`shapes` only: in-distribution
            captions, to choose settings such as `guidance_scale` on); recorded as `settings["split"]`, and the FID
            reference of each split is cached in its own file.
        num_candidates: best-of-N (DALL-E section 2.6): draw this many images per caption and keep the one the
            reranking scorer ranks first. Needs a pipeline with a `num_candidates` argument (every hf_t2i one) and
            `rerank_scorer_path` (or a pipeline that already holds a scorer). None: one draw per caption.
        rerank_scorer_path: a `clip_scorer` folder used only to rerank; it is attached to the pipeline for this
            evaluation and detached afterwards. Use another scorer than `scorer_path` when the "clip" metric
            matters: a metric computed by the reranker itself is biased upwards.
        **pipeline_kwargs: other pipeline arguments (e.g. `temperature`, `top_k`).

    Returns:
        The report: {"metrics", "settings", "timings", "versions", "machine", "files", "grid_captions"}.
    """
    start_time = time.perf_counter()
    if dataset_name not in DATASETS:
        raise ValueError(f"`dataset_name` must be one of {list(DATASETS)}, got {dataset_name!r}.")
    check_eval_split(split, dataset_name)
    _check_positive_int("num_images", num_images)
    _check_positive_int("batch_size", batch_size)
    if guidance_scale is not None and (not isinstance(guidance_scale, (int, float)) or guidance_scale < 0):
        raise ValueError(f"`guidance_scale` must be a number >= 0 or None, got {guidance_scale!r}.")
    has_scorer = scorer_path is not None or scorer is not None
    chosen = resolve_metrics(metrics, dataset_name, has_scorer)
    if "fid" in chosen and num_images < 2:
        raise ValueError(f"`num_images` must be >= 2 for FID (got {num_images}); or leave 'fid' out of `metrics`.")
    if scorer_path is not None:
        from .clip_score import load_scorer

        scorer, scorer_processor = load_scorer(scorer_path)
    pipe, model_path = _load_pipeline(pipe, device)
    if guidance_scale is None and hasattr(pipe, "guidance_scale_or_default"):
        guidance_scale = pipe.guidance_scale_or_default(None)  # the checkpoint's own, recorded in the report
    accepted = inspect.signature(pipe.__call__).parameters
    if "guidance_interval" in accepted:
        # the call's or the checkpoint's own, recorded in the report
        pipeline_kwargs["guidance_interval"] = pipe.guidance_interval_or_default(
            pipeline_kwargs.get("guidance_interval")
        )
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None) or torch.device("cpu")
    if scorer is not None:
        scorer.to(device)
    if num_candidates is not None:
        _check_positive_int("num_candidates", num_candidates)
        if "num_candidates" not in accepted:
            raise ValueError(
                f"`num_candidates` ({num_candidates}) reranks candidates, but {type(pipe).__name__} cannot (its "
                "call has no `num_candidates`): use an hf_t2i pipeline, or leave `num_candidates` (--num-candidates) "
                "unset."
            )
        if rerank_scorer_path is None and getattr(pipe, "scorer", None) is None:
            raise ValueError(
                f"`num_candidates` ({num_candidates}) needs a scorer to rerank with: pass `rerank_scorer_path` "
                "(--rerank-scorer), a `clip_scorer` folder (`hf-t2i train clip_scorer --output-dir DIR`, then DIR/final)."
            )
        pipeline_kwargs["num_candidates"] = num_candidates

    image_size = _pipeline_image_size(pipe)
    rows = load_eval_split(dataset_name, num_images, image_size or 64, data_dir, data_seed, split=split)
    prompts = list(rows["text"])
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    with _rerank_scorer_attached(pipe, rerank_scorer_path if num_candidates is not None else None, device):
        images = generate_images(pipe, prompts, batch_size, seed, guidance_scale, progress, **pipeline_kwargs)
    timings["generation_s"] = time.perf_counter() - tick
    timings["generation_s_per_image"] = timings["generation_s"] / num_images
    image_size = images[0].width
    if dataset_name == "shapes" and rows[0]["image"].width != image_size:
        # drawn at another size than the processor's (Parti's super-resolution): the same scenes and captions,
        # rendered at that size rather than resized
        rows = load_eval_split(dataset_name, num_images, image_size, data_dir, data_seed, split=split)
    real_images = _resized(list(rows["image"]), image_size)

    results: dict = {}
    if "fid" in chosen:
        results["fid"], fid_timings = _fid(
            real_images,
            images,
            _dataset_tag(dataset_name, data_dir),
            split,
            data_seed,
            batch_size,
            fid_cache_dir,
            fid_feature_extractor,
            device,
            progress,
        )
        timings.update(fid_timings)
    if "compositional" in chosen:
        from .compositional import compositional_accuracy

        tick = time.perf_counter()
        accuracy = compositional_accuracy(images, rows["spec"])
        accuracy.pop("correct")
        results["compositional"] = accuracy
        timings["compositional_s"] = time.perf_counter() - tick
    if "clip" in chosen or "retrieval" in chosen:
        from .clip_score import pair_cosines, retrieval_recall

        scorer.eval()
        tick = time.perf_counter()
        if "clip" in chosen:
            # CLIP score = 100 x mean cosine clipped at 0 (torchmetrics); the raw mean cosine is kept as well, since
            # a weak model's negative mean would all read 0.
            for name, pictures in (("", images), ("_real_images", real_images)):
                cosine = pair_cosines(scorer, scorer_processor, prompts, pictures).mean().item()
                results[f"clip_score{name}"] = max(0.0, 100 * cosine)
                results[f"clip_cosine{name}"] = cosine
        if "retrieval" in chosen:
            results["retrieval_real_images"] = retrieval_recall(scorer, scorer_processor, prompts, real_images)
        timings["clip_s"] = time.perf_counter() - tick

    timings["total_s"] = time.perf_counter() - start_time
    report = {
        "metrics": results,
        "settings": {
            "model": os.fspath(model_path) if model_path else type(pipe).__name__,
            "pipeline": type(pipe).__name__,
            "dataset": dataset_name,
            "split": split,
            "data_seed": data_seed,
            "num_images": num_images,
            "batch_size": batch_size,
            "seed": seed,
            "guidance_scale": guidance_scale,
            "image_size": image_size,
            "metrics": chosen,
            "scorer": os.fspath(scorer_path) if scorer_path else (type(scorer).__name__ if scorer else None),
            "num_candidates": num_candidates,
            "rerank_scorer": os.fspath(rerank_scorer_path) if rerank_scorer_path else None,
            "pipeline_kwargs": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in pipeline_kwargs.items()
                if isinstance(v, (int, float, str, bool, tuple))
            },
            "sampling": _sampling_settings(pipe, pipeline_kwargs),
        },
        "timings": timings,
        "versions": _versions(),
        "machine": _machine(device),
        "files": {},
        "grid_captions": prompts[:GRID_IMAGES],
    }
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        save_image_grid(images, os.path.join(output_dir, "grid.png"))
        report["files"] = {"report": "report.json", "grid": "grid.png"}
        from ..modeling_utils import write_json_atomically

        write_json_atomically(os.path.join(output_dir, "report.json"), report)
    return report


@contextlib.contextmanager
def _rerank_scorer_attached(pipe, path, device):
    """Attach the scorer folder `path` to `pipe` as its reranker for the duration of the block (None: leave `pipe`
    as it is), then restore the pipeline's own components."""
    if path is None:
        yield
        return
    from .clip_score import load_scorer

    before = (getattr(pipe, "scorer", None), getattr(pipe, "scorer_processor", None))
    scorer, processor = load_scorer(path, device, argument="rerank_scorer_path")
    pipe.scorer, pipe.scorer_processor = scorer, processor
    try:
        yield
    finally:
        pipe.scorer, pipe.scorer_processor = before


def _fid(real_images, images, tag, split, data_seed, batch_size, cache_dir, feature_extractor, device, progress):
    """FID of `images` against `real_images` with the reference cached under `tag` and `split` (each split has its
    own file); returns (fid, timings)."""
    from .fid import add_reference_images, build_fid_metric, fid_cache_path, fid_score, update_fid

    tick = time.perf_counter()
    metric = build_fid_metric(feature_extractor).to(device)
    size = images[0].width
    cache = fid_cache_path(tag, split, len(real_images), size, data_seed, cache_dir)
    cached = add_reference_images(metric, real_images, cache, batch_size, progress)
    reference_s = time.perf_counter() - tick
    tick = time.perf_counter()
    update_fid(metric, images, real=False, batch_size=batch_size, progress=progress)
    fid = fid_score(metric)
    generated_s = time.perf_counter() - tick
    return fid, {
        "fid_reference_s": reference_s,
        "fid_reference_cached": float(cached),
        "fid_generated_s": generated_s,
        "fid_s_per_image": generated_s / len(images),
    }


def evaluate_for_training(
    pipe, dataset_name: str, num_images: int = 16, batch_size: int = 16, seed: int = 0, **kwargs
) -> dict[str, float]:
    """`evaluate_pipeline` without files or progress bars, as flat floats for `Recipe.evaluate` (logged under
    `eval/`, e.g. `eval/compositional/overall`, `eval/fid`). Run it every `TrainingConfig.eval_steps` steps; keep
    `num_images` small (16-64) on a CPU. The FID reference is computed on the first call and cached. Pass
    `split="validation"` (shapes) to select checkpoints or settings on in-distribution captions instead of "test"."""
    kwargs.setdefault("progress", False)
    report = evaluate_pipeline(pipe, dataset_name, num_images=num_images, batch_size=batch_size, seed=seed, **kwargs)
    return flatten_metrics(report["metrics"])


def evaluate_scorer(
    scorer_path: str,
    dataset_name: str,
    num_pairs: int = 256,
    data_dir: str | None = None,
    data_seed: int = 0,
    split: str = EVAL_SPLIT,
) -> dict:
    """Retrieval recall@1/5 both ways and matched-vs-shuffled preference of a trained scorer on the pairs of
    `dataset_name`'s `split` ("test": held-out; "validation": shapes' in-distribution pairs), at the scorer's own
    resolution; on shapes also how often it tells each pair from its contradicting twin (`matched_vs_contradicting`:
    `caption_above_contradicting`, `image_above_contradicting`)."""
    from .. import data
    from .clip_score import load_scorer, scorer_metrics

    if dataset_name not in DATASETS:
        raise ValueError(f"`dataset_name` must be one of {list(DATASETS)}, got {dataset_name!r}.")
    check_eval_split(split, dataset_name)
    _check_positive_int("num_pairs", num_pairs)
    scorer, processor = load_scorer(scorer_path)
    rows = load_eval_split(
        dataset_name, num_pairs, processor.image_processor.image_size, data_dir, data_seed, split=split
    )
    twins = tasks = None
    if dataset_name == "shapes":  # rendered at the rows' own size
        twin_rows = data.build_contradicting_twins(num_pairs, split, rows[0]["image"].width, seed=data_seed)
        twins, tasks = (twin_rows["text"], twin_rows["image"]), rows["task"]
    return scorer_metrics(scorer, processor, rows["text"], rows["image"], twins=twins, tasks=tasks)


__all__ = [
    "DATASETS",
    "EVAL_SPLIT",
    "EVAL_SPLITS",
    "METRICS",
    "VALIDATION_DATASETS",
    "check_eval_split",
    "evaluate_for_training",
    "evaluate_pipeline",
    "evaluate_scorer",
    "flatten_metrics",
    "generate_images",
    "load_eval_split",
    "resolve_metrics",
    "save_image_grid",
]
