"""DALLE-pytorch checkpoint -> `DalleForConditionalGeneration`: the original DALLE (with OpenAI's dVAE classes)
built small with random weights, saved as `train_dalle.py` saves it, converted, and compared on fixed inputs."""

import pytest
import torch
from transformers.cache_utils import DynamicCache


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


def _original(script, vae_class="OpenAIDiscreteVAE", image_size=32, vae_params=None, **hparams):
    """A tiny DALLE-pytorch model and the checkpoint dict `train_dalle.py` would save for it (OpenAI's dVAE
    downsamples by 8: 32 px is a 4 x 4 token grid)."""
    dalle_pytorch = script.import_dalle_pytorch()
    torch.manual_seed(0)
    if vae_class == "OpenAIDiscreteVAE":
        vae = dalle_pytorch.OpenAIDiscreteVAE.__new__(dalle_pytorch.OpenAIDiscreteVAE)  # its __init__ downloads
        torch.nn.Module.__init__(vae)
        vae.enc = dall_e.Encoder(n_hid=64, n_blk_per_group=1, vocab_size=512)
        vae.dec = dall_e.Decoder(n_init=32, n_hid=64, n_blk_per_group=1, vocab_size=512)
        vae.channels, vae.num_layers, vae.image_size, vae.num_tokens = 3, 3, image_size, 512
        vae_params = None
    else:  # its own DiscreteVAE, with train_vae.py's hparams (three stride-2 convs: 32 px is a 4 x 4 grid)
        vae_params = {
            **dict(image_size=image_size, num_layers=3, num_tokens=64, codebook_dim=16, hidden_dim=16),
            **(vae_params or {}),
        }
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
        # a 6 x 6 grid, so that conv_like's 5 x 5 window leaves out part of the rows above
        dict(attn_types=("axial_row", "conv_like"), image_size=48),
        dict(attn_types=("axial_col",), share_input_output_emb=True, loss_img_weight=3),
        dict(shared_attn_ids=(0, 0), shared_ff_ids=(0, 0)),
        # DALLE-pytorch's default position encoding: rotary on queries, keys and values, through the dense and the
        # sparse attention classes; dim_head 18: three groups of 6 channels, none left unrotated
        dict(
            rotary_emb=True, depth=3, dim=36, dim_head=18, attn_types=("full", "axial_row", "conv_like"), image_size=48
        ),
        # dim_head 16: groups of 16 // 3 = 5 channels rounded down to 2 pairs, 4 channels left unrotated
        dict(rotary_emb=True, attn_types=("full", "axial_col")),
        # DALLE-pytorch's defaults together: token shifting and rotary, through the dense and sparse classes
        dict(
            shift_tokens=True,
            rotary_emb=True,
            depth=3,
            dim=36,
            dim_head=18,
            attn_types=("full", "axial_row", "conv_like"),
            image_size=48,
            sandwich_norm=True,
        ),
        # dim 30: chunk(4) splits it 8 + 8 + 8 + 6 and chunk(2) 15 + 15
        dict(shift_tokens=True, dim=30, dim_head=15, attn_types=("axial_col",)),
    ],
    ids=[
        "full+axial_col+sandwich",
        "axial_row+conv_like",
        "shared-io-embedding",
        "shared-layers",
        "rotary+sparse",
        "rotary-odd-groups",
        "shift+rotary+sparse",
        "shift-uneven-chunks",
    ],
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

    # the converted attention pattern decodes through the cache as the full forward computes it
    config = model.config
    codes = torch.randint(
        0, config.image_vocab_size, (1, config.num_image_tokens), generator=torch.Generator().manual_seed(0)
    )
    sequence = model.build_sequence(ids, codes)
    cache = DynamicCache(config=config)
    with torch.no_grad():
        full = model(sequence, use_cache=False).logits
        steps = [model(sequence[:, [i]], cache=cache, use_cache=True).logits for i in range(sequence.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "vae_params, hparams",
    [
        (dict(), dict(attn_types=("full", "axial_col"))),
        # residual blocks, a codebook narrower than the convs, another normalisation, 64 px with DALLE-pytorch's
        # defaults (token shifting and rotary) in the prior
        (
            dict(
                num_resnet_blocks=2,
                codebook_dim=8,
                normalization=((0.48, 0.46, 0.41), (0.27, 0.26, 0.28)),
                image_size=64,
                num_layers=4,
            ),
            dict(shift_tokens=True, rotary_emb=True, dim=36, dim_head=18, attn_types=("full", "conv_like")),
        ),
    ],
    ids=["discrete-vae", "discrete-vae-resblocks+shift+rotary"],
)
def test_parity_with_original_discrete_vae(script, tmp_path, vae_params, hparams):
    """A DALLE-pytorch model on its own DiscreteVAE: the whole model path (logits, greedy and guided tokens, the
    VAE's codes of fixed images, decoded pixels) against the original."""
    from hf_t2i import DalleForConditionalGeneration, DallePytorchDVAE

    _, checkpoint = _original(script, vae_class="DiscreteVAE", vae_params=vae_params, **hparams)
    torch.save(checkpoint, tmp_path / "dalle.pt")
    model, parity = script.convert(tmp_path / "dalle.pt", tmp_path / "out")
    assert isinstance(model.vqmodel, DallePytorchDVAE)
    assert parity["logits"] <= 1e-4 and parity["decoded pixels"] <= 1e-4 and parity["tokens_identical"] == 1.0, parity
    reloaded = DalleForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    assert isinstance(reloaded.vqmodel, DallePytorchDVAE)
    codes = torch.randint(0, 64, (1, model.config.num_image_tokens), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(reloaded.decode_image_tokens(codes), model.decode_image_tokens(codes), rtol=0, atol=0)


def test_train_vae_checkpoint_converts_alone(script, tmp_path, capsys):
    """`train_vae.py`'s `vae.pt` ({'hparams', 'weights'}) -> a DallePytorchDVAE folder, through the command line."""
    from conversion_utils import run_main

    from hf_t2i import DallePytorchDVAE
    from hf_t2i.models.image_tokenizers import load_image_tokenizer

    dalle_pytorch = script.import_dalle_pytorch()
    torch.manual_seed(0)
    hparams = dict(image_size=32, num_layers=2, num_tokens=32, codebook_dim=8, hidden_dim=16, num_resnet_blocks=1)
    vae = dalle_pytorch.DiscreteVAE(**hparams)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save({"hparams": hparams, "weights": vae.state_dict()}, tmp_path / "vae.pt")
    argv = ["--vae-checkpoint", str(tmp_path / "vae.pt"), "--output", str(tmp_path / "out")]
    assert run_main(script.main, argv) == 0
    out = capsys.readouterr().out
    assert "parity VAE codes: identical" in out and "decoded pixels" in out
    loaded = load_image_tokenizer(tmp_path / "out")
    assert isinstance(loaded, DallePytorchDVAE) and loaded.config.grid_size == 8
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.encode(pixels * 2 - 1), vae.eval().get_codebook_indices(pixels))
        codes = loaded.encode(pixels * 2 - 1)
        # the default normalisation (mean 0.5, std 0.5) makes the original's output space the package's [-1, 1]
        torch.testing.assert_close(loaded.decode(codes), vae.decode(codes), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "hparams, vae_class_name, message",
    [
        (dict(stable=True), None, "stable=True"),
        (dict(attn_types=("full", "sparse")), None, r"attn_types \['sparse'\]"),
        (dict(), "VQGanVAE", "VQGanVAE"),
    ],
    ids=["stable", "sparse", "vqgan-vae"],
)
def test_unsupported_options_are_named(script, tmp_path, hparams, vae_class_name, message):
    from conversion_utils import ConversionError

    built = {k: v for k, v in hparams.items() if k != "attn_types"}  # 'sparse' needs DeepSpeed to be built
    _, checkpoint = _original(script, **built)
    checkpoint["vae_class_name"] = vae_class_name or checkpoint["vae_class_name"]
    checkpoint["hparams"].update(hparams)
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


def test_a_rotary_table_of_another_layout_is_refused(script, tmp_path):
    from conversion_utils import ConversionError

    _, checkpoint = _original(script, rotary_emb=True)
    checkpoint["weights"]["transformer.pos_emb"] = checkpoint["weights"]["transformer.pos_emb"].flip(-1)
    torch.save(checkpoint, tmp_path / "dalle.pt")
    with pytest.raises(ConversionError, match="not DALLE-pytorch 1.6.6's rotary layout"):
        script.convert(tmp_path / "dalle.pt", check=False)


@torch.no_grad()
def _original_cached_greedy(original, text: torch.Tensor) -> torch.Tensor:
    """The loop of the original's `generate_images(use_cache=True)` with argmax for its top-k + Gumbel draw: one
    token per call through its own cache (for `shift_tokens`, the deque of the last image row per sub-layer)."""
    length, cache = original.text_seq_len, {}
    out = text.clone()
    for _ in range(original.image_seq_len):
        logits = original(out[:, :length].clone(), out[:, length:], cache=cache)[:, -1]
        out = torch.cat([out, logits.argmax(-1, keepdim=True) - original.num_text_tokens], dim=1)
    return out[:, length:]


def test_shift_tokens_decoding_matches_the_originals_cached_loop(script, tmp_path):
    """The converted model's cached decoding against the original's own cached decoding, not only its full forward."""
    original, checkpoint = _original(script, shift_tokens=True, rotary_emb=True, dim=36, dim_head=18, image_size=48)
    torch.save(checkpoint, tmp_path / "dalle.pt")
    model, _ = script.convert(tmp_path / "dalle.pt", check=False)
    text = torch.randint(1, 20, (2, 6), generator=torch.Generator().manual_seed(1))
    text[0, 3:] = 0
    ids = torch.cat([torch.zeros(2, 1, dtype=torch.long), text], dim=1)
    expected = _original_cached_greedy(original.eval(), text)
    assert torch.equal(model.sample_image_tokens(ids, do_sample=False), expected)
    generated = model.generate(ids, do_sample=False, max_new_tokens=model.config.num_image_tokens)
    assert torch.equal(model.image_codes_from_generated(generated), expected)
