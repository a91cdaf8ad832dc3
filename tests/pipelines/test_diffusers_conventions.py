"""The diffusers conventions every pipeline follows: one generator per image, `output_type="latent"`, precomputed
`prompt_embeds` with `encode_prompt`, transformers' `pipeline(..., batch_size=k)`, and Transfusion's swappable
schedulers. Tiny models built in code, seeded, offline."""

import os
import stat

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from transformers import pipeline

from hf_t2i import (
    DalleForConditionalGeneration,
    DallePipeline,
    DalleProcessor,
    FluidForConditionalGeneration,
    FluidPipeline,
    FluidProcessor,
    PartiForConditionalGeneration,
    PartiPipeline,
    PartiProcessor,
    T2IImageProcessor,
    TransfusionForConditionalGeneration,
    TransfusionPipeline,
)
from hf_t2i.pipelines.reranking import clip_scores

from ..conftest import tiny_dalle_config
from ..models.test_fluid import tiny_fluid_config
from ..models.test_fluid_class_conditional import mar_model
from ..models.test_parti import tiny_parti_config
from ..models.test_transfusion import tiny_config as tiny_transfusion_config
from ..models.test_transfusion import tiny_processor as tiny_transfusion_processor
from .test_dalle_pipeline import tiny_scorer
from .test_fluid_pipeline import make_pipeline as make_fluid
from .test_muse_pipeline import make_pipeline as make_muse


FAMILIES = ["dalle", "parti", "fluid", "transfusion", "muse"]
#: families whose text conditioning is a text encoder's output (they take `prompt_embeds`)
ENCODER_FAMILIES = ["parti", "fluid", "muse"]
#: sampling settings that exercise every random draw of each family, under guidance
SETTINGS = {
    "dalle": dict(guidance_scale=2.0, top_k=16),
    "parti": dict(guidance_scale=3.0, top_k=16),
    "fluid": dict(guidance_scale=3.0, num_inference_steps=4),
    "fluid-linear-guidance": dict(guidance_scale=3.0, guidance_schedule="linear", num_inference_steps=4),
    "fluid-learned-variance": dict(guidance_scale=3.0, num_inference_steps=4),
    "fluid-discrete": dict(guidance_scale=3.0, num_inference_steps=4, top_k=8),
    "fluid-raster": dict(guidance_scale=3.0),
    "transfusion": dict(guidance_scale=3.0, num_inference_steps=3),  # with DDPM: the steps draw noise too
    "muse": dict(guidance_scale=3.0, num_inference_steps=4, top_k=8),
}
PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def pipes(tokenizer):
    """family -> tiny pipeline, built on first use and shared by the module's tests."""
    built = {}

    def build(family):
        torch.manual_seed(0)
        if family == "dalle":
            model = DalleForConditionalGeneration(tiny_dalle_config(len(tokenizer))).eval()
            pipe = DallePipeline(model=model, processor=DalleProcessor(T2IImageProcessor(image_size=16), tokenizer))
        elif family == "parti":
            config = tiny_parti_config(16, text_vocab_size=len(tokenizer), text_seq_len=tokenizer.model_max_length)
            model = PartiForConditionalGeneration(config).eval()
            pipe = PartiPipeline(model=model, processor=PartiProcessor(T2IImageProcessor(image_size=16), tokenizer))
        elif family == "transfusion":
            processor = tiny_transfusion_processor()
            model = TransfusionForConditionalGeneration(tiny_transfusion_config(processor)).eval()
            pipe = TransfusionPipeline(model=model, processor=processor, scheduler=model.make_scheduler("ddpm"))
        elif family == "muse":
            pipe = make_muse(tokenizer)
        elif family == "fluid-learned-variance":  # the head also predicts the variance (MAR's learn_sigma)
            config = tiny_fluid_config(
                text_vocab_size=len(tokenizer),
                text_seq_len=tokenizer.model_max_length,
                diffusion_head_learned_variance=True,
            )
            model = FluidForConditionalGeneration(config).eval()
            torch.nn.init.normal_(model.diffusion_head.output.weight, std=0.2)
            pipe = FluidPipeline(model=model, processor=FluidProcessor(T2IImageProcessor(image_size=16), tokenizer))
        else:
            token_type = "discrete" if family == "fluid-discrete" else "continuous"
            pipe = make_fluid(tokenizer, token_type, "raster" if family == "fluid-raster" else "random")
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def get(family):
        if family not in built:
            built[family] = build(family)
        return built[family]

    return get


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_same(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    """Exactly equal codes; latents equal up to float rounding (a batch of 4 and a batch of 1 may round apart), which
    is relative: an untrained tiny MAR's latents reach ~1e3, where float32 rounding alone exceeds `atol`."""
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)


