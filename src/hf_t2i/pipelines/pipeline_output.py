"""Outputs of the hf_t2i pipelines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class T2IPipelineOutput(BaseOutput):
    """Output of the text-to-image pipelines.

    Args:
        images: a list of PIL images, a (B, H, W, C) array or a (B, C, H, W) tensor in [0, 1], as `output_type` asks;
            with `output_type="latent"`, the image tokens / latents before decoding (each pipeline documents their
            shape).
        scores: (B,) reranker scores of the returned images, when a scorer reranked the candidates.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    scores: torch.Tensor | None = None
