"""MAR's KL-16 VAE (latent-diffusion's KL autoencoder) -> diffusers `AutoencoderKL`.

MAR has no PyPI package: the reference below is a compact re-implementation of the forward of LTH14/mar's
`models/vae.py`, written from reading it, over a state dict with its exact key names (`encoder.down.{i}.block.{r}`,
`.attn.{r}.{q,k,v,proj_out}`, `decoder.up.{i}...`, `quant_conv`, `post_quant_conv`) and shapes. A small config
(ch 32, ch_mult (1, 2), 32px) keeps it fast; the layout rules (attention after each encoder block at 16x16, none in
the decoder's up path, asymmetric downsampling pad) are MAR's. These tests need no original package and always run.
"""

import pytest
import torch
import torch.nn.functional as F


CH, CH_MULT, BLOCKS, Z, RES = 32, (1, 2), 2, 4, 32


def _conv(state, name, cin, cout, k, g):
    state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (1.0 / (cin * k * k)) ** 0.5
    state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.1


def _norm(state, name, c, g):
    state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
    state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)


def _resnet_state(state, name, cin, cout, g):
    _norm(state, f"{name}.norm1", cin, g)
    _conv(state, f"{name}.conv1", cin, cout, 3, g)
    _norm(state, f"{name}.norm2", cout, g)
    _conv(state, f"{name}.conv2", cout, cout, 3, g)
    if cin != cout:
        _conv(state, f"{name}.nin_shortcut", cin, cout, 1, g)


def _attn_state(state, name, c, g):
    _norm(state, f"{name}.norm", c, g)
    for n in ("q", "k", "v", "proj_out"):
        _conv(state, f"{name}.{n}", c, c, 1, g)


def mar_vae_state(seed=0):
    """A random state dict with the key names and shapes of MAR's `AutoencoderKL(embed_dim=Z, ch_mult=CH_MULT)`."""
    g = torch.Generator().manual_seed(seed)
    s = {}
    levels = len(CH_MULT)
    _conv(s, "encoder.conv_in", 3, CH, 3, g)
    res, block_in = RES, CH
    for i, mult in enumerate(CH_MULT):
        for r in range(BLOCKS):
            _resnet_state(s, f"encoder.down.{i}.block.{r}", block_in, CH * mult, g)
            block_in = CH * mult
            if res == 16:
                _attn_state(s, f"encoder.down.{i}.attn.{r}", block_in, g)
        if i != levels - 1:
            _conv(s, f"encoder.down.{i}.downsample.conv", block_in, block_in, 3, g)
            res //= 2
    for side in ("encoder", "decoder"):
        c = CH * CH_MULT[-1]
        _resnet_state(s, f"{side}.mid.block_1", c, c, g)
        _attn_state(s, f"{side}.mid.attn_1", c, g)
        _resnet_state(s, f"{side}.mid.block_2", c, c, g)
    _norm(s, "encoder.norm_out", block_in, g)
    _conv(s, "encoder.conv_out", block_in, 2 * Z, 3, g)
    _conv(s, "decoder.conv_in", Z, CH * CH_MULT[-1], 3, g)
    block_in = CH * CH_MULT[-1]
    for i in reversed(range(levels)):
        for r in range(BLOCKS + 1):
            _resnet_state(s, f"decoder.up.{i}.block.{r}", block_in, CH * CH_MULT[i], g)
            block_in = CH * CH_MULT[i]
        if i != 0:
            _conv(s, f"decoder.up.{i}.upsample.conv", block_in, block_in, 3, g)
    _norm(s, "decoder.norm_out", block_in, g)
    _conv(s, "decoder.conv_out", block_in, 3, 3, g)
    _conv(s, "quant_conv", 2 * Z, 2 * Z, 1, g)
    _conv(s, "post_quant_conv", Z, Z, 1, g)
    return s


# -- reference forward (MAR's models/vae.py semantics) -----------------------------------------------------------


def _gn(s, name, x):
    return F.group_norm(x, 32, s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-6)


def _c(s, name, x, padding):
    return F.conv2d(x, s[f"{name}.weight"], s[f"{name}.bias"], padding=padding)


def _resnet(s, name, x):
    h = _c(s, f"{name}.conv1", F.silu(_gn(s, f"{name}.norm1", x)), 1)
    h = _c(s, f"{name}.conv2", F.silu(_gn(s, f"{name}.norm2", h)), 1)
    if f"{name}.nin_shortcut.weight" in s:
        x = _c(s, f"{name}.nin_shortcut", x, 0)
    return x + h


def _attn(s, name, x):
    b, c, hh, ww = x.shape
    h = _gn(s, f"{name}.norm", x)
    q, k, v = (_c(s, f"{name}.{n}", h, 0).reshape(b, c, hh * ww) for n in ("q", "k", "v"))
    weights = torch.softmax(q.transpose(1, 2) @ k * c**-0.5, dim=2)  # (b, query, key)
    out = (v @ weights.transpose(1, 2)).reshape(b, c, hh, ww)
    return x + _c(s, f"{name}.proj_out", out, 0)


