"""Picture grids of a pipeline: one row per prompt (labelled), one column per seeded sample, for READMEs and model
cards (`hf-t2i grid`).

    hf-t2i grid --model dalle --output src/hf_t2i/shipped/dalle-shapes/samples.png
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont


# The shapes world's tasks, in-distribution first, then two held-out colour-shape pairs (never seen in training).
DEFAULT_GRID_PROMPTS = (
    "a red circle",
    "two orange squares",
    "a purple diamond and a green triangle",
    "a red square left of a blue square",
    "a green circle",
    "a blue diamond below a purple triangle",
)
LABEL_WIDTH = 250  # pixels of the label column
GAP = 2  # pixels between tiles


def draw_prompt_grid(
    pipe,
    prompts: Sequence[str] = DEFAULT_GRID_PROMPTS,
    num_images_per_prompt: int = 4,
    seed: int = 0,
    upscale: int = 2,
    labels: bool = True,
    **pipeline_kwargs,
) -> Image.Image:
    """A grid of `pipe`'s images: row i holds `num_images_per_prompt` samples of `prompts[i]`, all drawn in one call
    from a generator seeded with `seed`, each upscaled `upscale` times (nearest), with the prompt written on the left.

    Args:
        pipe: a text-to-image pipeline (`pipe(prompts, num_images_per_prompt=, generator=, output_type="pil")`).
        pipeline_kwargs: passed to the pipeline (e.g. `guidance_scale`).
    """
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"`prompts` must be a non-empty list of non-empty strings, got {prompts!r}.")
    for name, value in (("num_images_per_prompt", num_images_per_prompt), ("upscale", upscale)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    generator = torch.Generator().manual_seed(seed)
    images = pipe(
        list(prompts),
        num_images_per_prompt=num_images_per_prompt,
        generator=generator,
        output_type="pil",
        **pipeline_kwargs,
    ).images
    side = images[0].width * upscale
    left = LABEL_WIDTH if labels else 0
    columns = num_images_per_prompt
    height = len(prompts) * (side + GAP) + GAP
    grid = Image.new("RGB", (left + columns * (side + GAP) + GAP, height), (190, 190, 190))  # grey frames the tiles
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    if left:
        draw.rectangle((0, 0, left - 1, height - 1), fill=(255, 255, 255))
    for row, prompt in enumerate(prompts):
        top = GAP + row * (side + GAP)
        if labels:
            lines = _wrapped(prompt, draw, font, left - 8)
            line_height = 12
            first = top + side // 2 - len(lines) * line_height // 2
            for index, line in enumerate(lines):
                draw.text((4, first + index * line_height), line, fill=(0, 0, 0), font=font)
        for column in range(columns):
            image = images[row * columns + column].convert("RGB").resize((side, side), Image.NEAREST)
            grid.paste(image, (left + GAP + column * (side + GAP), top))
    return grid


def _wrapped(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` pixels (a single longer word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [text]


__all__ = ["DEFAULT_GRID_PROMPTS", "draw_prompt_grid"]
