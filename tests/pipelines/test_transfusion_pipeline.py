"""TransfusionPipeline: images, seeds, guidance, callbacks, captioning, and one folder for every entry point."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from hf_t2i import (
    AutoModelForTextToImage,
    TransfusionForConditionalGeneration,
    TransfusionPipeline,
    TransfusionProcessor,
)
from hf_t2i.generation import ClassifierFreeGuidance
from hf_t2i.pipelines import T2IPipeline

from ..models.test_transfusion import processor, tiny_config  # noqa: F401  (module fixture)


@pytest.fixture(scope="module")
def pipe(processor):  # noqa: F811
    torch.manual_seed(0)
    model = TransfusionForConditionalGeneration(tiny_config(processor)).eval()
    pipe = TransfusionPipeline(model=model, processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt="a red circle", seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


def test_images_have_the_model_size_and_range(pipe):
    images = run(pipe, ["a red circle", "two blue squares"], num_images_per_prompt=2)
    assert images.shape == (4, 16, 16, 3)
    assert images.min() >= 0 and images.max() <= 1
    pil = pipe("a red circle", num_inference_steps=2).images
    assert len(pil) == 1 and pil[0].size == (16, 16)


def test_same_seed_same_image_and_guidance_matters(pipe):
    a, b, c = run(pipe, seed=3), run(pipe, seed=3), run(pipe, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(run(pipe, seed=3, guidance_scale=1.0), a)
    assert not np.array_equal(run(pipe, seed=3, negative_prompt="two blue squares"), a)


def test_pipeline_equals_the_model_call(pipe, processor):  # noqa: F811
    inputs = processor.image_generation_inputs(["a red circle"])
    pixels = pipe.model.generate_images(
        **inputs, guidance_scale=3.0, num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    )
    assert np.allclose(run(pipe)[0], ((pixels[0].permute(1, 2, 0) + 1) / 2).numpy(), atol=1e-6)


def test_callback_can_replace_latents(pipe):
    steps = []

    def callback(p, i, t, kwargs):
        steps.append(i)
        return {"latents": torch.zeros_like(kwargs["latents"])}

    pipe("a red circle", num_inference_steps=3, callback_on_step_end=callback, output_type="np")
    assert steps == [0, 1, 2]
    zeros = pipe.model.decode_image_tokens(torch.zeros(1, 4, 8, 8))
    out = pipe("a red circle", num_inference_steps=1, callback_on_step_end=callback, output_type="pt").images
    assert torch.allclose(out, (zeros + 1) / 2, atol=1e-6)


def test_bad_inputs(pipe):
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe("a red circle", num_inference_steps=-2)
    with pytest.raises(ValueError, match="`height` must be 16"):
        pipe("a red circle", height=20)
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        pipe("a red circle", num_images_per_prompt=0)
    with pytest.raises(ValueError, match="negative_prompt"):
        pipe(["a", "b", "c"], negative_prompt=["x", "y"])
    with pytest.raises(ValueError, match="tokens long"):
        pipe("a red circle " * 10)


def test_captioning_through_the_pipeline_and_the_image_text_to_text_task(pipe, tmp_path):
    image = run(pipe, seed=1)[0]
    pil = pipe.numpy_to_pil(image[None])[0]
    captions = pipe.caption(pil, max_new_tokens=5)
    assert len(captions) == 1 and isinstance(captions[0], str)

    pipe.save_pretrained(tmp_path)
    task = pipeline("image-text-to-text", model=str(tmp_path))
    assert type(task.model) is TransfusionForConditionalGeneration
    out = task(images=pil, text="", generate_kwargs={"max_new_tokens": 5, "do_sample": False})
    assert out[0]["generated_text"].strip() == captions[0].strip()
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path)) is TransfusionForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(tmp_path)) is TransfusionProcessor


def test_save_load_all_three_entry_points(pipe, tmp_path):
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # a non-default scheduler must survive
    try:
        pipe.save_pretrained(tmp_path)
        expected = run(pipe, seed=5)
    finally:
        pipe.scheduler = pipe.model.make_scheduler("ddim")

    loaded = TransfusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is DDPMScheduler
    assert np.array_equal(run(loaded, seed=5), expected)
    assert type(T2IPipeline.from_pretrained(tmp_path)) is TransfusionPipeline

    model = TransfusionForConditionalGeneration.from_pretrained(tmp_path)
    assert type(AutoModelForTextToImage.from_pretrained(tmp_path)) is TransfusionForConditionalGeneration
    for name, param in model.state_dict().items():
        assert torch.equal(param, pipe.model.state_dict()[name]), name
    reloaded = TransfusionProcessor.from_pretrained(tmp_path)
    assert reloaded.num_image_tokens == 16
    assert reloaded.image_generation_inputs("a red circle")["input_ids"].tolist() == (
        pipe.processor.image_generation_inputs("a red circle")["input_ids"].tolist()
    )

    task = pipeline("text-to-image", model=str(tmp_path))
    image = task("a red circle", generator=torch.Generator().manual_seed(5), num_inference_steps=3)
    assert np.abs(np.asarray(image, dtype=np.float32) / 255 - expected[0]).max() <= 1 / 255 + 1e-6
    # no weights stored twice: one safetensors file at the root (the VAE is inside the model)
    assert sorted(p.name for p in tmp_path.rglob("*.safetensors")) == ["model.safetensors"]


def test_export_refuses_a_temperature_the_family_does_not_read(pipe, tmp_path):
    """`--default-temperature` is the token samplers' (DALL-E, Parti); Transfusion's images are not drawn by it."""
    from hf_t2i.export import export_checkpoint

    pipe.save_pretrained(tmp_path / "full")
    with pytest.raises(ValueError, match=r"`default_temperature` \(0.7\).*TransfusionForConditionalGeneration"):
        export_checkpoint(tmp_path / "full", tmp_path / "x", default_temperature=0.7)
    assert not (tmp_path / "x").exists()


def test_guidance_interval_guides_only_the_steps_inside_it(pipe, processor):  # noqa: F811
    """Guidance in a limited interval: progress i / (N - 1) picks the guided steps. With 3 steps (progress 0, 0.5, 1),
    (0, 1) is plain guidance; (0.6, 0.9) holds no step, so the images are the unguided ones (the conditional rows
    run after the doubled batch's cached prefix, so equal up to float error); (0.5, 1) guides the last two steps
    only, which differs from both; the model's own loop gives the same images as the pipeline's."""
    guided, unguided = run(pipe, seed=2), run(pipe, seed=2, guidance_scale=1.0)
    assert np.array_equal(run(pipe, seed=2, guidance_interval=(0.0, 1.0)), guided)
    assert np.allclose(run(pipe, seed=2, guidance_interval=(0.6, 0.9)), unguided, atol=1e-5)
    late = run(pipe, seed=2, guidance_interval=[0.5, 1])
    assert not np.allclose(late, guided, atol=1e-3) and not np.allclose(late, unguided, atol=1e-3)
    pixels = pipe.model.generate_images(
        **processor.image_generation_inputs(["a red circle"]),
        guidance_scale=3.0,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(2),
        guidance_interval=(0.5, 1.0),
    )
    assert np.allclose(late[0], ((pixels[0].permute(1, 2, 0) + 1) / 2).numpy(), atol=1e-6)
    for bad in [(0.5, 0.2), (-0.1, 1.0), (0.0, 1.5), (0.2,), "0.2,1", (0.0, float("nan"))]:
        with pytest.raises(ValueError, match=r"`guidance_interval` must be a pair \(start, stop\)"):
            run(pipe, guidance_interval=bad)


def test_steps_outside_the_interval_run_the_conditional_rows_alone(pipe, processor):  # noqa: F811
    """Outside the interval the guided noise is the conditional prediction (`uncond + 1 * (cond - uncond)`), so only
    the B conditional rows run: with 4 steps (progress 0, 1/3, 2/3, 1) and (0.5, 1), the first two steps run B rows
    and the last two 2B, after the one doubled prefix. The images equal those of running both branches at every step
    and combining at scale 1 outside the interval (the loop before this saving), up to float error."""
    rows = []
    hook = pipe.model.model.register_forward_hook(
        lambda module, args, kwargs, out: rows.append(args[0].shape[0]), with_kwargs=True
    )
    try:
        fast = run(
            pipe, ["a red circle", "two blue squares"], seed=5, num_inference_steps=4, guidance_interval=(0.5, 1)
        )
    finally:
        hook.remove()
    assert rows == [4, 2, 2, 4, 4]  # the doubled prefix, then one call per step

    model, guidance = pipe.model, ClassifierFreeGuidance(3.0, interval=(0.5, 1.0))
    inputs = processor.image_generation_inputs(["a red circle", "two blue squares"])
    state = model.prepare_image_generation(**inputs, guidance=guidance)
    scheduler = model.make_scheduler("ddim")
    scheduler.set_timesteps(4)
    latents = model.prepare_latents(state, scheduler, torch.Generator().manual_seed(5))
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            both = model.image_generation_step(state, guidance.double(latents), t)
            latents = scheduler.step(guidance.combine(both, guidance.scale_at(i / 3)), t, latents).prev_sample
        pixels = model.decode_image_tokens(latents)
    assert np.allclose(fast, ((pixels.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1).numpy(), atol=1e-5)


def test_default_guidance_interval_is_saved_exported_and_used(pipe, tmp_path):
    """A folder's `default_guidance_interval` (model_index.json) is what a call without `guidance_interval` uses;
    `export_checkpoint` writes it (tests/pipelines/test_dalle_pipeline.py: and refuses it for a pipeline without the
    argument); a bad default is refused by name."""
    import json

    from hf_t2i.export import export_checkpoint

    pipe.save_pretrained(tmp_path / "full")
    export_checkpoint(tmp_path / "full", tmp_path / "half", default_guidance_interval=(0.5, 1.0))
    assert json.loads((tmp_path / "half" / "model_index.json").read_text())["default_guidance_interval"] == [0.5, 1.0]
    loaded = TransfusionPipeline.from_pretrained(tmp_path / "half")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.guidance_interval_or_default(None) == (0.5, 1.0)
    assert np.array_equal(run(loaded, seed=1), run(loaded, seed=1, guidance_interval=(0.5, 1.0)))
    assert not np.allclose(run(loaded, seed=1), run(loaded, seed=1, guidance_interval=(0.0, 1.0)), atol=1e-3)
    with pytest.raises(ValueError, match=r"`default_guidance_interval` must be a pair"):
        TransfusionPipeline(pipe.model, pipe.processor, default_guidance_interval=(1.0, 0.0))


def test_eval_report_records_the_guidance_interval_used(pipe, tmp_path):
    """`hf-t2i eval` passes `guidance_interval` to the pipeline and its report names the interval the images were
    drawn with: the call's, else the folder's default (every step when it names none)."""
    from hf_t2i.evaluation.runner import evaluate_pipeline

    common = {"num_images": 2, "batch_size": 2, "metrics": ["compositional"], "progress": False}
    common["num_inference_steps"] = 2
    report = evaluate_pipeline(pipe, "shapes", output_dir=tmp_path / "a", guidance_interval=(0.5, 1.0), **common)
    assert report["settings"]["pipeline_kwargs"]["guidance_interval"] == [0.5, 1.0]
    report = evaluate_pipeline(pipe, "shapes", output_dir=tmp_path / "b", **common)
    assert report["settings"]["pipeline_kwargs"]["guidance_interval"] == [0.0, 1.0]