def reference_encode(s, x):
    """Pixels -> posterior mean (MAR's `encode(x).mode()`)."""
    levels = len(CH_MULT)
    h = _c(s, "encoder.conv_in", x, 1)
    for i in range(levels):
        for r in range(BLOCKS):
            h = _resnet(s, f"encoder.down.{i}.block.{r}", h)
            if f"encoder.down.{i}.attn.{r}.q.weight" in s:
                h = _attn(s, f"encoder.down.{i}.attn.{r}", h)
        if i != levels - 1:
            h = F.conv2d(F.pad(h, (0, 1, 0, 1)), s[f"encoder.down.{i}.downsample.conv.weight"],
                         s[f"encoder.down.{i}.downsample.conv.bias"], stride=2)  # fmt: skip
    h = _resnet(s, "encoder.mid.block_2", _attn(s, "encoder.mid.attn_1", _resnet(s, "encoder.mid.block_1", h)))
    h = _c(s, "encoder.conv_out", F.silu(_gn(s, "encoder.norm_out", h)), 1)
    return _c(s, "quant_conv", h, 0).chunk(2, dim=1)[0]


def reference_decode(s, z):
    h = _c(s, "decoder.conv_in", _c(s, "post_quant_conv", z, 0), 1)
    h = _resnet(s, "decoder.mid.block_2", _attn(s, "decoder.mid.attn_1", _resnet(s, "decoder.mid.block_1", h)))
    for i in reversed(range(len(CH_MULT))):
        for r in range(BLOCKS + 1):
            h = _resnet(s, f"decoder.up.{i}.block.{r}", h)
        if i != 0:
            h = _c(s, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"), 1)
    return _c(s, "decoder.conv_out", F.silu(_gn(s, "decoder.norm_out", h)), 1)


def test_reference_state_has_the_mar_layout():
    s = mar_vae_state()
    assert "encoder.down.1.attn.1.q.weight" in s and "encoder.down.0.attn.0.q.weight" not in s
    assert not any(".attn." in k for k in s if k.startswith("decoder.up."))
    assert s["encoder.conv_out.weight"].shape == (2 * Z, CH * CH_MULT[-1], 3, 3)


def test_vae_parity_and_reload(tmp_path):
    import convert_mar_to_hf as script
    from diffusers import AutoencoderKL

    state = mar_vae_state()
    torch.save({"model": {**state, "loss.logvar": torch.zeros(())}}, tmp_path / "kl16_with_loss.ckpt")
    result = script.convert(tmp_path / "kl16_with_loss.ckpt", tmp_path / "out")
    vae = result["vae"]
    assert vae.config.scaling_factor == 0.2325 and vae.config.latent_channels == Z
    x = torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mean_ref = reference_encode(state, x)
        mean = vae.encode(x).latent_dist.mode()
        z = torch.randn(2, Z, RES // 2, RES // 2, generator=torch.Generator().manual_seed(2))
        pixels_ref = reference_decode(state, z)
        pixels = vae.decode(z).sample
    deltas = {
        "posterior mean": (mean - mean_ref).abs().max().item(),
        "decoded": (pixels - pixels_ref).abs().max().item(),
    }
    print(f"parity MAR KL VAE: {deltas}")
    assert max(deltas.values()) <= 1e-4, deltas
    reloaded = AutoencoderKL.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.decode(z).sample, pixels, rtol=0, atol=0)
    assert (tmp_path / "out" / "README.md").exists()


def test_leftover_and_wrong_files_fail_clearly(tmp_path):
    import convert_mar_to_hf as script
    from conversion_utils import ConversionError

    state = mar_vae_state()
    torch.save({"model": {**state, "encoder.extra.weight": torch.zeros(1)}}, tmp_path / "extra.ckpt")
    with pytest.raises(ConversionError, match="not converted.*encoder.extra.weight"):
        script.convert(tmp_path / "extra.ckpt")
    prior = {"diffloss.net.input_proj.weight": torch.zeros(4, 4), "class_emb.weight": torch.zeros(10, 4)}
    torch.save({"model": prior, "model_ema": prior, "epoch": 3}, tmp_path / "checkpoint-last.pth")
    with pytest.raises(ConversionError, match="MAR prior checkpoint"):
        script.convert(tmp_path / "checkpoint-last.pth")
    torch.save({"model": {"weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(ConversionError, match="not an LDM KL-VAE"):
        script.convert(tmp_path / "other.ckpt")
    (tmp_path / "broken.ckpt").write_bytes((tmp_path / "extra.ckpt").read_bytes()[:500])
    with pytest.raises(ConversionError, match="could not be read"):
        script.convert(tmp_path / "broken.ckpt")
