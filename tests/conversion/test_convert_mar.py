"""MAR's KL-16 VAE (latent-diffusion's KL autoencoder) -> diffusers `AutoencoderKL`.

MAR has no PyPI package: the reference below is a compact re-implementation of the forward of LTH14/mar's
`models/vae.py`, written from reading it, over a state dict with its exact key names (`encoder.down.{i}.block.{r}`,
`.attn.{r}.{q,k,v,proj_out}`, `decoder.up.{i}...`, `quant_conv`, `post_quant_conv`) and shapes. A small config
(ch 32, ch_mult (1, 2), 32px) keeps it fast; the layout rules (attention after each encoder block at 16x16, none in
the decoder's up path, asymmetric downsampling pad) are MAR's. These tests need no original package and always run.
"""

import copy
import functools
import math
import os
from dataclasses import dataclass

import numpy as np
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


# -- the MAR prior ---------------------------------------------------------------------------------------------------
# A random state dict with the key names and shapes of LTH14/mar's `MAR` (models/mar.py: timm `Block`s, `DiffLoss`'s
# `SimpleMLPAdaLN`) at a tiny size, and a re-implementation of its forward and of its `p_sample_loop` (IDDPM's
# learned-range variance, `space_timesteps` respacing) written from reading the original.


@dataclass(frozen=True)
class MarSize:
    """One MAR size: backbone width, attention heads, blocks on each side, diffusion-head width and blocks."""

    width: int
    heads: int
    depth: int
    head_width: int
    head_depth: int


TINY = MarSize(width=32, heads=2, depth=1, head_width=32, head_depth=2)
# The released sizes differ in more than scale (LTH14/mar `models/mar.py`, README): MAR-B is width 768 with 12 heads
# of 64 dims, 12 + 12 blocks and a 6-block diffusion head of width 1024 (wider than the backbone); MAR-H is 1280 with
# 16 heads of 80 dims, 20 + 20 blocks and a 12-block head of width 1536. Scaled down with those differences kept
# (head dims 16 and 20, heads wider than the backbone, several blocks):
MAR_B_SMALL = MarSize(width=48, heads=3, depth=2, head_width=64, head_depth=3)
MAR_H_SMALL = MarSize(width=40, heads=2, depth=2, head_width=48, head_depth=4)
SIZES = {"tiny": TINY, "mar-b-small": MAR_B_SMALL, "mar-h-small": MAR_H_SMALL}

WIDTH, HEADS, DEPTH, HEAD_WIDTH, HEAD_DEPTH = TINY.width, TINY.heads, TINY.depth, TINY.head_width, TINY.head_depth
BUFFER, CLASSES, PATCH, FREQ = 4, 10, 4, 256
GRID = RES // 2 // PATCH  # the test VAE downsamples by 2: 16 x 16 latents, 4 x 4 tokens
TOKENS, TOKEN_DIM = GRID * GRID, Z * PATCH * PATCH


def _linear(state, name, cin, cout, g, scale=1.0):
    state[f"{name}.weight"] = torch.randn(cout, cin, generator=g) * scale / cin**0.5
    state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.1


