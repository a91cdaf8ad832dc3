"""The Gradio demo (`hf_t2i.demo`, `hf-t2i demo`, the Space in spaces/hf-t2i-demo): the app's controls and wiring, its
draws called directly (size, seed, the same picture as the pipeline, clear errors), lazy loading, the command line and
the Space's files. The page itself, in a real browser: tests/test_demo_browser.py (slow)."""

import ast
import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import hf_t2i
from hf_t2i.checkpoints import SHIPPED_CHECKPOINTS
from hf_t2i.cli import main
from hf_t2i.demo import DISPLAY_UPSCALE, DRAW_QUEUE, DemoModels, build_demo, check_demo_inputs, draw_function
from hf_t2i.pipelines import T2IPipeline


REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "spaces" / "hf-t2i-demo"
needs_gradio = pytest.mark.skipif(
    importlib.util.find_spec("gradio") is None,
    reason="gradio is not installed (an optional dependency): pip install -e '.[demo]' -c constraints.txt",
)


@pytest.fixture(autouse=True)
def no_gradio_analytics(monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls from a launch


@pytest.fixture(scope="module")
def shipped_dalle():
    """The shipped DALL-E checkpoint, as the demo serves it (loaded once for the module)."""
    models = DemoModels(["dalle"], device="cpu")
    models.pipeline("dalle").set_progress_bar_config(disable=True)
    return models


@pytest.fixture
def tiny_models(dalle_pipeline):
    return DemoModels({"tiny": dalle_pipeline}, device="cpu")


def component(demo, elem_id: str):
    (found,) = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id]
    return found


@needs_gradio
def test_build_demo_offers_a_prompt_seed_guidance_and_one_picture_per_checkpoint():
    import gradio as gr

    models = DemoModels(["dalle", "parti", "muse"], device="cpu")
    demo = build_demo(models)
    assert isinstance(demo, gr.Blocks)
    assert not any(models.is_loaded(label) for label in models.labels)  # building loads nothing
    prompt, button = component(demo, "prompt"), component(demo, "generate")
    seed, guidance = component(demo, "seed"), component(demo, "guidance-scale")
    assert (type(prompt), type(button), type(seed), type(guidance)) == (gr.Textbox, gr.Button, gr.Number, gr.Slider)
    assert guidance.value == 3.0 and seed.value == 0
    images = {label: component(demo, f"image-{label}") for label in models.labels}
    assert all(isinstance(image, gr.Image) and image.format == "png" for image in images.values())

    # one checked trigger (button click or Enter), then one queued draw per checkpoint, one at a time, with progress
    (check,) = [fn for fn in demo.fns.values() if fn.name == "check"]
    assert set(check.targets) == {(button._id, "click"), (prompt._id, "submit")}
    draws = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name and fn.api_name.startswith("draw_")}
    assert set(draws) == {f"draw_{label}" for label in models.labels}
    for label, fn in draws.items():
        assert fn.trigger_after == check._id and fn.trigger_only_on_success
        assert [block._id for block in fn.inputs] == [prompt._id, seed._id, guidance._id]
        assert [block._id for block in fn.outputs] == [images[label.removeprefix("draw_")]._id]
        assert (fn.concurrency_id, fn.concurrency_limit) == (DRAW_QUEUE, 1)
        assert fn.tracks_progress  # gradio follows the pipeline's tqdm bar


def test_generate_draws_the_pipelines_picture_and_the_seed_decides_it(shipped_dalle):
    image = shipped_dalle.generate("dalle", "  two red circles ", seed=3, guidance_scale=3.0)
    assert image.size == (64, 64) and image.mode == "RGB"
    pipe = shipped_dalle.pipeline("dalle")
    direct = pipe("two red circles", guidance_scale=3.0, generator=torch.Generator().manual_seed(3)).images[0]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(direct))  # what `hf-t2i generate` draws
    again = shipped_dalle.generate("dalle", "two red circles", seed=3, guidance_scale=3.0)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(again))
    other = shipped_dalle.generate("dalle", "two red circles", seed=4, guidance_scale=3.0)
    assert not np.array_equal(np.asarray(image), np.asarray(other))
    unguided = shipped_dalle.generate("dalle", "two red circles", seed=3, guidance_scale=1.0)
    assert not np.array_equal(np.asarray(image), np.asarray(unguided))  # the guidance control reaches the pipeline


@needs_gradio
def test_draw_shows_the_picture_upscaled_pixel_for_pixel(shipped_dalle):
    draw = draw_function(shipped_dalle, "dalle")
    shown = draw("a green circle", 7.0, 3)  # gradio's Number and Slider may hand over floats and ints
    assert shown.size == (64 * DISPLAY_UPSCALE, 64 * DISPLAY_UPSCALE)
    drawn = shipped_dalle.generate("dalle", "a green circle", seed=7, guidance_scale=3.0)
    np.testing.assert_array_equal(np.asarray(shown)[::DISPLAY_UPSCALE, ::DISPLAY_UPSCALE], np.asarray(drawn))


