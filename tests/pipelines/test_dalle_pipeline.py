import json

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel, pipeline

from hf_t2i import AutoModelForTextToImage, DalleForConditionalGeneration, DallePipeline, DalleProcessor
from hf_t2i.pipelines import T2IPipeline
from hf_t2i.pipelines.reranking import clip_scores


def run(pipe, prompt="a red circle", seed=0, **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


def test_images_have_the_model_size_and_range(dalle_pipeline):
    images = run(dalle_pipeline, ["a red circle", "two blue squares"], num_images_per_prompt=2)
    assert images.shape == (4, 16, 16, 3)
    assert images.min() >= 0 and images.max() <= 1
    pil = dalle_pipeline("a red circle", generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 1 and pil[0].size == (16, 16)
    assert dalle_pipeline("a red circle", output_type="pt").images.shape == (1, 3, 16, 16)


def test_same_seed_same_image(dalle_pipeline):
    a = run(dalle_pipeline, seed=3, guidance_scale=2.0, top_k=10)
    b = run(dalle_pipeline, seed=3, guidance_scale=2.0, top_k=10)
    c = run(dalle_pipeline, seed=4, guidance_scale=2.0, top_k=10)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_greedy_pipeline_matches_model_generate(dalle_pipeline):
    model, processor = dalle_pipeline.model, dalle_pipeline.processor
    text = processor(text=["a red circle"]).input_ids
    ids = model.generate(text, do_sample=False, max_new_tokens=model.config.num_image_tokens)
    expected = (model.decode_image_tokens(model.image_codes_from_generated(ids)) + 1) / 2
    images = dalle_pipeline("a red circle", do_sample=False, output_type="pt").images
    assert torch.allclose(images, expected.clamp(0, 1))


def test_callback_sees_every_token(dalle_pipeline):
    steps = []
    dalle_pipeline("a red circle", callback_on_step_end=lambda pipe, i, t, kw: steps.append(kw["latents"].shape[1]))
    assert steps == list(range(1, dalle_pipeline.model.config.num_image_tokens + 1))


def test_save_load_all_three_entry_points(dalle_pipeline, tmp_path):
    dalle_pipeline.save_pretrained(tmp_path)
    expected = run(dalle_pipeline, seed=5, guidance_scale=2.0)

    loaded = DallePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(run(loaded, seed=5, guidance_scale=2.0), expected)
    assert type(T2IPipeline.from_pretrained(tmp_path)) is DallePipeline  # the base class dispatches on model_index

    model = DalleForConditionalGeneration.from_pretrained(tmp_path)
    auto = AutoModelForTextToImage.from_pretrained(tmp_path)
    assert type(auto) is DalleForConditionalGeneration
    for name, param in model.state_dict().items():
        assert torch.equal(param, dalle_pipeline.model.state_dict()[name])
    processor = DalleProcessor.from_pretrained(tmp_path)
    assert (
        processor(text="a red circle").input_ids.tolist()
        == dalle_pipeline.processor(text="a red circle").input_ids.tolist()
    )

    task = pipeline("text-to-image", model=str(tmp_path))
    image = task("a red circle", generator=torch.Generator().manual_seed(5), guidance_scale=2.0)
    assert np.abs(np.asarray(image, dtype=np.float32) / 255 - expected[0]).max() <= 1 / 255 + 1e-6
    # no weights stored twice: one safetensors file at the root
    assert sorted(p.name for p in tmp_path.rglob("*.safetensors")) == ["model.safetensors"]


def tiny_scorer():
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": 300,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        vision_config={
            "image_size": 16,
            "patch_size": 8,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=8,
    )
    return CLIPModel(config).eval()


def test_export_stores_a_reranking_scorer_that_the_folder_then_reranks_with(
    dalle_pipeline, tokenizer, tmp_path, monkeypatch
):
    from hf_t2i.export import export_checkpoint
    from hf_t2i.image_processing import T2IImageProcessor
    from hf_t2i.processing_utils import T2IProcessor

    scorer = tiny_scorer()
    scorer.save_pretrained(tmp_path / "scorer")  # the layout the clip_scorer recipe writes
    T2IProcessor(T2IImageProcessor(image_size=16), tokenizer).save_pretrained(tmp_path / "scorer")
    dalle_pipeline.save_pretrained(tmp_path / "full")
    export_checkpoint(tmp_path / "full", tmp_path / "half", rerank_scorer=tmp_path / "scorer")
    reloaded = T2IPipeline.from_pretrained(tmp_path / "half")
    assert type(reloaded.scorer).__name__ == "CLIPModel" and reloaded.scorer.dtype == torch.float32
    for name, value in scorer.state_dict().items():  # stored in float16 like the prior
        torch.testing.assert_close(reloaded.scorer.state_dict()[name], value.half().float(), atol=0, rtol=0)
    reloaded.set_progress_bar_config(disable=True)
    out = reloaded("a red circle", num_candidates=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape[0] == 1 and out.scores.shape == (1,)
    with pytest.raises(ValueError, match="`rerank_scorer` .* is not a scorer folder"):
        export_checkpoint(tmp_path / "full", tmp_path / "x", rerank_scorer=tmp_path / "missing")
    monkeypatch.setattr(DallePipeline, "_optional_components", [])  # as a pipeline that does not rerank
    with pytest.raises(ValueError, match="rerank_scorer.*does not rerank"):
        export_checkpoint(tmp_path / "full", tmp_path / "x", rerank_scorer=tmp_path / "scorer")


def test_reranking_keeps_the_best_scored_candidates(dalle_model, dalle_processor):
    scorer = tiny_scorer()
    pipe = DallePipeline(model=dalle_model, processor=dalle_processor, scorer=scorer, scorer_processor=dalle_processor)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a red circle",
        num_candidates=4,
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    assert out.images.shape == (2, 3, 16, 16)
    assert out.scores[0] >= out.scores[1]
    # the kept images are the two best of the four candidates drawn with the same seed
    candidates = pipe(
        "a red circle", num_images_per_prompt=4, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    scores = clip_scores(scorer, dalle_processor, ["a red circle"], candidates * 2 - 1)
    best = scores.argsort(descending=True)[:2]
    assert torch.allclose(out.images, candidates[best], atol=1e-6)
    assert torch.allclose(out.scores, scores[best], atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": "a red circle " * 10}, "prompt"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.2}, "top_p"),
        ({"height": 32}, "height"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"num_candidates": 4}, "scorer"),
        ({"output_type": "latents"}, "output_type"),
        ({"guidance_scale": 2.0, "negative_prompt": ["a", "b", "c"]}, "negative_prompt"),
    ],
)
def test_bad_input_names_the_argument(dalle_pipeline, kwargs, name):
    kwargs = {"prompt": "a red circle", **kwargs}
    with pytest.raises(ValueError, match=name):
        dalle_pipeline(**kwargs)


def test_prompt_truncation_is_opt_in(dalle_pipeline):
    long = "a red circle " * 10
    assert len(dalle_pipeline(long, truncation=True).images) == 1


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="pretrained_model_name_or_path"):
        DallePipeline.from_pretrained(tmp_path / "does-not-exist")
    with pytest.raises(ValueError, match="model_index.json"):
        DallePipeline.from_pretrained(tmp_path)