def mar_prior_state(seed=0, size: MarSize = TINY):
    g = torch.Generator().manual_seed(seed)
    width, head_width = size.width, size.head_width
    s = {
        "class_emb.weight": torch.randn(CLASSES, width, generator=g),
        "fake_latent": torch.randn(1, width, generator=g),
        "mask_token": torch.randn(1, 1, width, generator=g),
        "encoder_pos_embed_learned": 0.5 * torch.randn(1, TOKENS + BUFFER, width, generator=g),
        "decoder_pos_embed_learned": 0.5 * torch.randn(1, TOKENS + BUFFER, width, generator=g),
        "diffusion_pos_embed_learned": 0.5 * torch.randn(1, TOKENS, width, generator=g),
    }
    _linear(s, "z_proj", TOKEN_DIM, width, g)
    _linear(s, "decoder_embed", width, width, g)
    for name in ("z_proj_ln", "encoder_norm", "decoder_norm"):
        _norm(s, name, width, g)
    for side in ("encoder", "decoder"):
        for i in range(size.depth):
            b = f"{side}_blocks.{i}"
            _norm(s, f"{b}.norm1", width, g)
            _norm(s, f"{b}.norm2", width, g)
            _linear(s, f"{b}.attn.qkv", width, 3 * width, g)
            _linear(s, f"{b}.attn.proj", width, width, g)
            _linear(s, f"{b}.mlp.fc1", width, 4 * width, g)
            _linear(s, f"{b}.mlp.fc2", 4 * width, width, g)
    n = "diffloss.net"
    _linear(s, f"{n}.input_proj", TOKEN_DIM, head_width, g)
    _linear(s, f"{n}.cond_embed", width, head_width, g)
    _linear(s, f"{n}.time_embed.mlp.0", FREQ, head_width, g)
    _linear(s, f"{n}.time_embed.mlp.2", head_width, head_width, g)
    for i in range(size.head_depth):
        _norm(s, f"{n}.res_blocks.{i}.in_ln", head_width, g)
        _linear(s, f"{n}.res_blocks.{i}.mlp.0", head_width, head_width, g)
        _linear(s, f"{n}.res_blocks.{i}.mlp.2", head_width, head_width, g)
        _linear(s, f"{n}.res_blocks.{i}.adaLN_modulation.1", head_width, 3 * head_width, g, scale=0.3)
    _linear(s, f"{n}.final_layer.adaLN_modulation.1", head_width, 2 * head_width, g, scale=0.3)
    _linear(s, f"{n}.final_layer.linear", head_width, 2 * TOKEN_DIM, g)
    # the variance values are a tanh-free linear output: keep them in MAR's nominal [-1, 1]
    s[f"{n}.final_layer.linear.weight"][TOKEN_DIM:] *= 0.1
    s[f"{n}.final_layer.linear.bias"][TOKEN_DIM:] *= 0.1
    return s


def _ln(s, name, x):
    return F.layer_norm(x, (x.shape[-1],), s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-6)


def _lin(s, name, x):
    return F.linear(x, s[f"{name}.weight"], s[f"{name}.bias"])


