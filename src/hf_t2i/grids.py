"""Picture grids of pipelines, for READMEs and model cards: one pipeline's samples, one row per prompt (`hf-t2i
grid`), or several pipelines side by side, one row per pipeline and one column per prompt (`hf-t2i study`'s
`study_samples.png`; its label column as wide as the longest label needs).

    hf-t2i grid --model dalle --output src/hf_t2i/shipped/dalle-shapes/samples.png
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
LINE_HEIGHT = 12  # pixels per line of label text


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
    _check_grid_arguments(prompts, num_images_per_prompt, upscale)
    images = _sample(pipe, prompts, num_images_per_prompt, seed, pipeline_kwargs)
    rows = [images[row * num_images_per_prompt : (row + 1) * num_images_per_prompt] for row in range(len(prompts))]
    return _compose(rows, upscale, row_labels=list(prompts) if labels else None)


def draw_comparison_grid(
    pipes: Mapping[str, object],
    prompts: Sequence[str] = DEFAULT_GRID_PROMPTS,
    seed: int = 0,
    upscale: int = 2,
    **pipeline_kwargs,
) -> Image.Image:
    """Several pipelines side by side: row i holds one sample per prompt from the i-th pipeline of `pipes` (labelled
    with its key on the left), column j is `prompts[j]` (written above it). Every pipeline draws from a generator
    seeded with `seed`, so rows of pipelines that sample alike start from the same noise.

    Args:
        pipes: label -> text-to-image pipeline, in row order (e.g. the cells of a study).
        pipeline_kwargs: passed to every pipeline (e.g. `guidance_scale`).
    """
    if not isinstance(pipes, Mapping) or not pipes or not all(isinstance(k, str) and k for k in pipes):
        raise ValueError(f"`pipes` must be a non-empty mapping of labels to pipelines, got {pipes!r}.")
    _check_grid_arguments(prompts, 1, upscale)
    rows = [_sample(pipe, prompts, 1, seed, pipeline_kwargs) for pipe in pipes.values()]
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), ImageFont.load_default()
    label_width = min(LABEL_WIDTH, 12 + max(int(draw.textlength(label, font=font)) for label in pipes))
    return _compose(rows, upscale, row_labels=list(pipes), column_labels=list(prompts), label_width=label_width)


def _check_grid_arguments(prompts, num_images_per_prompt, upscale) -> None:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"`prompts` must be a non-empty list of non-empty strings, got {prompts!r}.")
    for name, value in (("num_images_per_prompt", num_images_per_prompt), ("upscale", upscale)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _sample(pipe, prompts, num_images_per_prompt: int, seed: int, pipeline_kwargs) -> list[Image.Image]:
    return pipe(
        list(prompts),
        num_images_per_prompt=num_images_per_prompt,
        generator=torch.Generator().manual_seed(seed),
        output_type="pil",
        **pipeline_kwargs,
    ).images


def _compose(
    rows: list[list[Image.Image]],
    upscale: int,
    row_labels: list[str] | None = None,
    column_labels: list[str] | None = None,
    label_width: int = LABEL_WIDTH,
) -> Image.Image:
    """`rows` of images as one picture: tiles upscaled (nearest) on a grey frame, `row_labels` in a white column of
    `label_width` pixels on the left, `column_labels` in a white band on top (each wrapped to its tile's width)."""
    side = rows[0][0].width * upscale
    columns = len(rows[0])
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), ImageFont.load_default()
    left = label_width if row_labels else 0
    header_lines = [_wrapped(text, draw, font, side - 4) for text in column_labels or []]
    top = max((len(lines) for lines in header_lines), default=0) * LINE_HEIGHT + (2 * GAP if column_labels else 0)
    width = left + columns * (side + GAP) + GAP
    height = top + len(rows) * (side + GAP) + GAP
    grid = Image.new("RGB", (width, height), (190, 190, 190))  # grey frames the tiles
    draw = ImageDraw.Draw(grid)
    if left:
        draw.rectangle((0, 0, left - 1, height - 1), fill=(255, 255, 255))
    if top:
        draw.rectangle((0, 0, width - 1, top - 1), fill=(255, 255, 255))
    for column, lines in enumerate(header_lines):
        for index, line in enumerate(lines):
            draw.text(
                (left + GAP + column * (side + GAP) + 2, GAP + index * LINE_HEIGHT), line, fill=(0, 0, 0), font=font
            )
    for row, images in enumerate(rows):
        y = top + GAP + row * (side + GAP)
        if row_labels:
            lines = _wrapped(row_labels[row], draw, font, left - 8)
            first = y + side // 2 - len(lines) * LINE_HEIGHT // 2
            for index, line in enumerate(lines):
                draw.text((4, first + index * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
        for column, image in enumerate(images):
            grid.paste(
                image.convert("RGB").resize((side, side), Image.NEAREST), (left + GAP + column * (side + GAP), y)
            )
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


__all__ = ["DEFAULT_GRID_PROMPTS", "draw_comparison_grid", "draw_prompt_grid"]
