"""`hf-t2i grid` / `hf_t2i.grids.draw_prompt_grid`: a labelled grid of seeded samples, one row per prompt."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_t2i.checkpoints import resolve_checkpoint
from hf_t2i.grids import GAP, LABEL_WIDTH, draw_comparison_grid, draw_prompt_grid
from hf_t2i.pipelines import T2IPipeline


PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def pipe():
    pipe = T2IPipeline.from_pretrained(resolve_checkpoint("dalle"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tile(grid: Image.Image, row: int, column: int, side: int, left: int, top: int = 0) -> np.ndarray:
    x, y = left + GAP + column * (side + GAP), top + GAP + row * (side + GAP)
    return np.asarray(grid.crop((x, y, x + side, y + side)))


def test_grid_holds_the_seeded_samples_row_by_row(pipe):
    grid = draw_prompt_grid(pipe, PROMPTS, num_images_per_prompt=3, seed=5, upscale=2, guidance_scale=3.0)
    side = 128  # 64 px upscaled twice
    assert grid.size == (LABEL_WIDTH + 3 * (side + GAP) + GAP, 2 * (side + GAP) + GAP)
    images = pipe(
        PROMPTS, num_images_per_prompt=3, generator=torch.Generator().manual_seed(5), guidance_scale=3.0
    ).images
    for row in range(2):
        for column in range(3):
            expected = np.asarray(images[3 * row + column].convert("RGB").resize((side, side), Image.NEAREST))
            np.testing.assert_array_equal(tile(grid, row, column, side, LABEL_WIDTH), expected)
    label = np.asarray(grid.crop((0, 0, LABEL_WIDTH, side)))
    assert (label < 128).any()  # the prompt is written in the label column
    unlabelled = draw_prompt_grid(pipe, PROMPTS, num_images_per_prompt=3, seed=5, labels=False, guidance_scale=3.0)
    assert unlabelled.width == grid.width - LABEL_WIDTH
    np.testing.assert_array_equal(tile(unlabelled, 1, 2, side, 0), tile(grid, 1, 2, side, LABEL_WIDTH))


def test_comparison_grid_holds_one_row_per_pipeline_and_one_column_per_prompt(pipe):
    grid = draw_comparison_grid({"first": pipe, "again": pipe}, PROMPTS, seed=5, upscale=1, guidance_scale=3.0)
    side = 64
    top = grid.height - 2 * (side + GAP) - GAP  # the band of prompts above the tiles
    left = grid.width - 2 * (side + GAP) - GAP  # the labels' column, as wide as "first" needs
    assert 0 < left < LABEL_WIDTH // 2 and top > 0
    assert (np.asarray(grid.crop((0, top, left, grid.height))) < 128).any()
    images = pipe(PROMPTS, generator=torch.Generator().manual_seed(5), guidance_scale=3.0).images
    for row in range(2):  # every pipeline draws from the same seed: same pipeline, same row
        for column in range(2):
            expected = np.asarray(images[column].convert("RGB"))
            np.testing.assert_array_equal(tile(grid, row, column, side, left, top), expected)
    header = np.asarray(grid.crop((left, 0, grid.width, top)))
    assert (header < 128).any()  # the prompts are written above their columns
    with pytest.raises(ValueError, match="pipes"):
        draw_comparison_grid({}, PROMPTS)
    with pytest.raises(ValueError, match="prompts"):
        draw_comparison_grid({"first": pipe}, "a red circle")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"prompts": "a red circle"}, "prompts"),
        ({"prompts": []}, "prompts"),
        ({"prompts": ["a red circle", ""]}, "prompts"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"upscale": 1.5}, "upscale"),
    ],
)
def test_bad_grid_arguments_name_the_argument(pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        draw_prompt_grid(pipe, **kwargs)


def test_cli_grid_writes_the_picture(tmp_path, capsys):
    from hf_t2i.cli import main

    out = tmp_path / "grid.png"
    argv = ["grid", "--model", "dalle", "--output", str(out), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]
    assert main([*argv, "--num-images-per-prompt", "2", "--upscale", "1", "--no-labels"]) == 0
    assert Image.open(out).size == (2 * (64 + GAP) + GAP, 2 * (64 + GAP) + GAP)
    assert main([*argv, "--num-inference-steps", "4"]) == 2  # DALL-E decodes one token per step
    assert "--num-inference-steps does not apply to DallePipeline" in capsys.readouterr().err


def test_a_long_label_wraps_inside_the_label_column():
    from PIL import ImageDraw, ImageFont

    from hf_t2i.grids import _wrapped

    draw, font = ImageDraw.Draw(Image.new("RGB", (8, 8))), ImageFont.load_default()
    prompt = "smiling face with sunglasses, awesome, beach, bright, in google style"
    lines = _wrapped(prompt, draw, font, LABEL_WIDTH - 8)
    assert len(lines) >= 2 and " ".join(lines) == prompt
    assert all(draw.textlength(line, font=font) <= LABEL_WIDTH - 8 for line in lines)
    assert _wrapped("a red circle", draw, font, LABEL_WIDTH - 8) == ["a red circle"]  # short ones stay on one line
