"""MusePipeline: seeded images, the confidence-ordered loop seen through the callback, the three loading entry points
of one saved folder, output formats and argument errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, pipeline

from hf_t2i import (
    AutoModelForTextToImage,
    MuseForConditionalGeneration,
    MusePipeline,
    MuseProcessor,
    T2IImageProcessor,
    T2IPipeline,
)
from hf_t2i.generation.masked import masked_after

from ..models.test_muse import tiny_muse_config


def make_pipeline(tokenizer, **kwargs):
    torch.manual_seed(0)
    config = tiny_muse_config(text_vocab_size=len(tokenizer), text_seq_len=tokenizer.model_max_length, **kwargs)
    model = MuseForConditionalGeneration(config).eval()
    processor = MuseProcessor(T2IImageProcessor(image_size=16), tokenizer)
    pipe = MusePipeline(model=model, processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def muse_pipeline(tokenizer):
    return make_pipeline(tokenizer)


def run(pipe, prompt="a red circle", seed=0, **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


def test_images_are_seeded_and_in_range(muse_pipeline):
    kwargs = dict(guidance_scale=3.0, num_inference_steps=4)
    a = run(muse_pipeline, seed=1, **kwargs)
    assert a.shape == (1, 16, 16, 3) and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, run(muse_pipeline, seed=1, **kwargs))
    assert not np.array_equal(a, run(muse_pipeline, seed=2, **kwargs))
    assert not np.array_equal(a, run(muse_pipeline, seed=1, **{**kwargs, "guidance_schedule": "linear"}))
    four = muse_pipeline(
        ["a red circle", "two blue squares"], negative_prompt="a green triangle", num_images_per_prompt=2, **kwargs
    ).images
    assert len(four) == 4 and all(isinstance(image, Image.Image) and image.size == (16, 16) for image in four)


def test_pipeline_runs_the_models_loop(muse_pipeline):
    """The pipeline's loop and `sample_image_tokens` give the same codes for the same seed."""
    model = muse_pipeline.model
    kwargs = dict(num_inference_steps=5, guidance_scale=2.0, top_k=8, choice_temperature=1.0)
    images = run(muse_pipeline, seed=7, **kwargs)
    inputs = muse_pipeline.encode_prompts(["a red circle"], None, 1, True, False, torch.device("cpu"))
    codes = model.sample_image_tokens(**inputs, **kwargs, generator=torch.Generator().manual_seed(7))
    expected = ((model.decode_image_tokens(codes) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.allclose(images, expected, atol=1e-6)


def test_callback_sees_every_iteration_on_the_cosine_schedule(muse_pipeline):
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append((i, pipe.known.clone(), kwargs["latents"].clone()))
        return {}

    muse_pipeline("a red circle", num_inference_steps=5, callback_on_step_end=callback, choice_temperature=4.5)
    assert [i for i, _, _ in seen] == list(range(5))
    counts = [int(known.sum()) for _, known, _ in seen]
    assert counts == [1, 4, 7, 12, 16]  # tokens known after each iteration: 16 - floor(16 cos(pi/2 (k+1)/5))
    revealed = 0
    for k, count in enumerate(counts[:-1]):
        revealed = 16 - masked_after(k, 5, 16, revealed)
        assert count == revealed
    for (_, known, codes), (_, _, later) in zip(seen, seen[1:]):
        assert torch.equal(codes[known], later[known])  # a kept code is never re-masked or redrawn
        assert (codes[~known] == 0).all()  # unknown ones read zero
    assert muse_pipeline.known is None  # only set during a call


def test_save_load_all_three_entry_points(tokenizer, tmp_path):
    pipe = make_pipeline(tokenizer)
    pipe.save_pretrained(tmp_path)
    kwargs = dict(guidance_scale=2.0, num_inference_steps=4)
    expected = run(pipe, seed=3, **kwargs)
    loaded = MusePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(run(loaded, seed=3, **kwargs), expected)
    assert type(T2IPipeline.from_pretrained(tmp_path)) is MusePipeline
    model = MuseForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert type(AutoModelForTextToImage.from_pretrained(tmp_path)) is MuseForConditionalGeneration
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor) is MuseProcessor
    rebuilt = MusePipeline(model=model, processor=processor)
    rebuilt.set_progress_bar_config(disable=True)
    assert np.array_equal(run(rebuilt, seed=3, **kwargs), expected)
    image = pipeline("text-to-image", model=str(tmp_path))(
        "a red circle", generator=torch.Generator().manual_seed(3), **kwargs
    )
    assert isinstance(image, Image.Image)
    assert np.abs(np.asarray(image, dtype=np.float32) / 255 - expected[0]).max() <= 1 / 255 + 1e-6
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.safetensors")) == ["model.safetensors"]
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert (
        index["_class_name"] == ["pipeline_hf_t2i", "MusePipeline"]
        and index["model"][1] == "MuseForConditionalGeneration"
    )
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "muse"


def test_output_types_and_return_dict(muse_pipeline):
    kwargs = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    pt = muse_pipeline("a red circle", output_type="pt", **kwargs).images
    assert pt.shape == (1, 3, 16, 16) and pt.min() >= 0 and pt.max() <= 1
    kwargs["generator"] = torch.Generator().manual_seed(0)
    (images,) = muse_pipeline("a red circle", output_type="np", return_dict=False, **kwargs)
    assert np.allclose(images, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    pil = muse_pipeline("a red circle", **kwargs).images[0]
    assert np.abs(np.asarray(pil, dtype=np.float32) / 255 - images[0]).max() <= 1 / 255 + 1e-6


def test_defaults_come_from_the_config(tokenizer):
    pipe = make_pipeline(tokenizer, num_inference_steps=3)
    steps = []
    pipe("a red circle", callback_on_step_end=lambda p, i, t, kw: steps.append(i))
    assert steps == [0, 1, 2]
    default = make_pipeline(tokenizer)  # MuseConfig's default: 12 iterations (Muse)
    steps.clear()
    default("a red circle", callback_on_step_end=lambda p, i, t, kw: steps.append(i))
    assert steps == list(range(12))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": "a red circle " * 10}, "prompt"),
        ({"negative_prompt": ["a", "b"], "guidance_scale": 2.0}, "negative_prompt"),
        ({"height": 32}, "height"),
        ({"width": 8}, "width"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"num_inference_steps": 17}, "num_inference_steps"),
        ({"choice_temperature": -1.0}, "choice_temperature"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"min_p": 2.0}, "min_p"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_schedule": "cosine"}, "guidance_schedule"),
        ({"output_type": "latents"}, "output_type"),
        ({"callback_on_step_end_tensor_inputs": ["tokens"]}, "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_input_names_the_argument(muse_pipeline, kwargs, name):
    with pytest.raises(ValueError, match=name):
        muse_pipeline(**{"prompt": "a red circle", **kwargs})


def test_prompt_of_the_wrong_type_names_the_argument(muse_pipeline):
    with pytest.raises(TypeError, match="prompt"):
        muse_pipeline(3)