BAD_INPUTS = [
    ("", 0, 3.0, ValueError, "`prompt` is empty; type a caption such as 'a red circle'"),
    ("   ", 0, 3.0, ValueError, "`prompt` is empty"),
    (None, 0, 3.0, TypeError, "`prompt` must be a string, got NoneType"),
    ("a red circle", -1, 3.0, ValueError, "`seed` must be in [0, 2**64 - 1] (a torch.Generator seed), got -1"),
    ("a red circle", 2**64, 3.0, ValueError, "`seed` must be in [0, 2**64 - 1]"),
    ("a red circle", 1.5, 3.0, ValueError, "`seed` must be a whole number in [0, 2**64 - 1], got 1.5"),
    ("a red circle", float("nan"), 3.0, ValueError, "`seed` must be a whole number"),
    ("a red circle", None, 3.0, TypeError, "`seed` must be an integer in [0, 2**64 - 1], got None"),
    ("a red circle", True, 3.0, TypeError, "`seed` must be an integer"),
    ("a red circle", 0, None, TypeError, "`guidance_scale` must be a number (1 = no guidance), got None"),
    ("a red circle", 0, -1.0, ValueError, "`guidance_scale`"),  # the pipeline's own range check
    ("a red circle " * 20, 0, 3.0, ValueError, "text context holds 12"),  # the pipeline's prompt length check
]


@pytest.mark.parametrize("prompt, seed, guidance_scale, error, message", BAD_INPUTS)
def test_bad_input_is_a_clear_error(tiny_models, prompt, seed, guidance_scale, error, message):
    with pytest.raises(error) as raised:
        tiny_models.generate("tiny", prompt, seed, guidance_scale)
    assert message in str(raised.value)


@needs_gradio
@pytest.mark.parametrize("prompt, seed, guidance_scale, error, message", BAD_INPUTS)
def test_bad_input_is_shown_on_the_page_as_a_gradio_error(tiny_models, prompt, seed, guidance_scale, error, message):
    import gradio as gr

    with pytest.raises(gr.Error) as raised:
        draw_function(tiny_models, "tiny")(prompt, seed, guidance_scale)
    assert raised.value.message.startswith("tiny: ") and message in raised.value.message


def test_check_demo_inputs_normalises_what_gradio_hands_over():
    assert check_demo_inputs(" a red circle ", 5.0, 3) == ("a red circle", 5, 3.0)
    assert check_demo_inputs("a", 2**64 - 1, 0.0) == ("a", 2**64 - 1, 0.0)
    assert isinstance(check_demo_inputs("a", np.int64(4), np.float32(2.5))[1], int)


def test_checkpoints_argument_is_checked(dalle_pipeline):
    with pytest.raises(TypeError, match=r"got the single 'dalle'; pass \['dalle'\]"):
        DemoModels("dalle")
    with pytest.raises(ValueError, match="`checkpoints` is empty"):
        DemoModels([])
    with pytest.raises(ValueError, match="two entries labelled 'final'"):
        DemoModels(["runs/a/final", "runs/b/final"])
    with pytest.raises(
        TypeError, match="checkpoints\\['tiny'\\]` must be a checkpoint name, a folder or a T2IPipeline"
    ):
        DemoModels({"tiny": 3})
    with pytest.raises(TypeError, match="pass a mapping label -> pipeline"):
        DemoModels([dalle_pipeline])
    models = DemoModels({"tiny": dalle_pipeline, "dalle": "dalle"})
    assert models.labels == ["tiny", "dalle"]
    with pytest.raises(ValueError, match=r"No checkpoint labelled 'parti' in this demo; it has \['tiny', 'dalle'\]"):
        models.generate("parti", "a red circle")


@needs_gradio
def test_labels_that_clash_as_api_names_are_refused(dalle_pipeline):
    with pytest.raises(ValueError, match="clash once reduced to API names"):
        build_demo({"my-dalle": dalle_pipeline, "my_dalle": dalle_pipeline})