def _timm_block(s, name, x, heads):
    b, n, c = x.shape
    qkv = _lin(s, f"{name}.attn.qkv", _ln(s, f"{name}.norm1", x)).reshape(b, n, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (b, heads, n, d)
    weights = torch.softmax(q @ k.transpose(-2, -1) * (c // heads) ** -0.5, dim=-1)
    x = x + _lin(s, f"{name}.attn.proj", (weights @ v).transpose(1, 2).reshape(b, n, c))
    return x + _lin(s, f"{name}.mlp.fc2", F.gelu(_lin(s, f"{name}.mlp.fc1", _ln(s, f"{name}.norm2", x))))


def reference_conditions(s, tokens, mask, class_embedding, size: MarSize = TINY):
    """MAR's `forward_mae_encoder` + `forward_mae_decoder` (eval): tokens (B, N, D), mask (B, N) float 1 = masked,
    the same count per row."""
    b = tokens.shape[0]
    width = size.width
    x = _lin(s, "z_proj", tokens)
    x = torch.cat([torch.zeros(b, BUFFER, width), x], dim=1)
    mask_with_buffer = torch.cat([torch.zeros(b, BUFFER), mask], dim=1)
    x[:, :BUFFER] = class_embedding.unsqueeze(1)
    x = _ln(s, "z_proj_ln", x + s["encoder_pos_embed_learned"])
    x = x[(1 - mask_with_buffer).nonzero(as_tuple=True)].reshape(b, -1, width)
    for i in range(size.depth):
        x = _timm_block(s, f"encoder_blocks.{i}", x, size.heads)
    x = _lin(s, "decoder_embed", _ln(s, "encoder_norm", x))
    padded = s["mask_token"].repeat(b, BUFFER + TOKENS, 1)
    padded[(1 - mask_with_buffer).nonzero(as_tuple=True)] = x.reshape(-1, width)
    x = padded + s["decoder_pos_embed_learned"]
    for i in range(size.depth):
        x = _timm_block(s, f"decoder_blocks.{i}", x, size.heads)
    return _ln(s, "decoder_norm", x)[:, BUFFER:] + s["diffusion_pos_embed_learned"]


def reference_head(s, x, t, c):
    """`SimpleMLPAdaLN.forward`: (N, D) noisy tokens, (N,) timesteps, (N, C) conditions -> (N, 2D)."""
    n = "diffloss.net"
    head_width = s[f"{n}.input_proj.weight"].shape[0]
    head_depth = len({k.split(".")[3] for k in s if k.startswith(f"{n}.res_blocks.")})
    half = FREQ // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]  # float32 features, as MAR
    t_emb = _lin(
        s,
        f"{n}.time_embed.mlp.2",
        F.silu(_lin(s, f"{n}.time_embed.mlp.0", torch.cat([args.cos(), args.sin()], -1).to(x.dtype))),
    )
    y = t_emb + _lin(s, f"{n}.cond_embed", c)
    x = _lin(s, f"{n}.input_proj", x)
    for i in range(head_depth):
        r = f"{n}.res_blocks.{i}"
        shift, scale, gate = _lin(s, f"{r}.adaLN_modulation.1", F.silu(y)).chunk(3, dim=-1)
        h = _ln(s, f"{r}.in_ln", x) * (1 + scale) + shift
        x = x + gate * _lin(s, f"{r}.mlp.2", F.silu(_lin(s, f"{r}.mlp.0", h)))
    shift, scale = _lin(s, f"{n}.final_layer.adaLN_modulation.1", F.silu(y)).chunk(2, dim=-1)
    return _lin(s, f"{n}.final_layer.linear", F.layer_norm(x, (head_width,), eps=1e-6) * (1 + scale) + shift)


def reference_betas() -> torch.Tensor:
    """MAR's `get_named_beta_schedule("cosine", 1000)` in float64."""
    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - alpha_bar((i + 1) / 1000) / alpha_bar(i / 1000), 0.999) for i in range(1000)]
    return torch.tensor(betas, dtype=torch.float64)


def reference_head_sample(s, c, steps, generator, temperature=1.0, cfg=1.0):
    """MAR's `DiffLoss.sample` -> `p_sample_loop` with `create_diffusion(str(steps), "cosine")`: float64 schedule,
    respaced by `space_timesteps`, learned-range variance; `c` (N or 2N, C), guidance on epsilon only."""
    acp = torch.cumprod(1 - reference_betas(), 0)
    use, cur, stride = [], 0.0, 999 / (steps - 1) if steps > 1 else 1
    for _ in range(steps):
        use.append(round(cur))
        cur += stride
    last, new_betas = 1.0, []
    for i in use:
        new_betas.append(1 - acp[i] / last)
        last = acp[i]
    b = torch.stack(new_betas)
    a = torch.cumprod(1 - b, 0)
    a_prev = torch.cat([torch.ones(1, dtype=a.dtype), a[:-1]])
    post_var = b * (1 - a_prev) / (1 - a)
    post_log = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef1, coef2 = b * a_prev.sqrt() / (1 - a), (1 - a_prev) * (1 - b).sqrt() / (1 - a)
    rows = c.shape[0] // 2 if cfg != 1.0 else c.shape[0]
    dtype = c.dtype
    x = torch.randn(rows, TOKEN_DIM, generator=generator, dtype=dtype)
    for i in reversed(range(steps)):
        xin = torch.cat([x, x]) if cfg != 1.0 else x
        out = reference_head(s, xin, torch.full((xin.shape[0],), use[i]), c)
        eps, v = out[:, :TOKEN_DIM], out[:, TOKEN_DIM:]
        if cfg != 1.0:
            cond, uncond = eps.chunk(2)
            eps, v = uncond + cfg * (cond - uncond), v[:rows]
        a_i, b_i, c1, c2, post_log_i = (arr[i].to(dtype) for arr in (a, b, coef1, coef2, post_log))
        x0 = (1 / a_i).sqrt() * x - (1 / a_i - 1).sqrt() * eps
        mean = c1 * x0 + c2 * x
        frac = (v + 1) / 2
        log_var = frac * torch.log(b_i) + (1 - frac) * post_log_i
        if i > 0:
            x = mean + torch.exp(0.5 * log_var) * torch.randn(x.shape, generator=generator, dtype=dtype) * temperature
        else:
            x = mean
    return x


def head_sample_delta(model, state, conditions, scale, steps=20) -> float:
    """max |delta| of 20 reverse steps of the converted head (diffusers' DDPMScheduler, `ddpm_sample`) against
    `reference_head_sample`, noise from one seeded generator in the same order. Run in float64: at MAR's first
    timestep (999) the cosine alpha_bar is ~1e-9, so x0 = (x - sqrt(1 - a) eps) / sqrt(a) of a random-weight head is
    ~1e5 and float32 rounding alone (in MAR as here) moves it by ~1e-2 (a relative 2e-6)."""
    from hf_t2i.layers.diffusion_head import build_ddpm_scheduler, ddpm_sample

    scheduler = build_ddpm_scheduler(1000, timestep_spacing="linspace", learned_variance=True)
    torch.testing.assert_close(scheduler.betas, reference_betas().float())  # the same schedule, in float32
    scheduler.betas = reference_betas()
    scheduler.alphas = 1 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, 0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    head = copy.deepcopy(model.diffusion_head).double()
    rows = conditions.shape[0] // (2 if scale != 1 else 1)
    conditions = conditions.double()
    ours = ddpm_sample(
        lambda x, t: head(x, t, conditions),
        (rows, TOKEN_DIM),
        scheduler,
        steps,
        torch.Generator().manual_seed(5),
        guidance_scale=scale,
        dtype=torch.float64,
    )
    state64 = {k: v.double() for k, v in state.items()}
    ref = reference_head_sample(state64, conditions, steps, torch.Generator().manual_seed(5), cfg=scale)
    return (ours - ref).abs().max().item()


def _write_prior(tmp_path, state, extra=None):
    import argparse

    args = argparse.Namespace(model="mar_tiny", label_drop_prob=0.1, num_sampling_steps="100", diffusion_batch_mul=4)
    checkpoint = {"model": state, "model_ema": state, "epoch": 3, "optimizer": {"state": {}}, "args": args}
    checkpoint.update(extra or {})
    torch.save(checkpoint, tmp_path / "checkpoint-last.pth")
    torch.save({"model": mar_vae_state()}, tmp_path / "kl16.ckpt")
    return tmp_path / "checkpoint-last.pth", tmp_path / "kl16.ckpt"


def fixed_masked_input():
    """(class labels, tokens (2, N, D), mask (2, N) with 5 masked tokens per row, 1 = masked)."""
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, TOKENS, TOKEN_DIM, generator=g)
    mask = torch.zeros(2, TOKENS)
    mask[0, [1, 4, 5, 9, 15]] = 1
    mask[1, [0, 2, 3, 7, 8]] = 1
    return torch.tensor([3, 7]), tokens, mask


