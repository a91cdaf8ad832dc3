import json

import numpy as np
import pytest
import torch
from transformers import pipeline

from hf_t2i import (
    AutoModelForTextToImage,
    PartiForConditionalGeneration,
    PartiPipeline,
    PartiProcessor,
    T2IImageProcessor,
    T2IPipeline,
    ViTVQGANUpsampler,
)

from ..models.test_parti import tiny_parti_config


@pytest.fixture
def parti_pipeline(tokenizer):
    torch.manual_seed(0)
    config = tiny_parti_config(text_vocab_size=len(tokenizer), text_seq_len=tokenizer.model_max_length)
    model = PartiForConditionalGeneration(config).eval()
    processor = PartiProcessor(T2IImageProcessor(image_size=32), tokenizer)
    upsampler = ViTVQGANUpsampler.from_tokenizer(
        model.vqmodel, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).eval()
    pipe = PartiPipeline(model=model, processor=processor, upsampler=upsampler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt="a red circle", seed=0, **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


def test_images_seeded_guided_and_super_resolved(parti_pipeline):
    a = run(parti_pipeline, seed=1, guidance_scale=3.0, top_k=16)
    assert a.shape == (1, 32, 32, 3)
    assert np.array_equal(a, run(parti_pipeline, seed=1, guidance_scale=3.0, top_k=16))
    assert not np.array_equal(a, run(parti_pipeline, seed=2, guidance_scale=3.0, top_k=16))
    big = run(parti_pipeline, seed=1, guidance_scale=3.0, top_k=16, super_resolution=True)
    assert big.shape == (1, 64, 64, 3)


def test_negative_prompt_changes_the_unconditional_branch(parti_pipeline):
    a = run(parti_pipeline, guidance_scale=5.0, do_sample=False)
    b = run(parti_pipeline, guidance_scale=5.0, do_sample=False, negative_prompt="two blue squares")
    assert not np.array_equal(a, b)


def test_save_load_all_three_entry_points(parti_pipeline, tmp_path):
    parti_pipeline.save_pretrained(tmp_path)
    expected = run(parti_pipeline, seed=3, guidance_scale=2.0)
    loaded = T2IPipeline.from_pretrained(tmp_path)
    assert type(loaded) is PartiPipeline and loaded.upsampler is not None
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(run(loaded, seed=3, guidance_scale=2.0), expected)
    assert np.array_equal(
        run(loaded, seed=3, super_resolution=True), run(parti_pipeline, seed=3, super_resolution=True)
    )
    assert type(AutoModelForTextToImage.from_pretrained(tmp_path)) is PartiForConditionalGeneration
    image = pipeline("text-to-image", model=str(tmp_path))(
        "a red circle", generator=torch.Generator().manual_seed(3), guidance_scale=2.0
    )
    assert np.abs(np.asarray(image, dtype=np.float32) / 255 - expected[0]).max() <= 1 / 255 + 1e-6
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.safetensors")) == [
        "model.safetensors",
        "upsampler/model.safetensors",
    ]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": "a red circle " * 10}, "prompt"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 2.0}, "top_p"),
        ({"height": 64}, "height"),
        ({"num_candidates": 2}, "scorer"),
    ],
)
def test_bad_input_names_the_argument(parti_pipeline, kwargs, name):
    with pytest.raises(ValueError, match=name):
        parti_pipeline(**{"prompt": "a red circle", **kwargs})


def test_super_resolution_needs_an_upsampler(parti_pipeline):
    pipe = PartiPipeline(model=parti_pipeline.model, processor=parti_pipeline.processor)
    with pytest.raises(ValueError, match="upsampler"):
        pipe("a red circle", super_resolution=True)


