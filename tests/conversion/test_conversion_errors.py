"""Bad input to the converters fails with one clear `ConversionError` (exit status 2 from the command line), never a
traceback from inside torch. These tests need none of the original packages."""

import json

import pytest
import torch
from conversion_utils import ConversionError, KeyConsumer, load_torch_file


def _convert_dvae(enc, dec, tmp_path):
    import convert_dalle_dvae_to_hf as script

    return script.convert(enc, dec, tmp_path / "out", check=False)


def test_state_dict_layout_converts(dvae_state_files, tmp_path):
    model, parity = _convert_dvae(*dvae_state_files, tmp_path)
    assert model.config.vocab_size == 16 and model.config.channel_multipliers == [1, 2]
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "README.md").exists()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: p.unlink(), "not found"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "could not be read"),
        (lambda p: p.write_text(json.dumps({"a": 1})), "JSON"),
        (lambda p: p.write_bytes(bytes(range(256)) * 4), "PyTorch checkpoint"),
        (lambda p: torch.save({"weight": torch.zeros(2)}, p), "not an OpenAI dVAE half"),
        (lambda p: torch.save([torch.zeros(2)], p), "pickled torch module"),
    ],
    ids=["missing", "empty", "truncated", "json", "random-bytes", "other-state-dict", "not-a-module"],
)
def test_corrupted_or_wrong_files_fail_clearly(dvae_state_files, tmp_path, corrupt, message):
    encoder, decoder = dvae_state_files
    corrupt(decoder)
    with pytest.raises(ConversionError, match=message):
        _convert_dvae(encoder, decoder, tmp_path)


def test_swapped_halves_fail_clearly(dvae_state_files, tmp_path):
    encoder, decoder = dvae_state_files
    with pytest.raises(ConversionError, match="do not match"):
        _convert_dvae(decoder, encoder, tmp_path)


class Gadget:
    """Stands for any class a malicious pickle could name."""


def test_restricted_loader_refuses_unknown_classes(tmp_path):
    path = tmp_path / "x.pkl"
    torch.save({"evil": Gadget()}, path)
    with pytest.raises(ConversionError, match="--trust-pickle"):
        load_torch_file(path, "x.pkl")
    with pytest.raises(ConversionError, match="--trust-pickle"):
        load_torch_file(path, "x.pkl", known_classes={})


def test_key_consumer_fails_on_leftovers_and_missing_keys():
    keys = KeyConsumer({"a.weight": torch.zeros(2), "b.weight": torch.zeros(2), "c.extra": torch.zeros(1)}, "src")
    keys.pop("a.weight", shape=(2,))
    with pytest.raises(ConversionError, match="shape"):
        keys.pop("b.weight", shape=(3,))
    with pytest.raises(ConversionError, match="missing"):
        keys.pop("z.weight")
    with pytest.raises(ConversionError, match=r"not converted.*c\.extra"):
        keys.finish()
    assert keys.drop("c.*", "unused") == ["c.extra"]
    keys.finish()


def test_command_line_reports_one_line_error(tmp_path, capsys):
    import convert_dalle_dvae_to_hf as script
    from conversion_utils import run_main

    status = run_main(
        script.main, ["--encoder", str(tmp_path / "no.pkl"), "--decoder", str(tmp_path / "no.pkl"), "--output", "o"]
    )
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: encoder.pkl not found") and "Traceback" not in err