def prior_deltas(model, state, size: MarSize = TINY) -> dict[str, float]:
    """max |delta| of the converted prior against the re-implementation on a fixed input: diffusion conditions of
    the class rows and of the null-class (guidance) rows, head outputs, 20 reverse head steps with and without
    guidance."""
    labels, tokens, mask = fixed_masked_input()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        z_ref = reference_conditions(state, tokens, mask, state["class_emb.weight"][labels], size)
        z = model.model(class_labels=labels, image_tokens=tokens, mask=mask.bool()).last_hidden_state
        # the unconditional rows: MAR's `fake_latent`
        z_null_ref = reference_conditions(state, tokens, mask, state["fake_latent"].repeat(2, 1), size)
        z_null = model.model(
            image_tokens=tokens, mask=mask.bool(), class_embeds=model.model.null_class_embedding.expand(2, -1)
        ).last_hidden_state
        noisy = torch.randn(2 * TOKENS, TOKEN_DIM, generator=g)
        timesteps = torch.randint(0, 1000, (2 * TOKENS,), generator=g)
        head_ref = reference_head(state, noisy, timesteps, z_ref.reshape(-1, size.width))
        head = model.diffusion_head(noisy, timesteps, z.reshape(-1, size.width))
        cond = z.reshape(-1, size.width)[:6]
        cond2 = torch.cat([cond, z_null.reshape(-1, size.width)[:6]])
        samples = {}
        for scale in (1.0, 3.0):
            samples[f"head sample, guidance {scale}"] = head_sample_delta(
                model, state, cond2 if scale != 1 else cond, scale
            )
    return {
        "diffusion conditions": (z - z_ref).abs().max().item(),
        "null-class conditions": (z_null - z_null_ref).abs().max().item(),
        "head outputs (eps, variance)": (head - head_ref).abs().max().item(),
        **samples,
    }