# 1. A list of generators, one per image


@pytest.mark.parametrize("family", list(SETTINGS))
def test_image_i_of_a_generator_list_is_the_one_image_call_with_generator_i(pipes, family):
    pipe, settings = pipes(family), SETTINGS[family]
    seeds = [11, 12, 13, 14]
    out = pipe(
        PROMPTS,
        num_images_per_prompt=2,
        generator=[seeded(s) for s in seeds],
        output_type="latent",
        **settings,
    ).images
    assert out.shape[0] == 4
    for i, seed in enumerate(seeds):
        single = pipe(PROMPTS[i // 2], generator=seeded(seed), output_type="latent", **settings).images
        assert_same(out[i : i + 1], single)
    # the generators matter: the same prompt with other seeds draws other images
    assert not torch.equal(out[0], out[1])


def test_generator_list_serves_class_conditional_fluid():
    pipe = FluidPipeline(model=mar_model())
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(guidance_scale=2.0, num_inference_steps=4, output_type="latent")
    out = pipe(class_labels=[1, 3], generator=[seeded(5), seeded(6)], **kwargs).images
    assert_same(out[1:], pipe(class_labels=[3], generator=seeded(6), **kwargs).images)
    with pytest.raises(ValueError, match=r"length 1, but requested an effective batch size of 2 \(class labels"):
        pipe(class_labels=[1, 3], generator=[seeded(5)], **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_generator_list_of_the_wrong_length_is_a_clear_error(pipes, family):
    pipe, settings = pipes(family), SETTINGS[family]
    generators = [seeded(i) for i in range(3)]
    with pytest.raises(ValueError, match="list of generators of length 3, but requested an effective batch size of 2"):
        pipe(PROMPTS, generator=generators, **settings)
    with pytest.raises(ValueError, match=r"`generator\[1\]` must be a torch.Generator, got int"):
        pipe(PROMPTS, generator=[seeded(0), 1], **settings)


def test_generator_list_counts_reranking_candidates(pipes, dalle_processor):
    base = pipes("dalle")
    pipe = DallePipeline(base.model, dalle_processor, scorer=tiny_scorer(), scorer_processor=dalle_processor)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"effective batch size of 3 \(prompts x `num_candidates`\)"):
        pipe("a red circle", num_candidates=3, generator=[seeded(0)])
    out = pipe("a red circle", num_candidates=3, generator=[seeded(i) for i in range(3)], output_type="latent")
    assert out.images.shape == (1, pipe.model.config.num_image_tokens)


@pytest.mark.parametrize("family", ["dalle", "parti", "fluid", "fluid-discrete", "transfusion", "muse"])
def test_every_family_keeps_the_candidates_its_scorer_ranks_highest(pipes, dalle_processor, family):
    """DALL-E's reranking (`num_candidates`) works the same in every family: the kept images are, best first, the
    top-scored of the candidates that a call drawing `num_candidates` images per prompt returns."""
    pipe, settings = pipes(family), SETTINGS[family]
    scorer = tiny_scorer()
    pipe.scorer, pipe.scorer_processor = scorer, dalle_processor
    try:
        candidates = pipe(PROMPTS, num_images_per_prompt=3, generator=seeded(8), output_type="latent", **settings)
        candidates = candidates.images  # (2 * 3, ...)
        kwargs = dict(num_images_per_prompt=2, num_candidates=3, **settings)
        kept = pipe(PROMPTS, generator=seeded(8), output_type="latent", **kwargs)
        images = pipe(PROMPTS, generator=seeded(8), output_type="pt", **kwargs)
    finally:
        pipe.scorer, pipe.scorer_processor = None, None
    scores = clip_scores(scorer, dalle_processor, PROMPTS, pipe.model.decode_image_tokens(candidates)).view(2, 3)
    best = scores.argsort(dim=1, descending=True)[:, :2]  # (prompts, 2)
    assert not torch.equal(best, torch.arange(2).expand(2, 2))  # the order changed: the test can tell
    expected = candidates.view(2, 3, *candidates.shape[1:])[torch.arange(2)[:, None], best].flatten(0, 1)
    assert_same(kept.images, expected)
    torch.testing.assert_close(kept.scores, scores.gather(1, best).flatten())
    torch.testing.assert_close(images.scores, kept.scores)
    decoded = (pipe.model.decode_image_tokens(kept.images).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(decoded, images.images, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["fluid", "transfusion", "muse"])
def test_reranking_pipelines_save_and_reload_their_scorer(pipes, dalle_processor, family, tmp_path):
    base = pipes(family)
    pipe = type(base)(
        **{name: getattr(base, name) for name in ("model", "processor")},
        scorer=tiny_scorer(),
        scorer_processor=dalle_processor,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    reloaded = type(base).from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert type(reloaded.scorer).__name__ == "CLIPModel"
    out = reloaded("a red circle", num_candidates=2, generator=seeded(0), **SETTINGS[family])
    assert len(out.images) == 1 and out.scores.shape == (1,)
    with pytest.raises(ValueError, match="`num_candidates` reranks samples with a scorer, but this pipeline has none"):
        base("a red circle", num_candidates=2, **SETTINGS[family])
    with pytest.raises(ValueError, match=r"`num_candidates` must be an integer >= `num_images_per_prompt` \(2\)"):
        reloaded("a red circle", num_images_per_prompt=2, num_candidates=1, **SETTINGS[family])


# 2. output_type="latent": what the decoder would receive


@pytest.mark.parametrize(
    ("family", "shape"),
    [
        ("dalle", (2, 64)),  # (B, N) dVAE codes
        ("parti", (2, 16)),  # (B, N) ViT-VQGAN codes
        ("fluid", (2, 16, 16)),  # (B, N, D) latent tokens
        ("fluid-discrete", (2, 16)),  # (B, N) codes
        ("transfusion", (2, 4, 8, 8)),  # (B, C, h, w) scaled VAE latents
        ("muse", (2, 16)),  # (B, N) codes
    ],
)
def test_latent_output_is_what_the_decoder_turns_into_the_images(pipes, family, shape):
    pipe, settings = pipes(family), SETTINGS[family]
    latents = pipe(PROMPTS, generator=seeded(3), output_type="latent", **settings).images
    assert isinstance(latents, torch.Tensor) and tuple(latents.shape) == shape
    images = pipe(PROMPTS, generator=seeded(3), output_type="pt", **settings).images
    decoded = (pipe.model.decode_image_tokens(latents).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(decoded, images, atol=1e-5, rtol=0)
    assert pipe(PROMPTS, generator=seeded(3), output_type="latent", return_dict=False, **settings)[0].shape == shape


@pytest.mark.parametrize("family", ["dalle", "parti"])
def test_raster_pipelines_sample_with_the_models_generation_config(pipes, family, tmp_path):
    """A shipped folder's generation_config.json holds the sampling temperature its model card chose: a call that
    leaves `temperature` unset uses it (as `generate()` and `sample_image_tokens` do), and an explicit one wins."""
    pipe, settings = pipes(family), SETTINGS[family]
    at_one = pipe(PROMPTS, generator=seeded(5), output_type="latent", **settings).images
    at_half = pipe(PROMPTS, generator=seeded(5), output_type="latent", temperature=0.5, **settings).images
    assert not torch.equal(at_one, at_half)
    config = pipe.model.generation_config
    original = config.temperature
    try:
        config.temperature = 0.5
        pipe.save_pretrained(tmp_path)
        torch.testing.assert_close(
            pipe(PROMPTS, generator=seeded(5), output_type="latent", **settings).images, at_half
        )
        at_one_again = pipe(PROMPTS, generator=seeded(5), output_type="latent", temperature=1.0, **settings).images
        torch.testing.assert_close(at_one_again, at_one)
        # the model's own sampler reads it too
        ids = pipe.processor(text=PROMPTS, return_tensors="pt")["input_ids"]
        from_config = pipe.model.sample_image_tokens(ids, generator=seeded(6))
        explicit = pipe.model.sample_image_tokens(ids, temperature=0.5, generator=seeded(6))
        torch.testing.assert_close(from_config, explicit)
    finally:
        config.temperature = original
    reloaded = type(pipe).from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.model.generation_config.temperature == 0.5
    torch.testing.assert_close(
        reloaded(PROMPTS, generator=seeded(5), output_type="latent", **settings).images, at_half
    )


def test_latent_output_of_reranking_keeps_the_best_candidates_codes(pipes, dalle_processor):
    base = pipes("dalle")
    pipe = DallePipeline(base.model, dalle_processor, scorer=tiny_scorer(), scorer_processor=dalle_processor)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_candidates=4, num_images_per_prompt=2)
    latent = pipe("a red circle", generator=seeded(0), output_type="latent", **kwargs)
    images = pipe("a red circle", generator=seeded(0), output_type="pt", **kwargs)
    candidates = pipe("a red circle", generator=seeded(0), num_images_per_prompt=4, output_type="latent").images
    assert latent.images.shape == (2, 64)
    assert all(any(torch.equal(code, c) for c in candidates) for code in latent.images)  # two of the candidates
    torch.testing.assert_close(latent.scores, images.scores)
    decoded = (pipe.model.decode_image_tokens(latent.images).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(decoded, images.images, atol=1e-5, rtol=0)


# 3. prompt_embeds and encode_prompt


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_prompt_embeds_draw_what_the_prompts_draw(pipes, family):
    pipe, settings = pipes(family), SETTINGS[family]
    embeds, mask, negative, negative_mask = pipe.encode_prompt(PROMPTS, negative_prompt="a green triangle")
    width, length = pipe.model.config.hidden_size, pipe.processor.max_length
    assert embeds.shape == negative.shape == (2, length, width)
    assert mask.shape == negative_mask.shape == (2, length)
    expected = pipe(PROMPTS, negative_prompt="a green triangle", generator=seeded(1), output_type="latent", **settings)
    given = pipe(
        prompt_embeds=embeds,
        prompt_attention_mask=mask,
        negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask,
        generator=seeded(1),
        output_type="latent",
        **settings,
    )
    assert_same(given.images, expected.images)
    # num_images_per_prompt repeats each prompt's states, as in diffusers
    repeated = pipe.encode_prompt(PROMPTS, num_images_per_prompt=3, do_classifier_free_guidance=False)
    assert repeated[0].shape == (6, length, width) and repeated[2] is None and repeated[3] is None
    torch.testing.assert_close(repeated[0][3], embeds[1])


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_prompt_embeds_without_negative_ones_guide_against_the_empty_caption(pipes, family):
    pipe, settings = pipes(family), SETTINGS[family]
    embeds, mask, _, _ = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False)
    expected = pipe("a red circle", generator=seeded(2), output_type="latent", num_images_per_prompt=2, **settings)
    given = pipe(
        prompt_embeds=embeds,
        prompt_attention_mask=mask,
        generator=seeded(2),
        output_type="latent",
        num_images_per_prompt=2,
        **settings,
    )
    assert_same(given.images, expected.images)
    # and negative embeddings alone go with a text prompt
    negative, negative_mask = pipe.encode_prompt("", do_classifier_free_guidance=False)[:2]
    with_negative = pipe(
        "a red circle",
        negative_prompt_embeds=negative,
        negative_prompt_attention_mask=negative_mask,
        generator=seeded(2),
        output_type="latent",
        num_images_per_prompt=2,
        **settings,
    )
    assert_same(with_negative.images, expected.images)


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_prompt_embeds_errors_name_the_argument(pipes, family):
    pipe, settings = pipes(family), SETTINGS[family]
    embeds, mask, negative, _ = pipe.encode_prompt(PROMPTS)
    with pytest.raises(ValueError, match="either `prompt` or `prompt_embeds`, not both"):
        pipe(PROMPTS, prompt_embeds=embeds, **settings)
    with pytest.raises(ValueError, match="either `negative_prompt` or `negative_prompt_embeds`, not both"):
        pipe(PROMPTS, negative_prompt="x", negative_prompt_embeds=negative, **settings)
    with pytest.raises(ValueError, match="Pass `prompt`.*or precomputed `prompt_embeds`"):
        pipe(**settings)
    with pytest.raises(ValueError, match=r"`prompt_embeds` must be 32 wide"):
        pipe(prompt_embeds=embeds[..., :8], **settings)
    with pytest.raises(ValueError, match=r"`prompt_embeds` must be a float tensor"):
        pipe(prompt_embeds=mask, **settings)
    with pytest.raises(ValueError, match=r"`prompt_attention_mask` must have shape \(2, 12\)"):
        pipe(prompt_embeds=embeds, prompt_attention_mask=mask[:1], **settings)
    with pytest.raises(ValueError, match=r"`negative_prompt_embeds` must have shape \(2, 12, 32\)"):
        pipe(prompt_embeds=embeds, negative_prompt_embeds=negative[:, :5], **settings)
    with pytest.raises(ValueError, match="`prompt_attention_mask` is the padding mask of `prompt_embeds`"):
        pipe(PROMPTS, prompt_attention_mask=mask, **settings)


@pytest.mark.parametrize(("family", "reason"), [("dalle", "caption's BPE tokens"), ("transfusion", "cached prefix")])
def test_families_without_a_text_encoder_refuse_prompt_embeds_saying_why(pipes, family, reason):
    pipe = pipes(family)
    embeds = torch.zeros(1, 12, 32)
    with pytest.raises(ValueError, match=rf"takes no `prompt_embeds`: .*no separate text encoder.*{reason}"):
        pipe(prompt=None, prompt_embeds=embeds)
    with pytest.raises(
        ValueError, match=r"takes no `negative_prompt_embeds`: .*Pass `prompt` \(and `negative_prompt`"
    ):
        pipe("a red circle", negative_prompt_embeds=embeds)
    with pytest.raises(ValueError, match=r"has no `encode_prompt`: .*no separate text encoder"):
        pipe.encode_prompt("a red circle")


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_reranking_needs_the_prompt_text(pipes, family):
    pipe = pipes(family)
    embeds = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False)[0]
    with pytest.raises(ValueError, match="`num_candidates` reranks by the prompt text"):
        pipe(prompt_embeds=embeds, num_candidates=2)


# 4. transformers' pipeline("text-to-image") with batch_size


@pytest.mark.parametrize("num_images_per_prompt", [1, 2])
def test_transformers_pipeline_batches_prompts(pipes, tmp_path, num_images_per_prompt):
    pipes("dalle").save_pretrained(tmp_path)
    task = pipeline("text-to-image", model=str(tmp_path))
    task.generation_pipeline.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "two blue squares", "three yellow circles"]
    kwargs = dict(do_sample=False, guidance_scale=2.0, num_images_per_prompt=num_images_per_prompt)
    batched = task(prompts, batch_size=2, **kwargs)
    assert len(batched) == 3
    for prompt, images in zip(prompts, batched):
        alone = task(prompt, **kwargs)
        if num_images_per_prompt == 1:
            assert isinstance(images, type(alone)) and np.array_equal(np.asarray(images), np.asarray(alone))
        else:
            assert len(images) == len(alone) == 2
            assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, alone))
    # the prompts keep their order: the first two outputs are two different prompts' images
    first = batched[0] if num_images_per_prompt == 1 else batched[0][0]
    second = batched[1] if num_images_per_prompt == 1 else batched[1][0]
    assert not np.array_equal(np.asarray(first), np.asarray(second))


