"""Small image helpers shared by the dataset builders."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image


def encode_png(image: Image.Image) -> dict:
    """Encode a PIL image as a `datasets.Image` cell ({"bytes", "path"}); level 1 is ~5x faster than the default
    and lossless all the same."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return {"bytes": buffer.getvalue(), "path": None}


def flatten_on_white(image: Image.Image) -> Image.Image:
    """RGB copy of `image` with any transparency composited onto a white background."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def default_cache_dir() -> Path:
    """`$HF_T2I_CACHE` when set, else `~/.cache/hf_t2i`: where downloaded data packages live (never the repo)."""
    return Path(os.environ.get("HF_T2I_CACHE") or Path.home() / ".cache" / "hf_t2i").expanduser()