def test_prior_parity_sampling_and_reload(tmp_path):
    import convert_mar_to_hf as script

    from hf_t2i import FluidPipeline

    state = mar_prior_state()
    prior, vae = _write_prior(tmp_path, state)
    result = script.convert_prior(prior, vae, tmp_path / "out", num_heads=HEADS)
    model, c = result["model"], result["config"]
    assert (c.num_classes, c.buffer_size, c.num_image_tokens, c.token_dim) == (CLASSES, BUFFER, TOKENS, TOKEN_DIM)
    deltas = prior_deltas(model, state)
    print(f"parity MAR prior: {deltas}")
    assert max(deltas.values()) <= 1e-4, deltas
    labels, tokens, mask = fixed_masked_input()
    with torch.no_grad():
        z = model.model(class_labels=labels, image_tokens=tokens, mask=mask.bool()).last_hidden_state

    pipe = FluidPipeline.from_pretrained(tmp_path / "out")
    assert pipe.processor is None and pipe.model.config.num_classes == CLASSES
    with torch.no_grad():
        reloaded = pipe.model.model(class_labels=labels, image_tokens=tokens, mask=mask.bool()).last_hidden_state
    torch.testing.assert_close(reloaded, z, rtol=0, atol=0)
    kwargs = dict(class_labels=[1, 2], num_inference_steps=4, num_diffusion_steps=5, guidance_scale=2.0)
    kwargs.update(guidance_schedule="linear", output_type="pt")
    first = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    again = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert first.shape == (2, 3, RES, RES) and torch.equal(first, again)
    with pytest.raises(ValueError, match="class-conditional"):
        pipe("a red circle")
    with pytest.raises(ValueError, match=r"class_labels.*\[0, 10\)"):
        pipe(class_labels=[10])
    assert (tmp_path / "out" / "README.md").exists()


@pytest.mark.parametrize("size", [MAR_B_SMALL, MAR_H_SMALL], ids=["mar-b-small", "mar-h-small"])
def test_other_sizes_convert_with_parity(tmp_path, size):
    """MAR-B and MAR-H, scaled down with what sets them apart from the default test size: head dims (16 as MAR-B's
    64 / 4, 20 as MAR-H's 80 / 4), a diffusion head wider than the backbone, several blocks on each side."""
    import convert_mar_to_hf as script

    state = mar_prior_state(seed=1, size=size)
    prior, vae = _write_prior(tmp_path, state)
    result = script.convert_prior(prior, vae, num_heads=size.heads)
    model, c = result["model"], result["config"]
    assert (c.hidden_size, c.num_attention_heads, c.encoder_attention_heads) == (size.width, size.heads, size.heads)
    assert (c.encoder_layers, c.num_hidden_layers) == (size.depth, size.depth)
    assert (c.diffusion_head_width, c.diffusion_head_layers) == (size.head_width, size.head_depth)
    deltas = prior_deltas(model, state, size)
    print(f"parity MAR prior ({size}): {deltas}")
    assert max(deltas.values()) <= 1e-4, deltas


def test_head_counts_of_the_released_sizes():
    import convert_mar_to_hf as script
    from conversion_utils import ConversionError

    assert script._heads(768, (12, 12), {"model": "mar_base"}, None) == 12
    assert script._heads(1024, (16, 16), {}, None) == 16
    assert script._heads(1280, (20, 20), {"model": "mar_huge"}, None) == 16  # heads of 80 dims
    assert script._heads(48, (2, 2), {"model": "mar_base"}, 3) == 3  # the user's count wins
    # a scaled-down MAR-B still named "mar_base": 12 heads would divide its width 48, into a wrong model
    with pytest.raises(
        ConversionError, match=r"width 48 and depths 2 \+ 2 and `args.model` is 'mar_base'.*--num-heads"
    ):
        script._heads(48, (2, 2), {"model": "mar_base"}, None)
    with pytest.raises(ConversionError, match="not one of the released sizes"):
        script._heads(1280, (20, 20), {"model": "mar_large"}, None)  # the name contradicts the weights
    with pytest.raises(ConversionError, match="--num-heads 5 must be a positive divisor of the width 48"):
        script._heads(48, (2, 2), {}, 5)


