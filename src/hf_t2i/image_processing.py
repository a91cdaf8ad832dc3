"""The image processor shared by every model: resize the short side, centre-crop to a square, RGB, scale to [-1, 1].

Built on transformers' PIL backend (no torchvision needed). `postprocess` turns model pixels back into PIL / numpy /
torch images, the way diffusers' `VaeImageProcessor` does, so pipelines share one `output_type` implementation.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling

from .configuration_utils import check_choice


OUTPUT_TYPES = ("pil", "np", "pt")


class T2IImageProcessor(PilBackend):
    """Prepares training / conditioning images: `pixel_values` (B, 3, S, S) in [-1, 1].

    Args:
        image_size: side S of the square output (sets `size` and `crop_size`).
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {"shortest_edge": 64}
    crop_size = {"height": 64, "width": 64}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def __init__(self, image_size: int | None = None, **kwargs):
        if image_size is not None:
            if not isinstance(image_size, int) or image_size < 1:
                raise ValueError(f"`image_size` must be a positive int, got {image_size!r}.")
            kwargs.setdefault("size", {"shortest_edge": image_size})
            kwargs.setdefault("crop_size", {"height": image_size, "width": image_size})
        super().__init__(**kwargs)

    @property
    def image_size(self) -> int:
        return self.crop_size["height"]

    @staticmethod
    def postprocess(pixel_values: torch.Tensor, output_type: str = "pil"):
        """(B, C, H, W) in [-1, 1] -> a list of PIL images, a (B, H, W, C) float array in [0, 1], or the tensor
        mapped to [0, 1].

        All three come from one float32 copy, whatever the pipeline's dtype: "pt" images are float32 even from a
        bfloat16 / float16 pipeline (diffusers' `VaeImageProcessor` returns "pt" in the VAE's dtype and only "np" in
        float32), so that "np" and "pil" are exactly "pt"'s values."""
        check_choice("output_type", output_type, OUTPUT_TYPES)
        images = ((pixel_values.detach().float() + 1) / 2).clamp(0, 1)
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return array
        return [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]


__all__ = ["OUTPUT_TYPES", "T2IImageProcessor"]
