"""An exact detector for `shapes` scenes: colour by palette, objects by connected components, shape by geometry.

On images rendered by `hf_t2i.data.shapes` every foreground pixel has an exact palette colour and shapes never
touch, so the detector recovers shape, colour, size and bounding-box centre of every object exactly. On generated
(noisy, blurred) images it degrades gracefully:

- Colour: each pixel is explained as a blend of white with one palette colour, `p = white + t * (c - white) + r`.
  The colour with the smallest residual `|r|` wins when the blend weight `t >= min_blend` and `|r| <= color_tolerance`;
  otherwise the pixel is background. A red edge blurred into white is pink, which lies on the white-red line, so it
  stays red instead of being taken for orange (a nearest-colour rule would do that).
- Objects: 8-connected components per colour (`scipy.ndimage.label`), holes filled, specks under `min_area` dropped.
- Shape: fill ratio of the bounding box (square ~1.0, circle ~0.785, triangle and diamond ~0.5) and the vertical
  offset of the centroid inside the box (a triangle pointing up is bottom-heavy, ~+1/6 of its height; a diamond is
  centred). Components that fit no shape (elongated, ragged) are reported with shape "unknown".
- Size: the box side of the shape with the measured area (`sqrt(area / typical fill)`), against the threshold
  between "small" and "large" for that canvas size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..data.shapes import BACKGROUND, PALETTE, SHAPES, SIZE_THRESHOLD_64, draw_shape


UNKNOWN_SHAPE = "unknown"
# Typical fill ratio (area / bounding-box area) of each shape, used to turn an area into a box side.
_TYPICAL_FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5, "diamond": 0.5}
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class DetectedObject:
    """One detected shape.

    Attributes:
        shape: "circle", "square", "triangle", "diamond" or "unknown".
        color: palette colour name (see `hf_t2i.data.shapes.PALETTE`).
        size: "small" or "large".
        x, y: centre of the bounding box in pixels (column, row); equals the ground truth on renders.
        area: number of pixels (holes filled).
    """

    shape: str
    color: str
    size: str
    x: float
    y: float
    area: int


def _to_array(image) -> np.ndarray:
    """PIL image or array -> float32 (H, W, 3) in [0, 255]. Float arrays with max <= 1 are taken as [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if hasattr(image, "detach"):  # a torch tensor, without importing torch here
        image = image.detach().float().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL.Image or a numpy array, got {type(image).__name__}.")
    array = image
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image array must have shape (H, W, 3) or (3, H, W), got {image.shape}.")
    array = array.astype(np.float32)
    if np.issubdtype(image.dtype, np.floating) and array.max(initial=0.0) <= 1.0:
        array = array * 255.0
    return array


def classify_pixels(array: np.ndarray, color_tolerance: float = 80.0, min_blend: float = 0.5) -> np.ndarray:
    """Palette index of every pixel, -1 for background.

    Args:
        array: float (H, W, 3) RGB in [0, 255].
        color_tolerance: largest RGB distance from the white-to-colour line still counted as that colour.
        min_blend: smallest weight of the colour in the white blend (0 = white, 1 = pure colour).

    Returns:
        int (H, W) array indexing `list(PALETTE)`, -1 where the pixel is background.
    """
    white = np.asarray(BACKGROUND, dtype=np.float32)
    directions = np.asarray(list(PALETTE.values()), dtype=np.float32) - white  # (K, 3)
    offsets = array.reshape(-1, 3) - white  # (P, 3)
    blend = offsets @ directions.T / (directions**2).sum(axis=1)  # (P, K)
    blend_clipped = np.clip(blend, 0.0, 1.0)
    residual = offsets[:, None, :] - blend_clipped[..., None] * directions[None]  # (P, K, 3)
    distance = np.sqrt((residual**2).sum(axis=-1))  # (P, K)
    best = distance.argmin(axis=1)
    rows = np.arange(len(best))
    foreground = (blend[rows, best] >= min_blend) & (distance[rows, best] <= color_tolerance)
    return np.where(foreground, best, -1).reshape(array.shape[:2])


def shape_template(shape: str, height: int, width: int) -> np.ndarray:
    """Boolean (height, width) mask of `shape` filling the box, drawn exactly as the dataset draws it."""
    canvas = Image.new("1", (width, height), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, (0, 0, width - 1, height - 1), 1)
    return np.asarray(canvas, dtype=bool)


def classify_shape(mask: np.ndarray, min_iou: float = 0.6) -> str:
    """Shape name of one filled component, given as a boolean (h, w) mask cropped to its bounding box.

    Each shape is drawn into the same box and compared by intersection over union; the best match wins, and
    "unknown" is returned when the box is far from square or no template reaches `min_iou`. On renders the right
    template matches pixel for pixel (IoU 1) and the runner-up stays below 0.8 (circle vs square).
    """
    height, width = mask.shape
    if not 0.6 <= width / height <= 1.67:
        return UNKNOWN_SHAPE
    best, best_iou = UNKNOWN_SHAPE, min_iou
    for shape in SHAPES:
        template = shape_template(shape, height, width)
        iou = (mask & template).sum() / (mask | template).sum()
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def detect_shapes(
    image,
    min_area: int | None = None,
    color_tolerance: float = 80.0,
    min_blend: float = 0.5,
) -> list[DetectedObject]:
    """Detect the coloured shapes in a `shapes`-style image.

    Args:
        image: PIL image, or numpy array / torch tensor (H, W, 3) or (3, H, W); uint8 in [0, 255], or float in
            [0, 1] (or [0, 255] when the maximum exceeds 1).
        min_area: components with fewer pixels are noise. Default: 10 px at 64 px (scaled with the image area),
            a fifth of the smallest rendered shape (a small triangle, ~50 px).
        color_tolerance: see `classify_pixels`; raise it for noisy generated images.
        min_blend: see `classify_pixels`.

    Returns:
        Detected objects sorted top-to-bottom, then left-to-right.
    """
    array = _to_array(image)
    height, width = array.shape[:2]
    scale = min(height, width) / 64
    if min_area is None:
        min_area = max(2, round(10 * scale**2))
    if min_area < 1:
        raise ValueError(f"min_area={min_area} must be >= 1.")
    labels = classify_pixels(array, color_tolerance, min_blend)
    size_threshold = SIZE_THRESHOLD_64 * scale
    names = list(PALETTE)
    detections = []
    for index in np.unique(labels):
        if index < 0:
            continue
        components, _ = ndimage.label(labels == index, structure=_EIGHT_CONNECTED)
        for label, box in enumerate(ndimage.find_objects(components), start=1):
            mask = ndimage.binary_fill_holes(components[box] == label)
            area = int(mask.sum())
            if area < min_area:
                continue
            shape = classify_shape(mask)
            side = np.sqrt(area / _TYPICAL_FILL.get(shape, np.pi / 4))
            detections.append(
                DetectedObject(
                    shape=shape,
                    color=names[index],
                    size="large" if side > size_threshold else "small",
                    x=(box[1].start + box[1].stop - 1) / 2,
                    y=(box[0].start + box[0].stop - 1) / 2,
                    area=area,
                )
            )
    return sorted(detections, key=lambda d: (d.y, d.x))