def test_prior_leftovers_and_wrong_files_fail_clearly(tmp_path):
    import convert_mar_to_hf as script
    from conversion_utils import ConversionError

    state = mar_prior_state()
    prior, vae = _write_prior(tmp_path, {**state, "diffloss.net.extra.weight": torch.zeros(2)})
    with pytest.raises(ConversionError, match="not converted.*diffloss.net.extra.weight"):
        script.convert_prior(prior, vae, num_heads=HEADS)
    prior, vae = _write_prior(tmp_path, state)
    with pytest.raises(ConversionError, match="heads.*--num-heads"):
        script.convert_prior(prior, vae)  # width 32 is no released MAR's: the heads are not known
    with pytest.raises(ConversionError, match="KL-16 VAE, not a MAR prior"):
        script.convert_prior(vae, vae, num_heads=HEADS)
    _write_prior(tmp_path, state, {"model_ema": None})
    with pytest.raises(ConversionError, match="no 'model_ema'.*--weights model"):
        script.convert_prior(prior, vae, num_heads=HEADS)
    assert script.convert_prior(prior, vae, weights="model", num_heads=HEADS)["config"].encoder_layers == DEPTH
    broken = dict(state)
    broken["diffloss.net.final_layer.linear.weight"] = broken["diffloss.net.final_layer.linear.weight"][:TOKEN_DIM]
    broken["diffloss.net.final_layer.linear.bias"] = broken["diffloss.net.final_layer.linear.bias"][:TOKEN_DIM]
    prior, vae = _write_prior(tmp_path, broken)
    with pytest.raises(ConversionError, match="predicts 64 values per token"):
        script.convert_prior(prior, vae, num_heads=HEADS)


def original_mar(repo: str, size: MarSize):
    """LTH14/mar's own `models.mar.MAR`, built by the test with the sizes it knows (not the converter's reading of
    them), in eval mode."""
    import sys

    sys.path.insert(0, repo)
    try:
        from models.mar import MAR
    finally:
        sys.path.remove(repo)
    return MAR(
        img_size=RES,
        vae_stride=2,
        patch_size=PATCH,
        encoder_embed_dim=size.width,
        encoder_depth=size.depth,
        encoder_num_heads=size.heads,
        decoder_embed_dim=size.width,
        decoder_depth=size.depth,
        decoder_num_heads=size.heads,
        mlp_ratio=4,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        vae_embed_dim=Z,
        class_num=CLASSES,
        buffer_size=BUFFER,
        diffloss_d=size.head_depth,
        diffloss_w=size.head_width,
        num_sampling_steps="100",
    ).eval()