def test_export_stores_the_chosen_temperature_where_every_sampler_reads_it(parti_pipeline, tmp_path):
    """`hf-t2i export --default-temperature T` writes T into the prior's generation_config.json: the exported
    pipeline then samples as a call with `temperature=T`; other families refuse the option, bad values are named."""
    from hf_t2i.cli import main
    from hf_t2i.export import export_checkpoint

    parti_pipeline.save_pretrained(tmp_path / "full")
    assert main(["export", str(tmp_path / "full"), str(tmp_path / "t05"), "--default-temperature", "0.5"]) == 0
    exported = PartiPipeline.from_pretrained(tmp_path / "t05", dtype=torch.float32)
    exported.set_progress_bar_config(disable=True)
    assert exported.model.generation_config.temperature == 0.5
    kwargs = dict(guidance_scale=2.0, output_type="latent")
    chosen = exported("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    explicit = exported("a red circle", generator=torch.Generator().manual_seed(0), temperature=0.5, **kwargs).images
    torch.testing.assert_close(chosen, explicit, rtol=0, atol=0)
    with pytest.raises(ValueError, match="temperature"):
        export_checkpoint(tmp_path / "full", tmp_path / "bad", default_temperature=0.0)
    assert not (tmp_path / "bad").exists()


def test_export_stores_the_empty_caption_for_stock_generate(parti_pipeline, tmp_path):
    """`hf-t2i export` writes the processor's empty caption into the generation config (ids and the text encoder's
    mask), so stock `generate(..., guidance_scale=s)` on the exported model needs no `negative_prompt_ids`."""
    from hf_t2i.export import export_checkpoint

    parti_pipeline.save_pretrained(tmp_path / "full")
    export_checkpoint(tmp_path / "full", tmp_path / "half")
    model = PartiForConditionalGeneration.from_pretrained(tmp_path / "half")
    empty = parti_pipeline.processor(text=[""], return_tensors="pt")
    assert model.generation_config.unconditional_input_ids == empty["input_ids"][0].tolist()
    assert model.generation_config.unconditional_attention_mask == empty["attention_mask"][0].tolist()
    prompt = parti_pipeline.processor(text=["a red circle"], return_tensors="pt")
    torch.manual_seed(0)
    guided = model.generate(**prompt, guidance_scale=3.0)
    torch.manual_seed(0)
    explicit = model.generate(
        **prompt,
        guidance_scale=3.0,
        negative_prompt_ids=empty["input_ids"],
        negative_prompt_attention_mask=empty["attention_mask"],
    )
    torch.testing.assert_close(guided, explicit, rtol=0, atol=0)


def _draws_the_same_tokens_through(folder, tokenizer, original):
    """Load the exported `folder`; check that its prior draws `original`'s tokens (seed 0) and that they decode as
    `tokenizer` (stored in float16) decodes them. Returns (pipeline, tokens, those pixels)."""
    exported = PartiPipeline.from_pretrained(folder, dtype=torch.float32)
    exported.set_progress_bar_config(disable=True)
    tokens = exported("a red circle", generator=torch.Generator().manual_seed(0), output_type="latent").images
    before = original("a red circle", generator=torch.Generator().manual_seed(0), output_type="latent").images
    torch.testing.assert_close(tokens, before, rtol=0, atol=0)
    with torch.no_grad():
        expected = tokenizer.half().float().decode(tokens)
        torch.testing.assert_close(exported.model.decode_image_tokens(tokens), expected, rtol=0, atol=1e-5)
    return exported, tokens, expected


def test_export_puts_a_decoder_fine_tune_into_the_prior(parti_pipeline, tmp_path):
    """`hf-t2i export --image-tokenizer DIR` replaces the nested ViT-VQGAN with a decoder-only fine-tune of it: the
    prior and its tokens stay, the pictures come from the new decoder. A tokenizer that encodes otherwise (another
    setting, or an encoder weight changed) is refused, naming the argument, and nothing is written."""
    import copy

    from hf_t2i.cli import main
    from hf_t2i.export import export_checkpoint

    parti_pipeline.save_pretrained(tmp_path / "full")
    tuned = copy.deepcopy(parti_pipeline.model.vqmodel)
    with torch.no_grad():
        for parameter in tuned.decoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    tuned.save_pretrained(tmp_path / "tuned")
    assert (
        main(["export", str(tmp_path / "full"), str(tmp_path / "new"), "--image-tokenizer", str(tmp_path / "tuned")])
        == 0
    )
    exported, tokens, expected = _draws_the_same_tokens_through(tmp_path / "new", tuned, parti_pipeline)
    with torch.no_grad():
        assert not torch.allclose(parti_pipeline.model.decode_image_tokens(tokens), expected, atol=1e-3)

    # a float16 folder holds its encoder rounded; the float32 fine-tune fits it, since its encoder rounds the same
    # way, and the folder written keeps its encoder; kept in float32, that rounding would be a change: refused
    assert not all(
        torch.equal(p, p.half().float()) for p in parti_pipeline.model.vqmodel.encoder.parameters()
    )  # else this checks nothing
    export_checkpoint(tmp_path / "new", tmp_path / "again", image_tokenizer=tmp_path / "tuned")
    again = PartiPipeline.from_pretrained(tmp_path / "again", dtype=torch.float32)
    torch.testing.assert_close(again.model.vqmodel.state_dict(), exported.model.vqmodel.state_dict(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="`image_tokenizer`.*does not encode as the folder's `vqmodel`.*encoder"):
        export_checkpoint(tmp_path / "new", tmp_path / "bad", dtype=torch.float32, image_tokenizer=tmp_path / "tuned")

    # the same weights under another setting encode otherwise too (a weights-only check would let it through)
    other_activation = copy.deepcopy(tuned)
    other_activation.config.hidden_act = "relu" if tuned.config.hidden_act != "relu" else "gelu"
    other_activation.save_pretrained(tmp_path / "relu")
    with pytest.raises(ValueError, match="`image_tokenizer`.*other settings.*hidden_act"):
        export_checkpoint(tmp_path / "full", tmp_path / "bad", image_tokenizer=tmp_path / "relu")
    with torch.no_grad():
        tuned.encoder.patch_embedding.weight.add_(1.0)
    tuned.save_pretrained(tmp_path / "retrained")
    with pytest.raises(ValueError, match="`image_tokenizer`.*does not encode as the folder's `vqmodel`.*encoder"):
        export_checkpoint(tmp_path / "full", tmp_path / "bad", image_tokenizer=tmp_path / "retrained")
    assert not (tmp_path / "bad").exists()


def test_export_puts_a_larger_decoder_into_the_prior(parti_pipeline, tmp_path):
    """Parti's larger decoder (`ViTVQGAN.with_decoder`, then trained): the export replaces the nested tokenizer, its
    sizes go into the prior's `vq_config`, and the folder loads with them; the prior's tokens stay."""
    from hf_t2i.export import export_checkpoint

    parti_pipeline.save_pretrained(tmp_path / "full")
    nested = parti_pipeline.model.vqmodel
    layers = nested.config.decoder_num_hidden_layers
    larger = nested.with_decoder(decoder_num_hidden_layers=layers + 2)
    with torch.no_grad():
        for parameter in larger.decoder.layers[layers:].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    larger.save_pretrained(tmp_path / "larger")
    export_checkpoint(tmp_path / "full", tmp_path / "new", image_tokenizer=tmp_path / "larger")
    exported, _, _ = _draws_the_same_tokens_through(tmp_path / "new", larger, parti_pipeline)
    config = exported.model.config.vq_config  # as read back from the folder's config.json
    assert config.decoder_num_hidden_layers == layers + 2 and config._name_or_path == nested.config._name_or_path
    assert len(exported.model.vqmodel.decoder.layers) == layers + 2


def test_export_stores_an_upsampler_that_decodes_the_priors_tokens(parti_pipeline, tmp_path, capsys):
    """`hf-t2i export --upsampler DIR` stores a `vit_vqgan_upsampler` folder as the pipeline's super-resolution
    stage, and `hf-t2i generate --super-resolution` then draws at twice the size. An upsampler of another tokenizer,
    or a folder of another model, is refused, naming the argument, and nothing is written."""
    from PIL import Image

    from hf_t2i.cli import main
    from hf_t2i.export import export_checkpoint
    from hf_t2i.models.vit_vqgan import ViTVQGAN

    bare = PartiPipeline(model=parti_pipeline.model, processor=parti_pipeline.processor)
    bare.save_pretrained(tmp_path / "full")
    upsampler = ViTVQGANUpsampler.from_tokenizer(parti_pipeline.model.vqmodel, copy_decoder=True).eval()
    with torch.no_grad():
        for parameter in upsampler.decoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    upsampler.save_pretrained(tmp_path / "up")
    new = str(tmp_path / "new")
    assert main(["export", str(tmp_path / "full"), new, "--upsampler", str(tmp_path / "up")]) == 0

    exported = PartiPipeline.from_pretrained(new, dtype=torch.float32)
    exported.set_progress_bar_config(disable=True)
    tokens = exported("a red circle", generator=torch.Generator().manual_seed(0), output_type="latent").images
    big = exported(
        "a red circle", generator=torch.Generator().manual_seed(0), super_resolution=True, output_type="pt"
    ).images
    with torch.no_grad():
        expected = (upsampler.half().float().decode(tokens) + 1) / 2  # the folder stores it in float16
    assert big.shape == (1, 3, 64, 64)
    torch.testing.assert_close(big, expected, rtol=0, atol=1e-5)

    out = tmp_path / "big.png"
    argv = ["generate", "a red circle", "--upscale", "1", "--super-resolution", "--output", str(out)]
    assert main([*argv, "--model", new]) == 0
    assert Image.open(out).size == (64, 64)
    assert main([*argv, "--model", str(tmp_path / "full")]) == 2  # a folder without one says so
    assert "`super_resolution=True` needs an `upsampler` component" in capsys.readouterr().err

    other = ViTVQGANUpsampler.from_tokenizer(ViTVQGAN(parti_pipeline.model.vqmodel.config))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="`upsampler`.*another codebook"):
        export_checkpoint(tmp_path / "full", tmp_path / "bad", upsampler=tmp_path / "other")
    parti_pipeline.model.vqmodel.save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(ValueError, match="`upsampler`.*holds a 'vit_vqgan' model"):
        export_checkpoint(tmp_path / "full", tmp_path / "bad", upsampler=tmp_path / "tokenizer")
    assert not (tmp_path / "bad").exists()


def test_eval_super_resolution_scores_against_scenes_rendered_at_the_doubled_size(parti_pipeline, tmp_path):
    """`hf-t2i eval --super-resolution` draws through the upsampler and scores against the same scenes rendered at
    the doubled size (not the processor's renders resized), so its FID compares 2x pictures with real ones."""
    from hf_t2i.cli import main
    from hf_t2i.data import build_shapes_dataset
    from hf_t2i.evaluation import evaluate_pipeline
    from hf_t2i.evaluation import runner as eval_runner

    from ..evaluation.test_runner import PooledColours

    seen = {}
    original = eval_runner._fid

    def spy(real_images, images, *args):
        seen["real"], seen["generated"] = real_images, images
        return original(real_images, images, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(eval_runner, "_fid", spy)
        report = evaluate_pipeline(
            parti_pipeline,
            "shapes",
            num_images=3,
            batch_size=3,
            metrics="compositional,fid",
            fid_cache_dir=str(tmp_path / "fid"),
            fid_feature_extractor=PooledColours(),
            progress=False,
            super_resolution=True,
        )
    settings = report["settings"]
    assert settings["image_size"] == 64 and settings["pipeline_kwargs"] == {"super_resolution": True}
    assert [image.size for image in seen["generated"]] == [(64, 64)] * 3
    for real, rendered in zip(seen["real"], build_shapes_dataset(3, "test", 64)["image"], strict=True):
        np.testing.assert_array_equal(np.asarray(real), np.asarray(rendered.convert("RGB")))

    parti_pipeline.save_pretrained(tmp_path / "parti")
    argv = ["eval", "--model", str(tmp_path / "parti"), "--dataset", "shapes", "--num-images", "2"]
    argv += ["--batch-size", "2", "--metrics", "compositional", "--output-dir", str(tmp_path / "eval")]
    assert main([*argv, "--super-resolution"]) == 0
    settings = json.loads((tmp_path / "eval" / "report.json").read_text())["settings"]
    assert settings["image_size"] == 64 and settings["pipeline_kwargs"] == {"super_resolution": True}
