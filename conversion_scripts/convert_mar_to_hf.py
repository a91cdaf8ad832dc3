"""Convert MAR's KL-16 VAE (LTH14/mar, `kl16.ckpt`: `{"model": state dict}`) to a diffusers `AutoencoderKL`.

Status: the VAE converts (parity below). The MAR prior (`checkpoint-last.pth`: `{"model", "model_ema", ...}`) is NOT
converted yet: it is an MAE-style encoder-decoder over a class embedding (64 buffer tokens, masked tokens dropped
in the encoder), which `FluidForConditionalGeneration` does not have (see `conversion_scripts/README.md`); this
script refuses such a file with an error saying so.

MAR's VAE is latent-diffusion's KL autoencoder: `ch=128`, `ch_mult=(1, 1, 2, 2, 4)`, 2 res blocks per level, 16
latent channels (f16: 256px -> 16 x 16 x 16), GroupNorm(32, eps 1e-6), swish, single-head attention in the encoder's
lowest level (`attn_resolutions=(16,)`) and in both mid blocks, none in the decoder's up path. The diffusers model is
`AutoencoderKL(down_block_types=4 x DownEncoderBlock2D + AttnDownEncoderBlock2D, up_block_types=5 x
UpDecoderBlock2D, block_out_channels=(128, 128, 256, 256, 512), latent_channels=16, scaling_factor=0.2325)`; MAR
scales latents by 0.2325 (`vae_embed_dim=16`, `--vae_norm 0.2325` in its README), and the converted config records it
as `scaling_factor`. Widths, levels and latent channels are read from the tensor shapes.

| source (`model`)                                         | target (`AutoencoderKL`)                                 |
|----------------------------------------------------------|----------------------------------------------------------|
| `encoder.conv_in`, `encoder.norm_out`, `encoder.conv_out` | `encoder.conv_in`, `encoder.conv_norm_out`, `encoder.conv_out` |
| `encoder.down.{i}.block.{r}.{norm1,conv1,norm2,conv2,nin_shortcut}` | `encoder.down_blocks.{i}.resnets.{r}.{..., conv_shortcut}` |
| `encoder.down.{i}.attn.{r}.{norm,q,k,v,proj_out}`        | `encoder.down_blocks.{i}.attentions.{r}.{group_norm,to_q,to_k,to_v,to_out.0}` (1x1 convs -> linears) |
| `encoder.down.{i}.downsample.conv`                       | `encoder.down_blocks.{i}.downsamplers.0.conv` (both pad right/bottom by 1) |
| `{encoder,decoder}.mid.block_{1,2}`, `.mid.attn_1`       | `{encoder,decoder}.mid_block.resnets.{0,1}`, `.mid_block.attentions.0` |
| `decoder.up.{U}.block.{r}`, `decoder.up.{U}.upsample.conv` | `decoder.up_blocks.{L-1-U}.resnets.{r}`, `decoder.up_blocks.{L-1-U}.upsamplers.0.conv` |
| `decoder.conv_in`, `decoder.norm_out`, `decoder.conv_out` | `decoder.conv_in`, `decoder.conv_norm_out`, `decoder.conv_out` |
| `quant_conv`, `post_quant_conv`                          | `quant_conv`, `post_quant_conv`                          |
| `loss.*` (discriminator / LPIPS, if present)             | dropped (training only)                                  |

Usage:
    python conversion_scripts/convert_mar_to_hf.py --vae kl16.ckpt --output out/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from conversion_utils import (  # noqa: E402
    ConversionError,
    KeyConsumer,
    ldm_attention,
    ldm_resnet,
    load_converted,
    load_torch_file,
    require_mapping,
    run_main,
    tensors_only,
    write_model_card,
)


LATENT_SCALE = 0.2325  # MAR's `vae_norm` for KL-16


def _levels(state: dict, prefix: str) -> int:
    levels = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    if not levels or levels != set(range(len(levels))):
        raise ConversionError(f"kl16 VAE: expected levels 0..L-1 under `{prefix}`, found {sorted(levels)[:8]}")
    return len(levels)


def vae_config(state: dict) -> dict:
    """The `AutoencoderKL` config read from the tensor shapes of an LDM KL-VAE state dict."""
    levels = _levels(state, "encoder.down.")
    widths = [state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
    blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")})
    attention = [f"encoder.down.{i}.attn.0.q.weight" in state for i in range(levels)]
    if any(f"decoder.up.{i}.attn.0.q.weight" in state for i in range(levels)):
        raise ConversionError("kl16 VAE: attention in the decoder's up path is not MAR's KL-16 layout (none there).")
    latent = state["post_quant_conv.weight"].shape[0]
    resolution = 2 ** (levels - 1) * 16  # MAR: 256px -> 16 x 16 latents
    return dict(
        in_channels=state["encoder.conv_in.weight"].shape[1],
        out_channels=state["decoder.conv_out.weight"].shape[0],
        down_block_types=["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attention],
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=widths,
        layers_per_block=blocks,
        latent_channels=latent,
        norm_num_groups=32,
        sample_size=resolution,
        scaling_factor=LATENT_SCALE,
        mid_block_add_attention=True,
    )


def convert_vae_state(state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """LDM KL-VAE state dict -> (AutoencoderKL config, state dict); fails on any key it does not map."""
    config = vae_config(state)
    levels, blocks = len(config["block_out_channels"]), config["layers_per_block"]
    keys = KeyConsumer(state, "kl16 VAE")
    keys.drop("loss.*", "training loss (discriminator / LPIPS)")
    out: dict[str, torch.Tensor] = {}
    for side in ("encoder", "decoder"):
        for name, target in (("conv_in", "conv_in"), ("norm_out", "conv_norm_out"), ("conv_out", "conv_out")):
            for p in ("weight", "bias"):
                out[f"{side}.{target}.{p}"] = keys.pop(f"{side}.{name}.{p}")
        ldm_resnet(keys, f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", out)
        ldm_attention(keys, f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0", out)
        ldm_resnet(keys, f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", out)
    for i in range(levels):
        src, dst = f"encoder.down.{i}", f"encoder.down_blocks.{i}"
        for r in range(blocks):
            ldm_resnet(keys, f"{src}.block.{r}", f"{dst}.resnets.{r}", out)
            if f"{src}.attn.{r}.q.weight" in keys:
                ldm_attention(keys, f"{src}.attn.{r}", f"{dst}.attentions.{r}", out)
        if i != levels - 1:
            for p in ("weight", "bias"):
                out[f"{dst}.downsamplers.0.conv.{p}"] = keys.pop(f"{src}.downsample.conv.{p}")
    for j in range(levels):
        src, dst = f"decoder.up.{levels - 1 - j}", f"decoder.up_blocks.{j}"
        for r in range(blocks + 1):
            ldm_resnet(keys, f"{src}.block.{r}", f"{dst}.resnets.{r}", out)
        if j != levels - 1:
            for p in ("weight", "bias"):
                out[f"{dst}.upsamplers.0.conv.{p}"] = keys.pop(f"{src}.upsample.conv.{p}")
    for name in ("quant_conv", "post_quant_conv"):
        for p in ("weight", "bias"):
            out[f"{name}.{p}"] = keys.pop(f"{name}.{p}")
    keys.finish()
    return config, out


def read_vae_checkpoint(path) -> dict[str, torch.Tensor]:
    checkpoint = require_mapping(load_torch_file(path, "kl16 VAE checkpoint"), "kl16 VAE checkpoint")
    state = checkpoint.get("model", checkpoint)
    state = tensors_only(state, "kl16 VAE checkpoint['model']")
    if "model_ema" in checkpoint or "diffloss.net.input_proj.weight" in state:
        raise ConversionError(
            f"{path} is a MAR prior checkpoint, not the KL-16 VAE; converting the prior is not supported yet (its "
            "MAE encoder-decoder with class-embedding buffer tokens has no Fluid counterpart)."
        )
    if "encoder.conv_in.weight" not in state or "post_quant_conv.weight" not in state:
        raise ConversionError(
            f"{path} is not an LDM KL-VAE checkpoint (no `encoder.conv_in` / `post_quant_conv`; it has "
            f"{sorted(state)[:6]})."
        )
    return {k: v.float() for k, v in state.items()}


def convert(vae_path, output_dir=None) -> dict:
    """-> {"vae": AutoencoderKL, "config": dict}."""
    from diffusers import AutoencoderKL

    config, state = convert_vae_state(read_vae_checkpoint(vae_path))
    vae = AutoencoderKL(**config).eval()
    load_converted(vae, state, "AutoencoderKL")
    if output_dir is not None:
        output_dir = Path(output_dir)
        vae.save_pretrained(output_dir)
        write_model_card(
            output_dir,
            "MAR KL-16 VAE as a diffusers AutoencoderKL",
            f"""
Converted with `conversion_scripts/convert_mar_to_hf.py` from LTH14/mar's `kl16.ckpt` (latent-diffusion's KL
autoencoder, 16 latent channels, f16). `scaling_factor` = {LATENT_SCALE} is MAR's latent normalisation: scaled
latents are `vae.encode(x).latent_dist.mode() * {LATENT_SCALE}`. The parity against the original architecture is
proven in `tests/conversion/test_convert_mar.py` (random weights).
""",
            tags=["mar", "autoencoder-kl"],
        )
        print(f"saved to {output_dir}")
    return {"vae": vae, "config": config}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--vae", required=True, help="MAR's kl16.ckpt")
    parser.add_argument("--output", required=True, help="output folder")
    args = parser.parse_args(argv)
    convert(args.vae, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
