"""`--push-to-hub REPO` on the converters: the converted folder is uploaded as one commit with the card every hf_t2i
checkpoint gets (`hf_t2i.hub`: library_name, pipeline_tag, family tags, license, "How to use") plus a section on the
conversion; the repository is created BEFORE converting, so a malformed id or a refused login fails at once and
leaves no output. The Hub is test_hub_cards' fake, recording each commit's operations: nothing leaves the machine.

These tests need none of the original packages (the DALLE-pytorch and min-dalle uploads are tested beside their
parity tests)."""

import pytest
import torch
from huggingface_hub.errors import LocalTokenNotFoundError
from huggingface_hub.repocard import metadata_load

from hf_t2i.hub import INSTALL_COMMAND

from ..test_hub_cards import FakeHub
from .test_convert_mar import HEADS, _write_prior, mar_prior_state, mar_vae_state


def assert_converted_card(hub: FakeHub, folder, repo_id: str, *, family, pipeline_tag, license: str, section: str):
    """The last commit went to `repo_id`, uploaded `folder` whole, and its README.md is hf_t2i's card with the
    conversion section."""
    assert hub.calls[-2:] == [f"create_repo {repo_id}", f"create_commit {repo_id}"]
    files = hub.uploaded()
    local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(files) == local
    assert files["README.md"] == (folder / "README.md").read_bytes()
    card = hub.card()
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("hf_t2i", pipeline_tag, license)
    assert {family, "hf_t2i"} <= set(data.tags)
    usage = card.text[card.text.index("## How to use") :]
    assert INSTALL_COMMAND in usage and f'.from_pretrained("{repo_id}")' in usage
    assert f"## {section}" in card.text and card.text.index("## How to use") < card.text.index(f"## {section}")
    assert metadata_load(folder / "README.md")["library_name"] == "hf_t2i"
    return card


def test_dvae_converter_pushes_the_hf_t2i_card(dvae_state_files, fake_hub, tmp_path, capsys):
    import convert_dalle_dvae_to_hf as script
    from conversion_utils import run_main

    encoder, decoder = dvae_state_files
    out = tmp_path / "dvae"
    fake_hub.watch = out.exists  # the repository is created before anything is converted or written
    argv = ["--encoder", str(encoder), "--decoder", str(decoder), "--output", str(out), "--skip-parity"]
    assert run_main(script.main, [*argv, "--push-to-hub", "me/dvae"]) == 0
    assert fake_hub.watched[0] is False  # (push_folder_to_hub checks the repository again before its commit)
    assert "pushed" in capsys.readouterr().out
    card = assert_converted_card(
        fake_hub,
        out,
        "me/dvae",
        family="dalle_dvae",
        pipeline_tag=None,
        license="mit",
        section="Converted from OpenAI's DALL-E dVAE",
    )
    assert 'DalleDVAE.from_pretrained("me/dvae")' in card.text
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= set(fake_hub.uploaded())
    # --license overrides the source's
    assert run_main(script.main, [*argv, "--push-to-hub", "me/dvae2", "--license", "cc-by-4.0"]) == 0
    assert fake_hub.card().data.license == "cc-by-4.0"


def test_a_bad_repository_fails_before_converting(dvae_state_files, fake_hub, tmp_path, capsys):
    import convert_dalle_dvae_to_hf as script
    from conversion_utils import run_main

    encoder, decoder = dvae_state_files
    argv = ["--encoder", str(encoder), "--decoder", str(decoder), "--output", str(tmp_path / "o"), "--skip-parity"]
    assert run_main(script.main, [*argv, "--push-to-hub", "not a repo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `--push-to-hub` must be a Hub repository id") and "'not a repo'" in err
    fake_hub.refuse = LocalTokenNotFoundError("Token is required (`token=True`), but no token found.")
    assert run_main(script.main, [*argv, "--push-to-hub", "me/dvae"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --push-to-hub 'me/dvae': the repository could not be created") and "login" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists() and not fake_hub.commits


def test_mar_vae_converter_pushes_a_diffusers_card(fake_hub, tmp_path):
    import convert_mar_to_hf as script

    torch.save({"model": mar_vae_state()}, tmp_path / "kl16.ckpt")
    script.convert(tmp_path / "kl16.ckpt", tmp_path / "vae", push_to_hub_repo="me/kl16")
    files = fake_hub.uploaded()
    assert {"README.md", "config.json", "diffusion_pytorch_model.safetensors"} <= set(files)
    card = fake_hub.card()
    # a diffusers AutoencoderKL: its card is the one hf_t2i's autoencoder_kl recipe pushes
    assert (card.data.library_name, card.data.pipeline_tag, card.data.license) == ("diffusers", None, "mit")
    assert {"mar", "autoencoder-kl"} <= set(card.data.tags)
    assert 'AutoencoderKL.from_pretrained("me/kl16")' in card.text and "## Converted from MAR's KL-16 VAE" in card.text


def test_mar_prior_converter_pushes_the_pipeline(fake_hub, tmp_path, capsys):
    import convert_mar_to_hf as script
    from conversion_utils import run_main

    prior, vae = _write_prior(tmp_path, mar_prior_state())
    out = tmp_path / "mar"
    argv = ["--prior", str(prior), "--vae", str(vae), "--num-heads", str(HEADS), "--output", str(out)]
    assert run_main(script.main, [*argv, "--push-to-hub", "me/mar-tiny"]) == 0, capsys.readouterr().err
    card = assert_converted_card(
        fake_hub,
        out,
        "me/mar-tiny",
        family="mar",
        pipeline_tag=None,  # class-conditional: not text-to-image
        license="mit",
        section="Converted from a MAR checkpoint",
    )
    assert "model_index.json" in fake_hub.uploaded()
    assert 'FluidPipeline.from_pretrained("me/mar-tiny")' in card.text and "class_labels=[0]" in card.text
    assert str(tmp_path) not in card.text  # no local path reaches the Hub


def test_push_needs_an_output_folder(fake_hub, tmp_path):
    import convert_mar_to_hf as script
    from conversion_utils import ConversionError

    torch.save({"model": mar_vae_state()}, tmp_path / "kl16.ckpt")
    with pytest.raises(ConversionError, match="pass --output"):
        script.convert(tmp_path / "kl16.ckpt", push_to_hub_repo="me/kl16")
    assert not fake_hub.calls