def test_export_halves_the_weights_and_keeps_the_pictures(dalle_pipeline, tmp_path):
    from huggingface_hub import ModelCard

    from hf_t2i.export import export_checkpoint

    dalle_pipeline.save_pretrained(tmp_path / "full")
    card = tmp_path / "card.md"
    card.write_text("# tiny\n")
    export_checkpoint(tmp_path / "full", tmp_path / "half", model_card=card, default_guidance_scale=2.5)
    exported_card = ModelCard.load(tmp_path / "half" / "README.md")  # the card's text kept, its metadata completed
    assert exported_card.text == "# tiny\n" and exported_card.data.library_name == "hf_t2i"
    # the empty caption for stock generate()'s guidance: ids only (a decoder-only prior's pads are never masked)
    generation = json.loads((tmp_path / "half" / "generation_config.json").read_text())
    empty = dalle_pipeline.processor(text=[""], return_tensors="pt")["input_ids"][0].tolist()
    assert generation["unconditional_input_ids"] == empty and "unconditional_attention_mask" not in generation
    full_size = (tmp_path / "full" / "model.safetensors").stat().st_size
    half_size = (tmp_path / "half" / "model.safetensors").stat().st_size
    assert half_size < 0.6 * full_size
    reloaded = T2IPipeline.from_pretrained(tmp_path / "half")  # configs say float32: computed in float32
    assert reloaded.model.dtype == torch.float32
    greedy = {"do_sample": False, "guidance_scale": 1.0}
    expected = run(dalle_pipeline, **greedy)
    # greedy codes survive the fp16 round trip of a tiny random model; pixels then match to fp16 precision
    np.testing.assert_allclose(run(reloaded, **greedy), expected, atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="model_index.json"):
        export_checkpoint(tmp_path / "card.md", tmp_path / "x")
    with pytest.raises(ValueError, match=r"`default_guidance_interval` \(\(0.2, 1.0\)\).*DallePipeline"):
        export_checkpoint(tmp_path / "full", tmp_path / "x", default_guidance_interval=(0.2, 1.0))
    assert not (tmp_path / "x").exists()
    # the card's guidance scale is the folder's: a call without `guidance_scale` uses it, an explicit one wins
    assert json.loads((tmp_path / "half" / "model_index.json").read_text())["default_guidance_scale"] == 2.5
    unnamed = T2IPipeline.from_pretrained(tmp_path / "full")  # a folder that names no scale
    assert unnamed.guidance_scale_or_default(None) == 1.0 and unnamed.guidance_scale_or_default(None, 3.0) == 3.0
    assert reloaded.guidance_scale_or_default(None, fallback=3.0) == 2.5  # the folder's scale comes first
    np.testing.assert_array_equal(run(reloaded), run(reloaded, guidance_scale=2.5))
    assert not np.array_equal(run(reloaded), run(reloaded, guidance_scale=1.0))
    reloaded.save_pretrained(tmp_path / "again")  # kept by a save / load round trip
    assert T2IPipeline.from_pretrained(tmp_path / "again").config.default_guidance_scale == 2.5
    with pytest.raises(ValueError, match="default_guidance_scale.*-1"):
        DallePipeline(reloaded.model, reloaded.processor, default_guidance_scale=-1)
