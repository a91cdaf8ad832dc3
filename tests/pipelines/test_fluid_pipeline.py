import json

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, pipeline

from hf_t2i import (
    AutoModelForTextToImage,
    FluidForConditionalGeneration,
    FluidPipeline,
    FluidProcessor,
    T2IImageProcessor,
    T2IPipeline,
)
from hf_t2i.layers.diffusion_head import DiffusionHeadScheduler, build_ddpm_scheduler

from ..models.test_fluid import tiny_fluid_config


def make_pipeline(tokenizer, token_type="continuous", order="random", scheduler=None):
    torch.manual_seed(0)
    config = tiny_fluid_config(
        token_type, order, text_vocab_size=len(tokenizer), text_seq_len=tokenizer.model_max_length
    )
    model = FluidForConditionalGeneration(config).eval()
    if model.diffusion_head is not None:
        torch.nn.init.normal_(model.diffusion_head.output.weight, std=0.2)  # a head that does something
    processor = FluidProcessor(T2IImageProcessor(image_size=16), tokenizer)
    pipe = FluidPipeline(model=model, processor=processor, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def fluid_pipeline(tokenizer):
    return make_pipeline(tokenizer)


def run(pipe, prompt="a red circle", seed=0, **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


@pytest.mark.parametrize(("token_type", "order"), [("continuous", "raster"), ("discrete", "random")])
def test_every_cell_makes_seeded_images(tokenizer, token_type, order):
    pipe = make_pipeline(tokenizer, token_type, order)
    kwargs = dict(guidance_scale=2.0, num_inference_steps=4 if order == "random" else None)
    a = run(pipe, seed=1, **kwargs)
    assert a.shape == (1, 16, 16, 3) and np.isfinite(a).all()
    assert np.array_equal(a, run(pipe, seed=1, **kwargs))
    assert not np.array_equal(a, run(pipe, seed=2, **kwargs))


def test_images_seeded_guided_and_scheduled(fluid_pipeline):
    kwargs = dict(guidance_scale=3.0, guidance_schedule="linear", num_inference_steps=4, num_diffusion_steps=4)
    a = run(fluid_pipeline, seed=1, **kwargs)
    assert a.shape == (1, 16, 16, 3)
    assert np.array_equal(a, run(fluid_pipeline, seed=1, **kwargs))
    assert not np.array_equal(a, run(fluid_pipeline, seed=2, **kwargs))
    assert not np.array_equal(a, run(fluid_pipeline, seed=1, **{**kwargs, "guidance_schedule": "constant"}))
    assert not np.array_equal(a, run(fluid_pipeline, seed=1, **{**kwargs, "temperature": 0.5}))
    two = fluid_pipeline(["a red circle", "two blue squares"], num_images_per_prompt=2, output_type="pt").images
    assert two.shape == (4, 3, 16, 16)


def test_callback_sees_every_iteration(fluid_pipeline):
    seen = []
    fluid_pipeline(
        "a red circle",
        num_inference_steps=5,
        callback_on_step_end=lambda pipe, i, t, kw: seen.append((i, kw["latents"].abs().sum(-1).ne(0).sum())),
    )
    assert [i for i, _ in seen] == list(range(5))
    assert [int(n) for _, n in seen] == [1, 4, 7, 12, 16]  # tokens known after each cosine-scheduled iteration


def test_save_load_all_three_entry_points(tokenizer, tmp_path):
    pipe = make_pipeline(tokenizer, scheduler=build_ddpm_scheduler(50))
    pipe.save_pretrained(tmp_path)
    expected = run(pipe, seed=3, guidance_scale=2.0, num_inference_steps=4)
    loaded = T2IPipeline.from_pretrained(tmp_path)
    assert type(loaded) is FluidPipeline and type(loaded.scheduler) is DiffusionHeadScheduler
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(run(loaded, seed=3, guidance_scale=2.0, num_inference_steps=4), expected)
    assert type(AutoModelForTextToImage.from_pretrained(tmp_path)) is FluidForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(tmp_path)) is FluidProcessor
    image = pipeline("text-to-image", model=str(tmp_path))(
        "a red circle", generator=torch.Generator().manual_seed(3), guidance_scale=2.0, num_inference_steps=4
    )
    assert np.abs(np.asarray(image, dtype=np.float32) / 255 - expected[0]).max() <= 1 / 255 + 1e-6
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.safetensors")) == ["model.safetensors"]
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["model"][1] == "FluidForConditionalGeneration"


def test_guidance_interval_guides_only_those_head_steps(tokenizer, tmp_path):
    """Continuous Fluid's `guidance_interval` is over the diffusion head's denoising steps (progress i / (N - 1); 4
    steps: 0, 1/3, 2/3, 1). (0, 1) is plain guidance; (0.4, 0.6) holds no step, so the tokens are the unguided
    head's (the backbone still runs both branches, the head the conditional rows alone: equal up to float error);
    (0, 0.5) differs from both; one generator per image (the per-image head denoiser) draws the same. A folder's
    `default_guidance_interval` is what a call without one uses. Discrete Fluid, with no head, refuses one."""
    pipe = make_pipeline(tokenizer)
    kwargs = dict(guidance_scale=3.0, num_inference_steps=4, num_diffusion_steps=4)

    def tokens(pipe, **options):
        generator = torch.Generator().manual_seed(1)
        return pipe("a red circle", generator=generator, output_type="latent", **{**kwargs, **options}).images

    guided, unguided = tokens(pipe), tokens(pipe, guidance_scale=1.0)
    assert torch.equal(tokens(pipe, guidance_interval=(0.0, 1.0)), guided)
    assert torch.allclose(tokens(pipe, guidance_interval=(0.4, 0.6)), unguided, atol=1e-5)
    early = tokens(pipe, guidance_interval=(0.0, 0.5))
    assert (early - guided).abs().max() > 1e-2 and (early - unguided).abs().max() > 1e-2
    inputs = pipe.processor(text=["a red circle"], return_tensors="pt")
    negative = pipe.processor(text=[""], return_tensors="pt")
    from_model = pipe.model.sample_image_tokens(
        **inputs,
        negative_input_ids=negative["input_ids"],
        negative_attention_mask=negative["attention_mask"],
        generator=torch.Generator().manual_seed(1),
        guidance_interval=(0.0, 0.5),
        **kwargs,
    )
    assert torch.allclose(from_model, early, atol=1e-6)  # the model's loop and the pipeline's agree
    one_per_image = [torch.Generator().manual_seed(1)]  # the per-image head denoiser, N rows on unguided steps
    listed = pipe(
        "a red circle", generator=one_per_image, output_type="latent", guidance_interval=(0.0, 0.5), **kwargs
    )
    assert torch.allclose(listed.images, early, atol=1e-6)

    pipe.register_default_guidance_interval((0.0, 0.5))
    pipe.save_pretrained(tmp_path)
    loaded = FluidPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_guidance_interval == [0.0, 0.5]
    assert torch.equal(tokens(loaded), early)
    assert torch.equal(tokens(loaded, guidance_interval=(0.0, 1.0)), guided)

    discrete = make_pipeline(tokenizer, "discrete")
    with pytest.raises(ValueError, match=r"`guidance_interval` \(\(0.0, 0.5\)\).*discrete tokens"):
        run(discrete, guidance_interval=(0.0, 0.5), guidance_scale=2.0, num_inference_steps=4)
    assert run(discrete, guidance_interval=(0, 1), guidance_scale=2.0, num_inference_steps=4).shape == (1, 16, 16, 3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": "a red circle " * 10}, "prompt"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 4}, "top_k"),
        ({"height": 32}, "height"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_diffusion_steps": 51}, "num_diffusion_steps"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_interval": (0.5, 0.2)}, "guidance_interval"),
        ({"output_type": "latents"}, "output_type"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
    ],
)
def test_bad_input_names_the_argument(fluid_pipeline, kwargs, name):
    with pytest.raises(ValueError, match=name):
        fluid_pipeline(**{"prompt": "a red circle", **kwargs})
