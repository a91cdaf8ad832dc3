"""`hf-t2i generate` / `hf-t2i grid`: bad options end at once as one `error: ...` line naming the option, with exit
status 2, before the checkpoint loads (or, for the per-call image limit, before anything is drawn); a missing output
folder is created, as `save_pretrained` does."""

import pytest
from PIL import Image

from hf_t2i.cli import MAX_SEED, MAX_UPSCALE, main
from hf_t2i.pipelines import T2IPipeline


def command(kind: str, output, *options: str) -> list[str]:
    """The argv of a fast dalle run of `kind` ("generate" or "grid")."""
    if kind == "generate":
        return ["generate", "a red circle", "--model", "dalle", "--output", str(output), "--upscale", "1", *options]
    return [
        "grid",
        "--model",
        "dalle",
        "--prompt",
        "a red circle",
        "--output",
        str(output),
        "--upscale",
        "1",
        *options,
    ]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


COUNT = {"generate": "--num-images", "grid": "--num-images-per-prompt"}
KINDS = ["generate", "grid"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--upscale", "100000", f"--upscale must be in [1, {MAX_UPSCALE}], got 100000"),
        ("--upscale", "0", f"--upscale must be in [1, {MAX_UPSCALE}], got 0"),
        ("--seed", str(2**70), f"--seed must be in [0, 2**64 - 1] (a torch.Generator seed), got {2**70}"),
        ("--seed", str(MAX_SEED + 1), "--seed must be in [0, 2**64 - 1]"),
        ("--seed", "-1", "--seed must be in [0, 2**64 - 1]"),
        ("count", "0", "must be >= 1, got 0"),
        ("count", "-3", "must be >= 1, got -3"),
    ],
)
def test_bad_option_is_one_error_line_with_status_2(kind, option, value, message, tmp_path, capsys):
    option = COUNT[kind] if option == "count" else option
    out = tmp_path / "out.png"
    assert main(command(kind, out, option, value)) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {option}") and message in line
    assert not out.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_largest_seed_is_accepted(kind, tmp_path):
    out = tmp_path / "out.png"
    assert main(command(kind, out, "--seed", str(MAX_SEED))) == 0
    assert out.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_missing_output_folder_is_created(kind, tmp_path):
    out = tmp_path / "new" / "nested" / "out.png"
    assert main(command(kind, out)) == 0
    assert Image.open(out).size[0] >= 32


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["parent is a file", "no extension", "unknown extension", "a folder"])
def test_unusable_output_fails_before_generating(kind, case, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder.png").mkdir()
    output = {
        "parent is a file": tmp_path / "file.txt" / "out.png",
        "no extension": tmp_path / "out",
        "unknown extension": tmp_path / "out.notanimage",
        "a folder": tmp_path / "folder.png",
    }[case]
    assert main(command(kind, output)) == 2
    assert error_line(capsys).startswith(f"error: --output {str(output)!r}")


@pytest.mark.parametrize("kind", KINDS)
def test_more_images_than_one_call_draws_is_refused(kind, tmp_path, capsys):
    limit = T2IPipeline.max_images_per_call
    out = tmp_path / "out.png"
    assert main(command(kind, out, COUNT[kind], str(limit + 1))) == 2
    err = capsys.readouterr().err  # loading progress bars come first; the error is the last line
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: `{COUNT[kind]}`={limit + 1} for 1 prompt(s)") and "max_images_per_call" in last
    assert not out.exists()
