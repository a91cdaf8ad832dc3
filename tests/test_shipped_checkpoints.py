"""The checkpoints shipped inside the package load offline from their short name and draw a seeded picture of the
training size, the same picture for the same seed, with real content (not a flat image)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from hf_t2i.checkpoints import SHIPPED_CHECKPOINTS, resolve_checkpoint
from hf_t2i.pipelines import T2IPipeline


PROMPT = "a red circle left of a blue square"
# short name -> (pipeline class, image size, call options that keep the test well under 10 s on a 2-core CPU); no
# `guidance_scale`: each draws at its folder's `default_guidance_scale`, the scale its model card reports
SHIPPED = {
    "dalle": ("DallePipeline", 64, {}),
    "parti": ("PartiPipeline", 64, {}),
    "fluid": ("FluidPipeline", 64, {"num_inference_steps": 16, "num_diffusion_steps": 25}),
    "transfusion": ("TransfusionPipeline", 64, {"num_inference_steps": 20}),
    "muse": ("MusePipeline", 64, {}),
    "dalle-emoji": ("DallePipeline", 32, {}),
}


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def shipped(request):
    name = request.param
    pipe = T2IPipeline.from_pretrained(resolve_checkpoint(name), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return name, pipe


def _draw(pipe, options, seed):
    generator = torch.Generator().manual_seed(seed)
    return pipe(PROMPT, generator=generator, output_type="np", **options).images[0]  # (H, W, 3) in [0, 1]


def test_registered():
    for name in SHIPPED:
        assert name in SHIPPED_CHECKPOINTS


def test_shipped_checkpoint_draws_a_seeded_picture(shipped):
    name, pipe = shipped
    class_name, size, options = SHIPPED[name]
    assert type(pipe).__name__ == class_name
    image = _draw(pipe, options, seed=0)
    assert image.shape == (size, size, 3)
    assert np.isfinite(image).all()
    # a trained model draws shapes on a background: pixel values spread, not one flat colour
    assert image.std() > 0.05
    np.testing.assert_array_equal(image, _draw(pipe, options, seed=0))
    assert not np.array_equal(image, _draw(pipe, options, seed=1))


#: the folders that hold a reranking scorer (`hf-t2i export --rerank-scorer`)
RERANKING = {"dalle", "parti", "fluid", "transfusion"}


def test_shipped_reranking_folders_keep_the_candidate_their_scorer_prefers(shipped):
    name, pipe = shipped
    if name not in RERANKING:
        assert getattr(pipe, "scorer", None) is None
        return
    from hf_t2i.pipelines.reranking import clip_scores

    options = SHIPPED[name][2]
    both = pipe(
        PROMPT, num_images_per_prompt=2, generator=torch.Generator().manual_seed(0), output_type="pt", **options
    )
    kept = pipe(PROMPT, num_candidates=2, generator=torch.Generator().manual_seed(0), output_type="pt", **options)
    scores = clip_scores(pipe.scorer, pipe.scorer_processor, [PROMPT], both.images * 2 - 1)  # pixels in [-1, 1]
    torch.testing.assert_close(kept.images[0], both.images[int(scores.argmax())])
    torch.testing.assert_close(kept.scores, scores.max()[None], atol=1e-4, rtol=0)


def test_shipped_transfusion_captions_an_image(shipped):
    name, pipe = shipped
    if name != "transfusion":
        pytest.skip("captioning is Transfusion's")
    from hf_t2i.data import build_shapes_dataset

    image = build_shapes_dataset(1, "test", 64)[0]["image"]
    caption = pipe.caption(image, max_new_tokens=16)[0]
    assert isinstance(caption, str) and caption.strip()


def test_shipped_parti_upsampler_beats_bicubic_upsampling(shipped):
    """The parti folder's 2x upsampler (Parti's super-resolution stage, `super_resolution=True`): from the tokens of
    32 validation scenes at 64 px it decodes 128 px images closer to the scenes rendered at 128 px than the
    tokenizer's own reconstructions upsampled bicubically (the bar its model card shipped it under)."""
    name, pipe = shipped
    if name != "parti":
        assert getattr(pipe, "upsampler", None) is None
        return
    import math

    import torch.nn.functional as F

    from hf_t2i.data import build_shapes_dataset
    from hf_t2i.image_processing import T2IImageProcessor

    big = _draw(pipe, {"super_resolution": True}, seed=0)
    assert big.shape == (128, 128, 3) and big.std() > 0.05
    images = list(build_shapes_dataset(32, "validation", 128)["image"])
    high = T2IImageProcessor(image_size=128)(images, return_tensors="pt")["pixel_values"]
    low = T2IImageProcessor(image_size=64)(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = pipe.model.vqmodel.encode(low)
        ours = pipe.upsampler.decode(tokens)
        bicubic = F.interpolate(pipe.model.vqmodel.decode(tokens), size=128, mode="bicubic").clamp(-1, 1)

    def psnr(images):  # pixels in [0, 1]
        return -10 * math.log10((((images - high) / 2) ** 2).mean().item())

    assert psnr(ours) > psnr(bicubic) + 0.5  # 29.3 against 27.6 dB when written


def test_cli_generate_guides_each_shipped_checkpoint_with_its_own_scale(tmp_path, monkeypatch):
    """`hf-t2i generate` (the README's main command) draws with the shipped Fluid at the guidance its card chose on
    validation unless told; another shipped checkpoint gets its own scale (by name or path: the folder names it), a
    folder that names none the generic one."""
    import functools

    from PIL import Image

    from hf_t2i.checkpoints import DEFAULT_CHECKPOINT
    from hf_t2i.cli import DEFAULT_GUIDANCE_SCALE, main
    from hf_t2i.pipelines.dalle.pipeline_dalle import DallePipeline
    from hf_t2i.pipelines.fluid.pipeline_fluid import FluidPipeline
    from hf_t2i.pipelines.muse.pipeline_muse import MusePipeline
    from hf_t2i.pipelines.parti.pipeline_parti import PartiPipeline

    seen = []
    for cls in (DallePipeline, PartiPipeline, FluidPipeline, MusePipeline):
        original = cls.__call__

        @functools.wraps(original)  # keeps the signature the CLI inspects
        def spy(self, *args, _original=original, **kwargs):
            seen.append((type(self).__name__, kwargs.get("guidance_scale")))
            if kwargs.get("num_candidates"):  # reranked: the folder's own scorer ranked the candidates
                assert self.scorer is not None and kwargs["num_candidates"] == 2
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", spy)
    assert DEFAULT_CHECKPOINT == "fluid"
    assert main(["generate", PROMPT, "--output", str(tmp_path / "a.png"), "--upscale", "1"]) == 0
    assert main(["generate", PROMPT, "--output", str(tmp_path / "b.png"), "--guidance-scale", "1"]) == 0
    assert main(["generate", PROMPT, "--model", "parti", "--output", str(tmp_path / "g.png")]) == 0
    assert main(["generate", PROMPT, "--model", "dalle", "--output", str(tmp_path / "c.png")]) == 0
    assert main(["generate", PROMPT, "--model", resolve_checkpoint("dalle"), "--output", str(tmp_path / "d.png")]) == 0
    # the dalle folder holds its reranking scorer: best of 2, at the folder's scale
    assert (
        main(["generate", PROMPT, "--model", "dalle", "--num-candidates", "2", "--output", str(tmp_path / "f.png")])
        == 0
    )
    unnamed = tmp_path / "unnamed"  # a copy whose model_index.json names no scale, as an older save
    shutil.copytree(resolve_checkpoint("muse"), unnamed)
    index = json.loads((unnamed / "model_index.json").read_text())
    index["default_guidance_scale"] = None
    (unnamed / "model_index.json").write_text(json.dumps(index))
    assert main(["generate", PROMPT, "--model", str(unnamed), "--output", str(tmp_path / "e.png")]) == 0
    assert seen == [
        ("FluidPipeline", folder_scale("fluid")),
        ("FluidPipeline", 1.0),
        ("PartiPipeline", folder_scale("parti")),
        ("DallePipeline", folder_scale("dalle")),
        ("DallePipeline", folder_scale("dalle")),
        ("DallePipeline", folder_scale("dalle")),
        ("MusePipeline", DEFAULT_GUIDANCE_SCALE),
    ]
    assert Image.open(tmp_path / "a.png").size == (64, 64)
    assert Image.open(tmp_path / "b.png").size == (256, 256)  # upscaled 4x by default
    assert Image.open(tmp_path / "c.png").size == (256, 256)


def test_every_shipped_checkpoint_is_guided_with_the_scale_its_card_reports():
    """Each shipped folder's `default_guidance_scale` (what its pipeline and the command line use unless told) is
    the one its model card's numbers were measured at, and the loaded pipeline uses it."""
    import os
    import re

    import yaml

    for name in SHIPPED_CHECKPOINTS:
        scale = folder_scale(name)
        with open(os.path.join(resolve_checkpoint(name), "README.md"), encoding="utf-8") as f:
            metadata = f.read().split("---")[1]  # the YAML front matter (model-index)
        assert set(re.findall(r"guidance_scale: ([0-9.]+)", metadata)) == {str(scale)}, name
        # a folder that guides only some of the steps (`default_guidance_interval`) names that interval with its
        # numbers, and a folder that guides every step names none
        with open(os.path.join(resolve_checkpoint(name), "model_index.json"), encoding="utf-8") as f:
            interval = json.load(f).get("default_guidance_interval")
        results = yaml.safe_load(metadata)["model-index"][0]["results"]
        named = {tuple(m["args"].get("guidance_interval", ())) for r in results for m in r["metrics"]}
        assert named == {tuple(interval or ())}, name
    pipe = T2IPipeline.from_pretrained(resolve_checkpoint("parti"))
    assert pipe.config.default_guidance_scale == folder_scale("parti")
    assert pipe.guidance_scale_or_default(None) == folder_scale("parti") and pipe.guidance_scale_or_default(2) == 2


def folder_scale(name: str) -> float:
    """The `default_guidance_scale` a shipped folder's model_index.json names."""
    with open(os.path.join(resolve_checkpoint(name), "model_index.json"), encoding="utf-8") as f:
        return json.load(f)["default_guidance_scale"]


def test_every_shipped_checkpoint_shows_its_samples():
    """Each folder's model card shows the grid that `hf-t2i grid` drew from it (README.md links samples.png)."""
    import os

    from PIL import Image

    for name in SHIPPED_CHECKPOINTS:
        path = resolve_checkpoint(name)
        with Image.open(os.path.join(path, "samples.png")) as grid:
            assert grid.width > 256 and grid.height > 256
        with open(os.path.join(path, "README.md"), encoding="utf-8") as f:
            card = f.read()
        assert "](samples.png)" in card and f"hf-t2i grid --model {name}" in card
