"""diffusers' `PipelineTesterMixin` behaviours that the per-family pipeline tests leave out, once over the five
pipelines: `output_type` ("pt", "np", "pil" are one image), `return_dict=False` (the tuple holds the dict's images),
`callback_on_step_end` (every step, in order, with the tensor it names; observing changes nothing) and dtype
(`pipe.to(dtype)`, and `save_pretrained` -> `from_pretrained(dtype=...)` keeps the images).

Covered elsewhere, so not repeated here: save / load through the three entry points (each family's
`test_save_load_all_three_entry_points`), batch vs single and `num_images_per_prompt` (image i of a batch with a
generator list is the one-image call with generator i, `test_diffusers_conventions`), `output_type="latent"` and
`prompt_embeds` (the same module), and Transfusion's callback that replaces the latents (`test_transfusion_pipeline`).
Tiny pipelines (those of `test_diffusers_conventions`), seeded, offline.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from .test_diffusers_conventions import FAMILIES, SETTINGS, pipes, seeded  # noqa: F401 (`pipes` is a fixture)


PROMPTS = ["a red circle", "two blue squares"]
#: callback steps of one call with SETTINGS: one per image token (raster families) or per iteration / denoising step
STEPS = {"dalle": 64, "parti": 16, "fluid": 4, "transfusion": 3, "muse": 4}


class PipelineConventionsMixin:
    """The checks, for the pipeline of `family` (one subclass per family below)."""

    family: str

    @pytest.fixture
    def pipe(self, pipes):  # noqa: F811 (the imported fixture)
        return pipes(self.family)

    def call(self, pipe, generator_seed: int = 0, **kwargs):
        return pipe(PROMPTS, generator=seeded(generator_seed), **{**SETTINGS[self.family], **kwargs})

    def test_output_types_are_one_image(self, pipe):
        pt = self.call(pipe, output_type="pt").images
        np_images = self.call(pipe, output_type="np").images
        pil = self.call(pipe, output_type="pil").images
        size = pt.shape[-1]
        assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, size, size) and pt.dtype == torch.float32
        assert pt.min() >= 0 and pt.max() <= 1
        assert isinstance(np_images, np.ndarray) and np_images.shape == (2, size, size, 3)
        np.testing.assert_array_equal(np_images, pt.permute(0, 2, 3, 1).numpy())
        assert isinstance(pil, list) and len(pil) == 2
        for image, array in zip(pil, np_images):
            assert isinstance(image, PIL.Image.Image) and image.mode == "RGB" and image.size == (size, size)
            np.testing.assert_array_equal(np.asarray(image), (array * 255).round().astype(np.uint8))
        assert not np.array_equal(np_images[0], np_images[1])  # two prompts, two pictures

    def test_tuple_output_holds_the_dict_output(self, pipe):
        as_dict = self.call(pipe, output_type="pt")
        as_tuple = self.call(pipe, output_type="pt", return_dict=False)
        assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
        torch.testing.assert_close(as_tuple[0], as_dict.images, rtol=0, atol=0)
        torch.testing.assert_close(as_dict[0], as_dict.images, rtol=0, atol=0)  # diffusers' `output[0]`

    def test_callback_sees_every_step_and_observing_changes_nothing(self, pipe):
        assert pipe._callback_tensor_inputs == ["latents"]
        seen = []

        def callback(p, i, t, callback_kwargs):
            assert p is pipe
            seen.append((i, sorted(callback_kwargs), callback_kwargs["latents"].clone()))
            return callback_kwargs

        plain = self.call(pipe, output_type="pt").images
        observed = self.call(
            pipe,
            output_type="pt",
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs,
        ).images
        assert [i for i, _, _ in seen] == list(range(STEPS[self.family]))
        assert all(keys == ["latents"] for _, keys, _ in seen)
        assert all(latents.shape[0] == len(PROMPTS) for _, _, latents in seen)  # one row per image
        assert not torch.equal(seen[0][2], seen[-1][2])  # the tensor the callback sees is the one being decoded
        torch.testing.assert_close(observed, plain, rtol=0, atol=0)

    def test_callback_tensor_inputs_outside_the_list_name_the_argument(self, pipe):
        with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
            self.call(
                pipe, callback_on_step_end=lambda *args: {}, callback_on_step_end_tensor_inputs=["prompt_embeds"]
            )

    def test_dtype_follows_to_and_survives_save_load(self, pipe, tmp_path):
        pipe.save_pretrained(tmp_path / "float32")
        low = type(pipe).from_pretrained(tmp_path / "float32")
        low.set_progress_bar_config(disable=True)
        low.to(torch.bfloat16)
        assert low.dtype == torch.bfloat16
        assert {p.dtype for p in low.model.parameters()} == {torch.bfloat16}
        images = self.call(low, output_type="pt").images
        assert images.dtype == torch.float32 and torch.isfinite(images).all()  # postprocessed in float32
        low.save_pretrained(tmp_path / "bfloat16")
        loaded = type(pipe).from_pretrained(tmp_path / "bfloat16", dtype=torch.bfloat16)
        loaded.set_progress_bar_config(disable=True)
        assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
        torch.testing.assert_close(self.call(loaded, output_type="pt").images, images, rtol=0, atol=0)
        assert pipe.dtype == torch.float32  # the shared pipeline was copied, not changed


class TestDallePipelineConventions(PipelineConventionsMixin):
    family = "dalle"


class TestPartiPipelineConventions(PipelineConventionsMixin):
    family = "parti"


class TestFluidPipelineConventions(PipelineConventionsMixin):
    family = "fluid"


class TestTransfusionPipelineConventions(PipelineConventionsMixin):
    family = "transfusion"


class TestMusePipelineConventions(PipelineConventionsMixin):
    family = "muse"


def test_every_family_is_checked():
    checked = {cls.family for cls in PipelineConventionsMixin.__subclasses__()}
    assert checked == set(FAMILIES) == set(STEPS)
