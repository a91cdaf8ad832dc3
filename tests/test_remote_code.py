"""A saved hf_t2i folder loads with the generic loaders: `DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)` and the transformers Auto classes, through the loader files of `hf_t2i.remote_code`; without
hf_t2i installed they say how to install it."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file

import hf_t2i
from hf_t2i import DalleDVAE, DalleDVAEConfig, DallePipeline, T2IPipeline, auto
from hf_t2i.models.fluid import MarConfig
from hf_t2i.remote_code import INSTALL_COMMAND, auto_classes, write_remote_code

from .test_hub_cards import fake_hub  # noqa: F401 - fixture


PROMPT = "a red circle"
LOADER_FILES = {"configuration_hf_t2i.py", "modeling_hf_t2i.py", "processing_hf_t2i.py", "pipeline_hf_t2i.py"}


@pytest.fixture
def modules_cache(monkeypatch, tmp_path):
    """diffusers' and transformers' remote-code module cache under `tmp_path`; modules loaded from it are forgotten
    after the test."""
    from diffusers.utils import dynamic_modules_utils

    cache = tmp_path / "modules"
    monkeypatch.setenv("HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", list(sys.path))  # init_hf_modules appends the cache
    before = set(sys.modules)
    yield cache
    for name in set(sys.modules) - before:
        if name.startswith("diffusers_modules"):
            del sys.modules[name]


def draw(pipe, seed: int = 0) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), output_type="pt").images


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_a_saved_pipeline_names_its_loader_files(dalle_pipeline, tmp_path):
    folder = tmp_path / "tiny-dalle"
    dalle_pipeline.save_pretrained(folder)
    assert set(os.listdir(folder)) >= LOADER_FILES
    assert read_json(folder / "model_index.json")["_class_name"] == ["pipeline_hf_t2i", "DallePipeline"]
    assert read_json(folder / "config.json")["auto_map"] == {
        "AutoConfig": "configuration_hf_t2i.DalleConfig",
        "AutoModel": "modeling_hf_t2i.DalleModel",
        "AutoProcessor": "processing_hf_t2i.DalleProcessor",
    }
    # the loader files only name hf_t2i's classes: what `import hf_t2i` registers
    source = (folder / "pipeline_hf_t2i.py").read_text()
    assert 'importlib.import_module("hf_t2i")' in source and "DallePipeline = hf_t2i.DallePipeline" in source
    assert "DalleModel = hf_t2i.DalleModel" in (folder / "modeling_hf_t2i.py").read_text()
    # saving again (a loaded pipeline, into the same folder) writes the same loader files and names
    before = {name: (folder / name).read_bytes() for name in ["model_index.json", *LOADER_FILES]}
    auto_map = read_json(folder / "config.json")["auto_map"]
    DallePipeline.from_pretrained(folder).save_pretrained(folder)
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert read_json(folder / "config.json")["auto_map"] == auto_map


def test_hf_t2i_loads_its_own_folders_without_running_their_code(dalle_pipeline, tmp_path, modules_cache):
    folder = tmp_path / "tiny-dalle"
    dalle_pipeline.save_pretrained(folder)
    expected = draw(dalle_pipeline)
    for loader in (DallePipeline, T2IPipeline):
        pipe = loader.from_pretrained(folder)  # no trust_remote_code needed
        assert type(pipe) is DallePipeline
        assert torch.equal(draw(pipe), expected)
    assert not modules_cache.exists()  # no loader file was copied or run


def test_diffusion_pipeline_from_pretrained_returns_the_hf_t2i_pipeline(dalle_pipeline, tmp_path, modules_cache):
    folder = tmp_path / "tiny-dalle"
    dalle_pipeline.save_pretrained(folder)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(folder)  # diffusers runs a repository's code only when asked to
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(pipe) is DallePipeline
    assert type(pipe.model) is type(dalle_pipeline.model) and type(pipe.processor) is type(dalle_pipeline.processor)
    assert torch.equal(draw(pipe), draw(dalle_pipeline))
    assert not torch.equal(draw(pipe, seed=1), draw(dalle_pipeline))
    assert (modules_cache / "diffusers_modules" / "local" / "pipeline_hf_t2i.py").is_file()


def test_without_hf_t2i_the_loader_says_how_to_install_it(dalle_pipeline, tmp_path, modules_cache, monkeypatch):
    folder = tmp_path / "tiny-dalle"
    dalle_pipeline.save_pretrained(folder)
    monkeypatch.setitem(sys.modules, "hf_t2i", None)  # as if it were not installed
    with pytest.raises(ImportError, match="hf_t2i is not on PyPI") as error:
        DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert INSTALL_COMMAND in str(error.value)


def test_a_saved_model_gets_auto_map_without_processor(tmp_path):
    torch.manual_seed(0)
    dvae = DalleDVAE(
        DalleDVAEConfig(
            image_size=16, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2], num_blocks_per_group=1
        )
    )
    dvae.save_pretrained(tmp_path / "dvae")
    assert read_json(tmp_path / "dvae" / "config.json")["auto_map"] == {
        "AutoConfig": "configuration_hf_t2i.DalleDVAEConfig",
        "AutoModel": "modeling_hf_t2i.DalleDVAE",
    }
    assert {"configuration_hf_t2i.py", "modeling_hf_t2i.py"} <= set(os.listdir(tmp_path / "dvae"))
    assert "processing_hf_t2i.py" not in os.listdir(tmp_path / "dvae")


def test_every_mapped_class_is_exported_by_hf_t2i():
    """The loader files read `hf_t2i.<Name>`: every class an `auto_map` or `_class_name` can name is exported."""
    config_classes = [entry[0] for entry in auto._TEXT_TO_IMAGE_MODELS + auto._IMAGE_TOKENIZERS] + [MarConfig]
    for config_class in config_classes:
        for auto_name, cls in auto_classes(config_class).items():
            assert getattr(hf_t2i, cls.__name__, None) is cls, (config_class, auto_name)
    for entry in auto._TEXT_TO_IMAGE_MODELS:
        pipeline_class = entry[-1]
        assert getattr(hf_t2i, pipeline_class.__name__) is pipeline_class


def test_a_pushed_folder_carries_the_loader_files(dalle_pipeline, fake_hub, tmp_path):  # noqa: F811
    dalle_pipeline.save_pretrained(tmp_path / "tiny-dalle", push_to_hub=True, repo_id="me/tiny-dalle")
    files = fake_hub.uploaded()
    assert set(files) >= LOADER_FILES
    assert json.loads(files["model_index.json"])["_class_name"] == ["pipeline_hf_t2i", "DallePipeline"]
    usage = fake_hub.card().text
    assert 'DiffusionPipeline.from_pretrained(snapshot_download("me/tiny-dalle"), trust_remote_code=True)' in usage


# A program that never imports hf_t2i itself: the generic loaders find it through the loader files.
FRESH_PROGRAM = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from safetensors.torch import load_file, save_file

    folder, inputs_file, outputs_file, resaved = sys.argv[1:5]
    input_ids = load_file(inputs_file)["input_ids"]
    from transformers import AutoConfig, AutoModel, AutoProcessor

    sys.modules["hf_t2i"] = None  # as if it were not installed
    try:
        AutoConfig.from_pretrained(folder, trust_remote_code=True)
        missing = None
    except ImportError as error:
        missing = str(error)
    del sys.modules["hf_t2i"]
    assert not [name for name in sys.modules if name.startswith("hf_t2i")]

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        hidden = model(input_ids).last_hidden_state
    image = pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    model.save_pretrained(resaved)  # a model loaded as remote code saves as hf_t2i does

    import hf_t2i  # the reference: hf_t2i's own loaders on the same folder

    native = hf_t2i.DallePipeline.from_pretrained(folder)
    native.set_progress_bar_config(disable=True)
    with torch.no_grad():
        native_hidden = hf_t2i.DalleModel.from_pretrained(folder).eval()(input_ids).last_hidden_state
    native_image = native("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    save_file({"hidden": hidden}, outputs_file)
    print("RESULT " + json.dumps({
        "missing": missing,
        "classes": [type(o).__module__ + "." + type(o).__name__ for o in (config, model, processor, pipe)],
        "same_classes": [type(config) is hf_t2i.DalleConfig, type(model) is hf_t2i.DalleModel,
                         type(processor) is hf_t2i.DalleProcessor, type(pipe) is hf_t2i.DallePipeline],
        "hidden_equal": torch.equal(hidden, native_hidden),
        "image_equal": torch.equal(image, native_image),
        "resaved_files": sorted(os.listdir(resaved)),
        "resaved_auto_map": json.load(open(os.path.join(resaved, "config.json")))["auto_map"],
    }))
    """
)


