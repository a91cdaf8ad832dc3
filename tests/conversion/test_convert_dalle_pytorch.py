"""DALLE-pytorch checkpoint -> `DalleForConditionalGeneration`: the original DALLE (with OpenAI's dVAE classes)
built small with random weights, saved as `train_dalle.py` saves it, converted, and compared on fixed inputs."""

import pytest
import torch


dall_e = pytest.importorskip("dall_e", reason="needs the original `DALL-E` package (make test-convert)")
for _name in ("einops", "rotary_embedding_torch", "axial_positional_embedding"):
    pytest.importorskip(_name, reason=f"dalle-pytorch needs `{_name}` (make test-convert)")
pytestmark = pytest.mark.convert


@pytest.fixture(scope="module")
def script():
    import convert_dalle_pytorch_to_hf as script

    if script.import_dalle_pytorch() is None:
        pytest.skip("needs the original `dalle-pytorch` package (make test-convert)")
    return script


def _original(script, vae_class="OpenAIDiscreteVAE", **hparams):
    """A tiny DALLE-pytorch model and the checkpoint dict `train_dalle.py` would save for it."""
    dalle_pytorch = script.import_dalle_pytorch()
    torch.manual_seed(0)
    if vae_class == "OpenAIDiscreteVAE":
        vae = dalle_pytorch.OpenAIDiscreteVAE.__new__(dalle_pytorch.OpenAIDiscreteVAE)  # its __init__ downloads
        torch.nn.Module.__init__(vae)
        vae.enc = dall_e.Encoder(n_hid=64, n_blk_per_group=1, vocab_size=512)
        vae.dec = dall_e.Decoder(n_init=32, n_hid=64, n_blk_per_group=1, vocab_size=512)
        vae.channels, vae.num_layers, vae.image_size, vae.num_tokens = 3, 3, 32, 512  # 4x4 token grid
        vae_params = None
    else:
        vae_params = dict(image_size=32, num_layers=3, num_tokens=64, codebook_dim=16, hidden_dim=16)
        vae = dalle_pytorch.DiscreteVAE(**vae_params)
    defaults = dict(
        num_text_tokens=20,
        text_seq_len=6,
        dim=32,
        depth=2,
        heads=2,
        dim_head=16,
        rotary_emb=False,
        shift_tokens=False,
    )
    defaults.update(hparams)
    dalle = dalle_pytorch.DALLE(vae=vae, **defaults)
    with torch.no_grad():  # move every weight off its init (zero biases, unit norms) so a wrong mapping shows
        for p in dalle.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return dalle, {
        "hparams": defaults,
        "vae_params": vae_params,
        "epoch": 3,
        "version": "1.6.6",
        "vae_class_name": type(vae).__name__,
        "weights": dalle.state_dict(),
        "opt_state": torch.optim.Adam(dalle.parameters()).state_dict(),
        "scheduler_state": None,
    }


@pytest.mark.parametrize(
    "hparams",
    [
        dict(attn_types=("full", "axial_col"), sandwich_norm=True),
        dict(attn_types=("axial_col",), share_input_output_emb=True, loss_img_weight=3),
        dict(shared_attn_ids=(0, 0), shared_ff_ids=(0, 0)),
    ],
    ids=["full+axial_col+sandwich", "shared-io-embedding", "shared-layers"],
)
def test_parity_with_original(script, tmp_path, hparams):
    from hf_t2i import DalleForConditionalGeneration

    _, checkpoint = _original(script, **hparams)
    torch.save(checkpoint, tmp_path / "dalle.pt")
    model, parity = script.convert(tmp_path / "dalle.pt", tmp_path / "out")
    assert parity is not None
    assert parity["logits"] <= 1e-4 and parity["decoded pixels"] <= 1e-4, parity
    assert parity["tokens_identical"] == 1.0

    reloaded = DalleForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    ids = torch.cat([torch.zeros(1, 1, dtype=torch.long), torch.tensor([[3, 4, 5, 0, 0, 0]])], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    "hparams, vae_class, message",
    [
        (dict(rotary_emb=True), "OpenAIDiscreteVAE", "rotary_emb=True"),
        (dict(shift_tokens=True), "OpenAIDiscreteVAE", "shift_tokens=True"),
        (dict(stable=True), "OpenAIDiscreteVAE", "stable=True"),
        (dict(attn_types=("full", "axial_row")), "OpenAIDiscreteVAE", "axial_row"),
        (dict(), "DiscreteVAE", "DiscreteVAE"),
    ],
    ids=["rotary", "shift-tokens", "stable", "axial-row", "own-discrete-vae"],
)
def test_unsupported_options_are_named(script, tmp_path, hparams, vae_class, message):
    from conversion_utils import ConversionError

    _, checkpoint = _original(script, vae_class=vae_class, **hparams)
    torch.save(checkpoint, tmp_path / "dalle.pt")
    with pytest.raises(ConversionError, match=message):
        script.convert(tmp_path / "dalle.pt", check=False)


def test_leftover_key_fails(script, tmp_path):
    from conversion_utils import ConversionError

    _, checkpoint = _original(script)
    checkpoint["weights"]["transformer.layers.layers.0.0.fn.extra.weight"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "dalle.pt")
    with pytest.raises(ConversionError, match="extra.weight"):
        script.convert(tmp_path / "dalle.pt", check=False)


def test_push_to_hub_uploads_the_hf_t2i_card(script, tmp_path, fake_hub, capsys):
    from conversion_utils import run_main

    _, checkpoint = _original(script)
    torch.save(checkpoint, tmp_path / "dalle.pt")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tmp_path / "dalle.pt"), "--output", str(out), "--skip-parity"]
    assert run_main(script.main, [*argv, "--push-to-hub", "me/dalle-tiny", "--license", "mit"]) == 0
    assert "pushed" in capsys.readouterr().out
    files = fake_hub.uploaded()
    assert {"README.md", "config.json", "model.safetensors"} <= set(files)
    assert files["README.md"] == (out / "README.md").read_bytes()
    card = fake_hub.card()
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("hf_t2i", "text-to-image", "mit")
    assert {"dalle", "dalle-pytorch", "hf_t2i"} <= set(data.tags)
    assert 'DalleForConditionalGeneration.from_pretrained("me/dalle-tiny")' in card.text
    assert "## Converted from a DALLE-pytorch checkpoint" in card.text and "`[0, *ids]`" in card.text
