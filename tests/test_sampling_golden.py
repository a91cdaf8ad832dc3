"""Seeded samples stay what they were when the fixtures were written.

Refactors of the sampling code (where decoding strategies live, who owns the loop) must not change the math. These
tests pin, for fixed seeds and settings that exercise guidance schedules and sampling filters:
- the images of every shipped checkpoint, to within 2/255 per pixel (CPU kernels of other torch builds may differ in
  the last bits);
- the tokens of tiny random Fluid models in the cells the shipped one does not cover (raster order, discrete tokens,
  class-conditional MAR), to within 1e-4.

A change that is meant to alter samples (a retrained checkpoint, a fixed bug) rewrites the fixtures:
`HF_T2I_UPDATE_GOLDEN=1 python -m pytest tests/test_sampling_golden.py`, and says why in its commit message.
`HF_T2I_UPDATE_GOLDEN=muse` (checkpoint or case names, comma-separated) rewrites only those entries and keeps the
others byte for byte: a full rewrite would also record the other checkpoints' harmless last-bit drift.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_t2i.checkpoints import resolve_checkpoint
from hf_t2i.layers.diffusion_head import DiffusionHeadScheduler
from hf_t2i.pipelines import T2IPipeline


FIXTURE = Path(__file__).parent / "fixtures" / "shipped_golden.npz"
TINY_FIXTURE = Path(__file__).parent / "fixtures" / "tiny_fluid_golden.npz"
UPDATE = os.environ.get("HF_T2I_UPDATE_GOLDEN", "")  # see the module docstring
UPDATING = UPDATE not in ("", "0")
PROMPTS = ["a red circle left of a blue square", "two green triangles"]
# case name -> (shipped checkpoint, call options)
CASES = {
    "dalle-guided": ("dalle", {"guidance_scale": 3.0}),
    "dalle-linear-topk": (
        "dalle",
        {"guidance_scale": 3.0, "guidance_schedule": "linear", "top_k": 32, "temperature": 0.9},
    ),
    "parti-guided": ("parti", {"guidance_scale": 3.0}),
    "parti-linear-topp": ("parti", {"guidance_scale": 3.0, "guidance_schedule": "linear", "top_p": 0.9}),
    # the shipped head sampler and steps (its DDPM, the folder's `num_diffusion_steps`), then shorter DDPM runs
    "fluid-default": ("fluid", {"guidance_scale": 3.0}),
    "fluid-guided": (
        "fluid",
        {"num_inference_steps": 16, "num_diffusion_steps": 25, "guidance_scale": 3.0, "head_scheduler": "ddpm"},
    ),
    "fluid-linear": (
        "fluid",
        {
            "num_inference_steps": 8,
            "num_diffusion_steps": 10,
            "guidance_scale": 3.0,
            "guidance_schedule": "linear",
            "temperature": 0.9,
            "head_scheduler": "ddpm",
        },
    ),
    "transfusion-guided": (
        "transfusion",
        {"num_inference_steps": 20, "guidance_scale": 3.0, "guidance_interval": (0.0, 1.0)},
    ),
    # the folder's own guidance: its scale on the steps inside its `default_guidance_interval` only
    "transfusion-default": ("transfusion", {"num_inference_steps": 20}),
    "transfusion-unguided": ("transfusion", {"num_inference_steps": 10, "guidance_scale": 1.0}),
    "muse-guided": ("muse", {"guidance_scale": 3.0}),
    "muse-linear-topk": (
        "muse",
        {"guidance_scale": 3.0, "guidance_schedule": "linear", "top_k": 64, "num_inference_steps": 8},
    ),
    "muse-greedy-confidence": ("muse", {"guidance_scale": 3.0, "choice_temperature": 0.0, "temperature": 0.8}),
}


@pytest.fixture(scope="module")
def pipelines():
    loaded = {}

    def get(name):
        if name not in loaded:
            pipe = T2IPipeline.from_pretrained(resolve_checkpoint(name), dtype=torch.float32)
            pipe.set_progress_bar_config(disable=True)
            loaded[name] = pipe
        return loaded[name]

    return get


def draw(pipe, options) -> np.ndarray:
    options = dict(options)
    if options.pop("head_scheduler", None) == "ddpm":  # Fluid: swapped the diffusers way, for this draw only
        shipped_scheduler = pipe.scheduler
        pipe.scheduler = DiffusionHeadScheduler.from_config(shipped_scheduler.config)
        try:
            return draw(pipe, options)
        finally:
            pipe.scheduler = shipped_scheduler
    generator = torch.Generator().manual_seed(0)
    images = pipe(PROMPTS, num_images_per_prompt=2, generator=generator, output_type="np", **options).images
    return np.round(np.stack(images) * 255).astype(np.uint8)  # (4, H, W, 3)


def selectors(cases: dict) -> dict[str, set[str]]:
    """Each name `HF_T2I_UPDATE_GOLDEN` may use for these cases -> the cases it selects: a case's own name, and
    the name of a shipped checkpoint (all its cases)."""
    names = {case: {case} for case in cases}
    for case, (source, _) in cases.items():
        if isinstance(source, str):
            names.setdefault(source, set()).add(case)
    return names


def cases_to_update(request: str, cases: dict, other_cases: tuple[dict, ...] = ()) -> set[str]:
    """The entries of `cases` that `HF_T2I_UPDATE_GOLDEN` asks to rewrite: "1" all; comma-separated case or
    checkpoint names only those; "" (or "0") none. A name that selects only cases of another fixture (`other_cases`)
    selects none here; a name known to no fixture is an error."""
    if request in ("", "0"):
        return set()
    if request == "1":
        return set(cases)
    ours = selectors(cases)
    known = set(ours).union(*(selectors(other) for other in other_cases))
    selected = set()
    for name in (part.strip() for part in request.split(",") if part.strip()):
        if name not in known:
            raise ValueError(
                f"HF_T2I_UPDATE_GOLDEN names {name!r}, which is no case or checkpoint of these fixtures; "
                f"use 1 (all) or names among {sorted(known)}."
            )
        selected |= ours.get(name, set())
    return selected


def write_fixture(path: Path, names: list[str], drawn: dict, update: set[str]) -> None:
    """Rewrite the `update` entries of the .npz fixture at `path` (all `names`) with `drawn`; the others are copied
    from the file as they are."""
    kept = {}
    if path.exists():
        with np.load(path) as old:
            kept = {case: old[case] for case in old.files if case in names and case not in update}
    missing = set(names) - update - set(kept)
    if missing:
        raise ValueError(f"{path.name} has no entry for {sorted(missing)}: add them to HF_T2I_UPDATE_GOLDEN.")
    np.savez_compressed(path, **kept, **{case: drawn[case] for case in update})


def test_update_request_selects_by_case_or_checkpoint(tmp_path):
    assert cases_to_update("", CASES) == set()
    assert cases_to_update("1", CASES) == set(CASES)
    assert cases_to_update("muse", CASES) == {"muse-guided", "muse-linear-topk", "muse-greedy-confidence"}
    assert cases_to_update("parti-guided, dalle", CASES) == {"parti-guided", "dalle-guided", "dalle-linear-topk"}
    assert cases_to_update("muse", TINY_CASES, (CASES,)) == set()  # the tiny fixture has no muse case
    with pytest.raises(ValueError, match="'musee'"):
        cases_to_update("musee", CASES)
    # a partial rewrite keeps the other entries exactly
    path = tmp_path / "golden.npz"
    np.savez_compressed(path, a=np.zeros(2, np.uint8), b=np.ones(2, np.uint8))
    write_fixture(path, ["a", "b"], {"a": np.full(2, 7, np.uint8)}, {"a"})
    with np.load(path) as written:
        assert sorted(written.files) == ["a", "b"]
        assert written["a"].tolist() == [7, 7] and written["b"].tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"\['c'\]"):
        write_fixture(path, ["a", "b", "c"], {"a": np.zeros(2, np.uint8)}, {"a"})


def test_shipped_pictures_are_unchanged(pipelines):
    torch.set_num_threads(1)  # one summation order for the fixture and the check
    update = cases_to_update(UPDATE, CASES, (TINY_CASES,))
    if UPDATING and not update:
        pytest.skip("HF_T2I_UPDATE_GOLDEN names none of these cases")
    drawn = {
        case: draw(pipelines(name), options)
        for case, (name, options) in CASES.items()
        if case in update or not UPDATING
    }
    if UPDATING:
        write_fixture(FIXTURE, list(CASES), drawn, update)
        pytest.skip(f"rewrote {sorted(update)} in {FIXTURE}")
    golden = np.load(FIXTURE)
    assert sorted(golden.files) == sorted(CASES)
    for case, images in drawn.items():
        difference = np.abs(images.astype(int) - golden[case].astype(int))
        assert difference.max() <= 2, f"{case}: pictures changed (max difference {difference.max()} / 255)"


# case name -> (tiny model builder arguments, sampling options)
TINY_CASES = {
    "continuous-raster": (("continuous", "raster"), {"guidance_scale": 2.0, "guidance_schedule": "linear"}),
    "discrete-random": (("discrete", "random"), {"guidance_scale": 2.0, "guidance_schedule": "linear", "top_k": 8}),
    "discrete-raster": (("discrete", "raster"), {"guidance_scale": 2.0, "temperature": 0.8}),
    "discrete-raster-greedy": (("discrete", "raster"), {"do_sample": False}),
    "mar-continuous": (("mar", "continuous"), {"guidance_scale": 2.0, "guidance_schedule": "linear"}),
    "mar-discrete": (("mar", "discrete"), {"guidance_scale": 2.0, "num_inference_steps": 5}),
}


def tiny_sample(builder_args, options) -> torch.Tensor:
    from .models.test_fluid import tiny_model
    from .models.test_fluid_class_conditional import mar_model

    if builder_args[0] == "mar":
        model = mar_model(builder_args[1])
        inputs = {"class_labels": torch.tensor([0, 3])}
    else:
        model = tiny_model(*builder_args)
        text = torch.randint(3, 100, (2, 10), generator=torch.Generator().manual_seed(1))
        inputs = {"input_ids": text, "attention_mask": torch.ones_like(text)}
        if options.get("guidance_scale", 1.0) != 1.0:
            inputs["negative_input_ids"] = torch.full((1, 10), 2)
    generator = torch.Generator().manual_seed(0)
    return model.sample_image_tokens(**inputs, generator=generator, **options)


def test_tiny_fluid_samples_are_unchanged():
    torch.set_num_threads(1)
    update = cases_to_update(UPDATE, TINY_CASES, (CASES,))
    if UPDATING and not update:
        pytest.skip("HF_T2I_UPDATE_GOLDEN names none of these cases")
    drawn = {case: tiny_sample(*spec).float().numpy() for case, spec in TINY_CASES.items()}
    if UPDATING:
        write_fixture(TINY_FIXTURE, list(TINY_CASES), drawn, update)
        pytest.skip(f"rewrote {sorted(update)} in {TINY_FIXTURE}")
    golden = np.load(TINY_FIXTURE)
    assert sorted(golden.files) == sorted(TINY_CASES)
    for case, tokens in drawn.items():
        np.testing.assert_allclose(tokens, golden[case], rtol=1e-4, atol=1e-4, err_msg=case)