def test_checkpoints_load_on_first_use_once_and_stay_loaded(monkeypatch, dalle_pipeline):
    loads = []

    def slow_load(path, **kwargs):
        loads.append(path)
        time.sleep(0.2)  # several draws arrive while the first load runs
        return dalle_pipeline

    monkeypatch.setattr(T2IPipeline, "from_pretrained", staticmethod(slow_load))
    models = DemoModels(["dalle"], device="cpu")
    assert not models.is_loaded("dalle") and loads == []
    results = []
    threads = [threading.Thread(target=lambda: results.append(models.pipeline("dalle"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and loads[0].endswith(os.path.join("shipped", "dalle-shapes"))
    assert all(pipe is dalle_pipeline for pipe in results) and models.is_loaded("dalle")


@needs_gradio
def test_cli_demo_serves_the_app_with_the_gradio_launch_options(monkeypatch, capsys):
    import gradio as gr

    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **kwargs: launched.append((demo, kwargs)))
    assert main(["demo", "--model", "dalle", "--model", "muse", "--host", "0.0.0.0", "--port", "7999", "--share"]) == 0
    ((demo, kwargs),) = launched
    assert kwargs == {"server_name": "0.0.0.0", "server_port": 7999, "share": True}
    assert {fn.api_name for fn in demo.fns.values()} >= {"draw_dalle", "draw_muse"}
    assert "draw_parti" not in {fn.api_name for fn in demo.fns.values()}

    launched.clear()
    assert main(["demo"]) == 0  # gradio's own defaults ($GRADIO_SERVER_NAME / _PORT or 127.0.0.1:7860), no share link
    ((demo, kwargs),) = launched
    assert kwargs == {"server_name": None, "server_port": None, "share": False}
    # API names and HTML ids spell a label's "-" as "_" (e.g. draw_dalle_emoji)
    api_names = {fn.api_name for fn in demo.fns.values()}
    assert {f"draw_{name.replace('-', '_')}" for name in SHIPPED_CHECKPOINTS} <= api_names


@pytest.mark.parametrize(
    "options, message",
    [
        (["--port", "0"], "error: --port must be in [1, 65535], got 0"),
        (["--port", "70000"], "error: --port must be in [1, 65535], got 70000"),
        (["--model", "dale"], "error: --model 'dale' is neither a shipped checkpoint (dalle, parti, fluid"),
    ],
)
def test_cli_demo_bad_option_is_one_error_line(options, message, capsys):
    assert main(["demo", *options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(message), err


def test_cli_demo_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["demo", "--model", "dalle"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: The demo needs gradio") and 'pip install -e ".[demo]"' in err


def pins(path: Path) -> dict[str, str]:
    """name -> version of the `name==version` lines of a requirements or constraints file (names normalised)."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            found[name.strip().lower().replace("_", "-")] = version.strip()
    return found


def setup_lists() -> tuple[list[str], dict[str, list[str]]]:
    """INSTALL_REQUIRES and EXTRAS of setup.py, read, not run."""
    values = {}
    for node in ast.parse((REPO / "setup.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in ("INSTALL_REQUIRES", "EXTRAS"):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values["INSTALL_REQUIRES"], values["EXTRAS"]


def requirement_name(requirement: str) -> str:
    return requirement.split(">")[0].split("<")[0].split("=")[0].strip().lower().replace("_", "-")


def test_space_files_follow_the_spaces_layout_and_the_tested_pins():
    header = (SPACE / "README.md").read_text(encoding="utf-8").split("---\n")[1]
    card = yaml.safe_load(header)
    constraints = pins(REPO / "constraints.txt")
    assert card["sdk"] == "gradio" and card["sdk_version"] == constraints["gradio"]
    assert (SPACE / card["app_file"]).is_file() and card["python_version"] == "3.11"
    assert len(card["short_description"]) <= 60  # the Hub's limit

    # the Space installs hf_t2i's own requirements at the versions `make install` tests; gradio comes from the sdk
    requirements = pins(SPACE / "requirements.txt")
    install_requires, extras = setup_lists()
    assert set(requirements) == {requirement_name(r) for r in install_requires}
    assert all(constraints[name] == version for name, version in requirements.items()), requirements
    # the demo extra is installable at the same pins, and `make test` (the dev extra) runs this file's gradio tests
    for extra in ("demo", "dev"):
        assert "gradio" in {requirement_name(r) for r in extras[extra]}
    assert "gradio" not in {requirement_name(r) for r in install_requires}
    assert all(requirement_name(r) in constraints for r in extras["demo"] + extras["dev"])


@needs_gradio
def test_space_app_runs_from_the_uploaded_layout(tmp_path):
    """The Space holds app.py, requirements.txt, README.md and a copy of src/hf_t2i as `hf_t2i/`: app.py builds the
    demo from that copy, not from an installed hf_t2i."""
    for name in ("app.py", "requirements.txt", "README.md"):
        (tmp_path / name).write_bytes((SPACE / name).read_bytes())
    (tmp_path / "hf_t2i").symlink_to(Path(hf_t2i.__file__).parent, target_is_directory=True)
    script = (
        "import runpy, gradio, hf_t2i\n"
        "namespace = runpy.run_path('app.py')\n"  # as the Space runs it, minus the launch under __main__
        "assert isinstance(namespace['demo'], gradio.Blocks), namespace['demo']\n"
        "print(hf_t2i.__file__)\n"
    )
    env = {name: value for name, value in os.environ.items() if name != "PYTHONSAFEPATH"}  # keep the cwd on sys.path
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(tmp_path / "hf_t2i" / "__init__.py")