@pytest.mark.convert
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_prior_against_lth14_mar_code(tmp_path, monkeypatch, size):
    """Against LTH14/mar's own `models/mar.py` (a clone at $MAR_REPO, with timm), for the default test size and
    scaled-down MAR-B / MAR-H: the original built by the test with the true sizes and loaded strictly with
    `mar_prior_state(size=...)` (so the test's key names and shapes are the original's); its diffusion conditions
    (class and null-class rows) and head outputs against the converted model's; the converter's own `--mar-repo`
    check; and MAR's `sample_tokens` loop against Fluid's with the same generation order and a deterministic
    stand-in for the per-token sampler (both sides' diffusion heads are compared before): which tokens each
    iteration reveals, the linear guidance scale it uses, the masked inputs it reads, the tokens it returns."""
    repo = os.environ.get("MAR_REPO")
    if not repo:
        pytest.skip("set MAR_REPO to a clone of LTH14/mar (and install timm) to compare with the original code")
    pytest.importorskip("timm")
    import convert_mar_to_hf as script

    from hf_t2i.generation import masked

    state = mar_prior_state(seed=1, size=size)
    original = original_mar(repo, size)
    original.load_state_dict(state)  # strict: the test's keys and shapes are the original's
    prior, vae = _write_prior(tmp_path, state)
    result = script.convert_prior(prior, vae, num_heads=size.heads, mar_repo=repo)
    assert max(result["parity"].values()) <= 1e-4, result["parity"]
    model = result["model"]
    labels, tokens, mask = fixed_masked_input()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        deltas = {}
        for name, class_embedding in (
            ("conditions", original.class_emb(labels)),
            ("null-class conditions", original.fake_latent.repeat(2, 1)),
        ):
            z_ref = original.forward_mae_decoder(original.forward_mae_encoder(tokens, mask, class_embedding), mask)
            z = model.model(image_tokens=tokens, mask=mask.bool(), class_embeds=class_embedding).last_hidden_state
            deltas[name] = (z - z_ref).abs().max().item()
        noisy = torch.randn(2 * TOKENS, TOKEN_DIM, generator=g)
        timesteps = torch.randint(0, 1000, (2 * TOKENS,), generator=g)
        head_ref = original.diffloss.net(noisy, timesteps, z_ref.reshape(2 * TOKENS, -1))
        head = model.diffusion_head(noisy, timesteps, z.reshape(2 * TOKENS, -1))
        deltas["head outputs"] = (head - head_ref).abs().max().item()
    print(f"parity against models/mar.py ({size}): {deltas}")
    assert max(deltas.values()) <= 1e-4, deltas

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)  # MAR's sampler calls .cuda()
    np.random.seed(0)
    orders = original.sample_orders(2)
    # MAR reveals its order from the end (positions `orders[:, :mask_len]` stay masked), Fluid from the start
    monkeypatch.setattr(masked, "random_orders", lambda *args: orders.flip(1))

    projection = torch.randn(size.width, TOKEN_DIM, generator=torch.Generator().manual_seed(4))

    def stand_in(z: torch.Tensor, scale: float) -> torch.Tensor:  # guided, deterministic "sample" of each condition
        cond, uncond = z.chunk(2)
        return (uncond + scale * (cond - uncond)) @ projection

    calls = {"mar": [], "fluid": []}

    def mar_sample(z, temperature=1.0, cfg=1.0):
        calls["mar"].append((z.shape[0] // 2, round(float(cfg), 6)))
        return torch.cat([stand_in(z, cfg)] * 2)

    def fluid_draw(hidden, guided, scale, state):
        calls["fluid"].append((hidden.shape[0] // 2 * hidden.shape[1], round(float(scale), 6)))
        return stand_in(hidden, scale)

    monkeypatch.setattr(original.diffloss, "sample", mar_sample)
    monkeypatch.setattr(model, "_draw", fluid_draw)
    labels = torch.tensor([2, 9])
    np.random.seed(0)
    with torch.no_grad():
        ref = original.sample_tokens(bsz=2, num_iter=5, cfg=3.0, cfg_schedule="linear", labels=labels)
        ours = model.sample_image_tokens(class_labels=labels, num_inference_steps=5, guidance_scale=3.0,
                                         guidance_schedule="linear")  # fmt: skip
    assert calls["fluid"] == calls["mar"], calls
    ref_tokens = ref.reshape(2, Z, GRID, PATCH, GRID, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(2, TOKENS, -1)
    delta = (ours - ref_tokens).abs().max().item()
    print(f"parity MAR sample_tokens loop (5 iterations, cfg 3 linear): {delta:.2e}; calls {calls['mar']}")
    assert delta <= 1e-4


def test_prior_command_line_errors_are_one_line(tmp_path, capsys):
    import convert_mar_to_hf as script
    from conversion_utils import run_main

    prior, vae = _write_prior(tmp_path, mar_prior_state())
    prior.write_bytes(prior.read_bytes()[:1000])  # truncated
    status = run_main(script.main, ["--prior", str(prior), "--vae", str(vae), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: MAR prior checkpoint") and "could not be read" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
    # the saved training `args` (an argparse.Namespace) is plain data the restricted loader accepts; other objects
    # are refused
    torch.save({"model": {}, "model_ema": {}, "args": Gadget()}, prior)
    status = run_main(script.main, ["--prior", str(prior), "--vae", str(vae), "--output", str(tmp_path / "o")])
    assert status == 2 and "--trust-pickle" in capsys.readouterr().err


class Gadget:
    """Any class a malicious pickle could name."""