# 5. Transfusion's schedulers


def oracle_denoiser(scheduler_config, target: torch.Tensor):
    """The exact noise prediction when every training latent is `target`: eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t),
    with a_t interpolated at fractional timesteps. Any correct DDPM-family sampler, run through the pipeline's loop,
    then ends at `target`."""
    alphas = DDPMScheduler.from_config(scheduler_config).alphas_cumprod.double()

    def step(state, latents, timestep):
        t = float(timestep)
        low = min(int(t), len(alphas) - 2)
        a = alphas[low] + (alphas[low + 1] - alphas[low]) * (t - low)
        return ((latents.double() - a.sqrt() * target) / (1 - a).sqrt()).float()

    return step


@pytest.mark.parametrize(
    "scheduler_class",
    [DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler],
)
def test_transfusion_samplers_reach_the_data_of_an_exact_denoiser(pipes, monkeypatch, scheduler_class):
    base = pipes("transfusion")
    pipe = TransfusionPipeline(base.model, base.processor, scheduler_class.from_config(base.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    target = torch.linspace(-1.5, 1.5, 4 * 8 * 8).view(1, 4, 8, 8).double()
    monkeypatch.setattr(pipe.model, "image_generation_step", oracle_denoiser(base.scheduler.config, target))
    out = pipe("a red circle", generator=seeded(0), num_inference_steps=10, guidance_scale=1.0, output_type="latent")
    torch.testing.assert_close(out.images, target.float(), atol=2e-2, rtol=0)


@pytest.mark.parametrize(
    "scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler]
)
def test_transfusion_samples_with_each_ddpm_family_scheduler(pipes, scheduler_class):
    base = pipes("transfusion")
    pipe = TransfusionPipeline(base.model, base.processor, scheduler_class.from_config(base.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    a = pipe("a red circle", generator=seeded(0), num_inference_steps=4, output_type="latent").images
    b = pipe("a red circle", generator=seeded(0), num_inference_steps=4, output_type="latent").images
    assert a.shape == (1, 4, 8, 8) and torch.isfinite(a).all() and torch.equal(a, b)


def test_transfusion_refuses_schedulers_that_cannot_sample_it(pipes):
    base = pipes("transfusion")
    pipe = TransfusionPipeline(base.model, base.processor, FlowMatchEulerDiscreteScheduler())
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler is a flow-matching sampler.*epsilon"):
        pipe("a red circle", num_inference_steps=2)
    with pytest.raises(ValueError, match="flow-matching sampler"):
        base.model.generate_image_latents(
            **base.processor.image_generation_inputs("a red circle"), scheduler=FlowMatchEulerDiscreteScheduler()
        )
    pipe.scheduler = UniPCMultistepScheduler.from_config(base.scheduler.config, prediction_type="v_prediction")
    with pytest.raises(ValueError, match=r"prediction_type='v_prediction'.*predicts 'epsilon'"):
        pipe("a red circle", num_inference_steps=2)
    pipe.scheduler = DDIMScheduler.from_config(base.scheduler.config, beta_schedule="linear")
    with pytest.raises(ValueError, match=r"another noise schedule .*'beta_schedule': 'linear'"):
        pipe("a red circle", num_inference_steps=2)


def test_transfusion_keeps_a_saved_dpm_solver_in_every_entry_point(pipes, tmp_path):
    base = pipes("transfusion")
    solver = DPMSolverMultistepScheduler.from_config(base.scheduler.config)
    pipe = TransfusionPipeline(base.model, base.processor, solver)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    expected = pipe("a red circle", generator=seeded(4), num_inference_steps=3, output_type="np").images

    loaded = TransfusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is DPMSolverMultistepScheduler
    again = loaded("a red circle", generator=seeded(4), num_inference_steps=3, output_type="np").images
    assert np.array_equal(again, expected)

    task = pipeline("text-to-image", model=str(tmp_path))
    assert type(task.generation_pipeline.scheduler) is DPMSolverMultistepScheduler
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(task.generation_pipeline.scheduler.config) == public(solver.config)
    image = task("a red circle", generator=seeded(4), num_inference_steps=3)
    assert np.abs(np.asarray(image, dtype=np.float32) / 255 - expected[0]).max() <= 1 / 255 + 1e-6


@pytest.mark.skipif(os.name != "posix", reason="permission bits are a POSIX notion")
def test_saved_files_get_the_mode_of_a_new_file_under_the_umask(pipes, tmp_path):
    """safetensors >= 0.8 writes its files 0600 whatever the umask (safetensors/safetensors#782); a saved pipeline's
    weights must be as readable as its config.json, as with `open()`."""
    previous = os.umask(0o022)
    try:
        pipes("fluid").save_pretrained(tmp_path)
    finally:
        os.umask(previous)
    files = {
        p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()
    }
    assert "model.safetensors" in files and set(files.values()) == {0o644}, files
