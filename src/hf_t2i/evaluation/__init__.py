"""Evaluation: exact shapes detector and GenEval-style compositional accuracy (more metrics: FID, CLIP score)."""

from .compositional import compositional_accuracy, parse_spec, score_sample
from .shapes_detector import DetectedObject, detect_shapes


__all__ = ["DetectedObject", "compositional_accuracy", "detect_shapes", "parse_spec", "score_sample"]