def test_generic_loaders_in_a_program_that_does_not_import_hf_t2i(dalle_pipeline, tmp_path):
    folder = tmp_path / "tiny-dalle"
    dalle_pipeline.save_pretrained(folder)
    input_ids = torch.tensor([[3, 5, 7, 11]])
    save_file({"input_ids": input_ids}, tmp_path / "inputs.safetensors")
    program = tmp_path / "fresh.py"
    program.write_text(FRESH_PROGRAM)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run(
        [
            sys.executable,
            str(program),
            str(folder),
            *(str(tmp_path / name) for name in ("inputs.safetensors", "outputs.safetensors", "resaved")),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert "hf_t2i is not on PyPI" in result["missing"] and INSTALL_COMMAND in result["missing"]
    assert all(result["same_classes"]), result["classes"]
    assert result["hidden_equal"] and result["image_equal"]
    # the states of the original model's base (across processes: float tolerance)
    with torch.no_grad():
        expected = dalle_pipeline.model.model(input_ids).last_hidden_state
    torch.testing.assert_close(load_file(tmp_path / "outputs.safetensors")["hidden"], expected)
    # the re-saved model carries hf_t2i's loader files, not copies of hf_t2i's sources
    assert result["resaved_files"] == [
        "config.json",
        "configuration_hf_t2i.py",
        "model.safetensors",
        "modeling_hf_t2i.py",
    ]
    assert result["resaved_auto_map"] == {
        "AutoConfig": "configuration_hf_t2i.DalleConfig",
        "AutoModel": "modeling_hf_t2i.DalleModel",
    }


def test_a_hub_repository_downloads_whole(dalle_pipeline, tmp_path, monkeypatch):
    """diffusers' `download` refuses components that live at the repository root and load from hf_t2i; hf_t2i's
    pipelines download the whole repository instead."""
    from diffusers.pipelines.pipeline_loading_utils import _get_custom_components_and_folders

    from hf_t2i.pipelines import pipeline_utils

    folder = tmp_path / "snapshot"
    dalle_pipeline.save_pretrained(folder)
    index = read_json(folder / "model_index.json")
    with pytest.raises(ValueError, match="does not exist in me/tiny-dalle"):  # what DiffusionPipeline.download does
        _get_custom_components_and_folders("me/tiny-dalle", index, sorted(os.listdir(folder)))
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(pipeline_utils, "snapshot_download", fake_snapshot_download)
    pipe = DallePipeline.from_pretrained("me/tiny-dalle", revision="v1")
    assert [(repo_id, kwargs.get("revision")) for repo_id, kwargs in calls] == [("me/tiny-dalle", "v1")]
    assert torch.equal(draw(pipe), draw(dalle_pipeline))
    assert type(T2IPipeline.from_pretrained(str(folder))) is DallePipeline


@pytest.mark.parametrize("name", sorted(os.listdir(Path(hf_t2i.__file__).parent / "shipped")))
def test_every_shipped_folder_carries_current_loader_files(name, tmp_path):
    """A shipped folder pushed to the Hub as is loads with the generic loaders: it has the loader files, and they and
    its `auto_map` / `_class_name` are what `write_remote_code` writes today."""
    shipped = Path(hf_t2i.__file__).parent / "shipped" / name
    assert set(os.listdir(shipped)) >= LOADER_FILES
    copy = tmp_path / name
    shutil.copytree(shipped, copy)
    write_remote_code(copy)
    for file in ["config.json", "model_index.json", *LOADER_FILES]:
        assert (copy / file).read_bytes() == (shipped / file).read_bytes(), file
