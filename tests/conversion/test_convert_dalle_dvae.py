"""OpenAI `dall_e` dVAE -> `DalleDVAE`: the original built with random weights, pickled whole as OpenAI ships it,
converted, and compared on a fixed input."""

import pytest
import torch


dall_e = pytest.importorskip("dall_e", reason="needs the original `DALL-E` package (make test-convert)")
pytestmark = pytest.mark.convert


def _randomize(module: torch.nn.Module) -> None:
    # dall_e initialises biases to zero, which would hide a bias that is not mapped.
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(".b"):
                p.normal_(0.0, 0.1)


@pytest.fixture(scope="module")
def original_files(tmp_path_factory):
    torch.manual_seed(0)
    encoder = dall_e.Encoder(n_hid=64, n_blk_per_group=1, vocab_size=512)
    decoder = dall_e.Decoder(n_init=32, n_hid=64, n_blk_per_group=1, vocab_size=512)
    _randomize(encoder)
    _randomize(decoder)
    folder = tmp_path_factory.mktemp("dall_e")
    torch.save(encoder, folder / "encoder.pkl")  # zip format
    torch.save(decoder, folder / "decoder.pkl", _use_new_zipfile_serialization=False)  # legacy format
    return folder / "encoder.pkl", folder / "decoder.pkl"


@pytest.mark.parametrize("trust_pickle", [False, True], ids=["restricted-unpickler", "trust-pickle"])
def test_parity_with_original(original_files, tmp_path, trust_pickle):
    import convert_dalle_dvae_to_hf as script

    from hf_t2i import DalleDVAE

    model, parity = script.convert(*original_files, tmp_path / "out", trust_pickle=trust_pickle, image_size=16)
    assert parity is not None
    for name in ("encoder logits", "decoder statistics", "decoded pixels"):
        assert parity[name] <= 1e-4, (name, parity[name])
    assert parity["tokens_identical"] == 1.0
    assert model.config.channel_multipliers == [1, 2, 4, 8] and model.config.decoder_init_channels == 32

    reloaded = DalleDVAE.from_pretrained(tmp_path / "out").eval()
    pixels = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(reloaded.get_logits(pixels), model.get_logits(pixels), rtol=0, atol=0)


def test_trusted_original_runs_after_upsample_fix(original_files):
    import convert_dalle_dvae_to_hf as script
    from conversion_utils import load_torch_file

    # torch >= 2.x restores `recompute_scale_factor` in `Upsample.__setstate__`; older releases did not, so the
    # converter sets it itself. Recreate the drifted module in memory to check that fix.
    decoder = load_torch_file(original_files[1], "decoder.pkl", trust_pickle=True)
    for m in decoder.modules():
        if isinstance(m, torch.nn.Upsample):
            del m.recompute_scale_factor
    codes = torch.nn.functional.one_hot(torch.zeros(1, 2, 2, dtype=torch.long), 512).permute(0, 3, 1, 2).float()
    with pytest.raises(AttributeError, match="recompute_scale_factor"):
        decoder(codes)
    script.fix_upsample_drift(decoder)
    assert decoder(codes).shape == (1, 6, 16, 16)


def test_leftover_source_key_fails(original_files, tmp_path):
    import convert_dalle_dvae_to_hf as script
    from conversion_utils import ConversionError, load_torch_file, module_tensors

    state = module_tensors(load_torch_file(original_files[0], "e", trust_pickle=True), "e")
    state["blocks.extra.w"] = torch.zeros(1)
    torch.save(state, tmp_path / "encoder.pkl")
    with pytest.raises(ConversionError, match=r"not converted.*blocks\.extra\.w"):
        script.convert(tmp_path / "encoder.pkl", original_files[1], check=False)
