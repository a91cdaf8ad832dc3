"""Convert LTH14/mar checkpoints: the KL-16 VAE (`kl16.ckpt`: `{"model": state dict}`) to a diffusers
`AutoencoderKL`, and the MAR prior (`checkpoint-last.pth`: `{"model", "model_ema", ...}`) together with that VAE to a
`MarForConditionalGeneration` saved as a `FluidPipeline` folder.

## KL-16 VAE

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

## MAR prior

`MarConfig(num_classes=..., buffer_size=...)` is MAR's layout (see `FluidMAEModel`); the blocks are timm `Block`s
(pre-LayerNorm eps 1e-6, fused q/k/v with bias, exact-GELU MLP), i.e. the package's `TransformerBlock` without
cross-attention. The diffusion head is `DiffusionHead(learned_variance=True, norm_affine=True, frequency_dim=256)` with
diffusers' `DDPMScheduler(variance_type="learned_range", timestep_spacing="linspace")`: the cosine schedule over 1000
steps and, for 100 sampling steps, MAR's respaced timesteps `round(i * 999 / 99)` exactly. All sizes are read from the
tensor shapes except the attention heads (timm stores none). They are known for the released sizes only: `mar_base`
(width 768, 12 + 12 blocks, 12 heads), `mar_large` (1024, 16 + 16, 16 heads), `mar_huge` (1280, 20 + 20, 16 heads
of 80 dims), recognised by width and depths (and `args.model`, when saved, must name the same size). Other sizes
need `--num-heads`: a wrong count converts without error but computes something else.
The EMA weights (`model_ema`, what MAR evaluates) are converted by default; `--weights model` takes `model`.

| source (`model_ema` / `model`)                               | target (`MarForConditionalGeneration`)           |
|--------------------------------------------------------------|---------------------------------------------------|
| `class_emb`, `fake_latent` (1, C)                             | `model.class_embeddings`, `model.null_class_embedding` (C) |
| `z_proj`, `z_proj_ln`                                          | `model.token_embeddings`, `model.token_embedding_norm` |
| `encoder_pos_embed_learned` (1, P + N, C)                      | `model.encoder_position_embeddings` (P + N, C)    |
| `{encoder,decoder}_blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}` | `model.{encoder,decoder}_layers.{i}.{norm1, self_attn.qkv_proj, self_attn.out_proj, norm2, mlp.fc1, mlp.fc2}` |
| `encoder_norm`, `decoder_embed`, `decoder_norm`                | `model.encoder_norm`, `model.decoder_embeddings`, `model.decoder_norm` |
| `mask_token` (1, 1, C), `decoder_pos_embed_learned`           | `model.mask_embedding` (C), `model.position_embeddings` |
| `diffusion_pos_embed_learned` (1, N, C)                        | `model.head_position_embeddings` (N, C)           |
| `diffloss.net.{input_proj, cond_embed, time_embed.mlp.{0,2}}` | `diffusion_head.{input_proj, cond_embed, time_embed.mlp.{0,2}}` |
| `diffloss.net.res_blocks.{i}.{in_ln, mlp.{0,2}, adaLN_modulation.1}` | `diffusion_head.blocks.{i}.{norm, mlp.{0,2}, modulation.1}` |
| `diffloss.net.final_layer.{adaLN_modulation.1, linear}`       | `diffusion_head.{final_modulation.1, output}`     |
| the KL-16 VAE (`--vae`)                                        | `vae.*` (table above)                             |
| `optimizer`, `scaler`, `epoch`, `args`, the other weight set   | dropped (training state)                          |

Sampling like MAR's evaluation: `pipe(class_labels=[...], guidance_scale=2.9, guidance_schedule="linear",
num_inference_steps=256, num_diffusion_steps=100, temperature=1.0)` (MAR-B; L: 3.0, H: 3.2). Fluid's random-order
loop keeps the same number of tokens masked after each iteration as MAR (`floor(N cos(pi/2 (k+1)/K))`, clamped), and
"linear" guidance is MAR's `1 + (s - 1) (N - masked) / N`; the random generation order itself comes from the
`generator` (MAR: numpy's global state).

`--mar-repo PATH` (a clone of LTH14/mar; needs `timm`) also builds the ORIGINAL `models.mar.MAR` with the converted
weights and prints the max |delta| of the diffusion conditions and of the head's outputs on a fixed input.

Usage:
    python conversion_scripts/convert_mar_to_hf.py --vae kl16.ckpt --output out/ [--push-to-hub user/name]
    python conversion_scripts/convert_mar_to_hf.py --prior checkpoint-last.pth --vae kl16.ckpt --output out/ \
        [--push-to-hub user/name]
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from conversion_utils import (  # noqa: E402
    ConversionError,
    KeyConsumer,
    add_hub_arguments,
    create_hub_repo,
    ldm_attention,
    ldm_resnet,
    load_converted,
    load_torch_file,
    max_abs_diff,
    push_to_hub,
    report_parity,
    require_mapping,
    run_main,
    tensors_only,
    write_model_card,
)


LATENT_SCALE = 0.2325  # MAR's `vae_norm` for KL-16
LICENSE = "mit"  # LTH14/mar's release
VAE_TAGS = ["mar", "autoencoder-kl"]
PRIOR_TAGS = ["mar", "fluid", "class-conditional"]


def _check_push(output_dir, push_to_hub_repo: str | None) -> str | None:
    """The full Hub id to upload to (the repository is created now, before converting), or None."""
    if push_to_hub_repo is not None and output_dir is None:
        raise ConversionError("--push-to-hub uploads the --output folder: pass --output too.")
    return create_hub_repo(push_to_hub_repo)


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
        raise ConversionError(f"{path} is a MAR prior checkpoint, not the KL-16 VAE: pass it as --prior.")
    if "encoder.conv_in.weight" not in state or "post_quant_conv.weight" not in state:
        raise ConversionError(
            f"{path} is not an LDM KL-VAE checkpoint (no `encoder.conv_in` / `post_quant_conv`; it has "
            f"{sorted(state)[:6]})."
        )
    return {k: v.float() for k, v in state.items()}


def convert(vae_path, output_dir=None, push_to_hub_repo: str | None = None, license: str | None = LICENSE) -> dict:
    """-> {"vae": AutoencoderKL, "config": dict}; saved to `output_dir` with its card and uploaded to the Hub repository
    `push_to_hub_repo` when given."""
    from diffusers import AutoencoderKL

    repo_id = _check_push(output_dir, push_to_hub_repo)

    config, state = convert_vae_state(read_vae_checkpoint(vae_path))
    vae = AutoencoderKL(**config).eval()
    load_converted(vae, state, "AutoencoderKL")
    if output_dir is not None:
        output_dir = Path(output_dir)
        vae.save_pretrained(output_dir)
        write_model_card(
            output_dir,
            "Converted from MAR's KL-16 VAE",
            f"""
Converted with `conversion_scripts/convert_mar_to_hf.py` of hf_t2i from LTH14/mar's `kl16.ckpt` (latent-diffusion's KL
autoencoder, 16 latent channels, f16). `scaling_factor` = {LATENT_SCALE} is MAR's latent normalisation: scaled
latents are `vae.encode(x).latent_dist.mode() * {LATENT_SCALE}`. The parity against the original architecture is
proven in hf_t2i's `tests/conversion/test_convert_mar.py` (random weights).
""",
            tags=VAE_TAGS,
            license=license,
            repo_id=repo_id,
        )
        print(f"saved to {output_dir}")
        if repo_id is not None:
            push_to_hub(output_dir, repo_id, "MAR's KL-16 VAE", tags=VAE_TAGS, license=license)
    return {"vae": vae, "config": config}


# -- the MAR prior ------------------------------------------------------------------------------------------------

# The released sizes (LTH14/mar `models/mar.py`: `mar_base`, `mar_large`, `mar_huge`): (width, depth of the encoder
# and of the decoder) -> attention heads. The head count is not stored in a checkpoint; MAR-H's heads are 80 wide.
RELEASED_MARS = {
    "mar_base": dict(width=768, depth=12, num_heads=12),
    "mar_large": dict(width=1024, depth=16, num_heads=16),
    "mar_huge": dict(width=1280, depth=20, num_heads=16),
}
BLOCK_KEYS = {  # timm Block -> TransformerBlock
    "norm1": "norm1",
    "attn.qkv": "self_attn.qkv_proj",
    "attn.proj": "self_attn.out_proj",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
HEAD_KEYS = {  # diffloss.net. -> diffusion_head. (outside the residual blocks)
    "input_proj": "input_proj",
    "cond_embed": "cond_embed",
    "time_embed.mlp.0": "time_embed.mlp.0",
    "time_embed.mlp.2": "time_embed.mlp.2",
    "final_layer.adaLN_modulation.1": "final_modulation.1",
    "final_layer.linear": "output",
}
RES_BLOCK_KEYS = {"in_ln": "norm", "mlp.0": "mlp.0", "mlp.2": "mlp.2", "adaLN_modulation.1": "modulation.1"}


def read_prior_checkpoint(
    path, weights: str = "ema", trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict]:
    """-> (the chosen weight set, the saved training arguments as a dict, or {}). The restricted loader accepts the
    `argparse.Namespace` of MAR's saved `args`; `trust_pickle` lifts every restriction (runs code from the file)."""
    checkpoint = load_torch_file(
        path, "MAR prior checkpoint", trust_pickle=trust_pickle, safe_globals=[argparse.Namespace]
    )
    checkpoint = require_mapping(checkpoint, "MAR prior checkpoint")
    name = {"ema": "model_ema", "model": "model"}[weights]
    if checkpoint.get(name) is None:
        if "encoder.conv_in.weight" in checkpoint.get("model", {}):
            raise ConversionError(f"{path} is the KL-16 VAE, not a MAR prior: pass it as --vae.")
        raise ConversionError(
            f"{path} has no {name!r} weights (keys: {sorted(checkpoint)[:8]}); "
            + ("try --weights model." if weights == "ema" else "it is not a MAR checkpoint.")
        )
    state = tensors_only(checkpoint[name], f"MAR prior checkpoint[{name!r}]")
    if "class_emb.weight" not in state or "diffloss.net.input_proj.weight" not in state:
        raise ConversionError(
            f"{path} is not a MAR prior (no `class_emb` / `diffloss.net.input_proj` in {name!r}; it has "
            f"{sorted(state)[:6]})."
        )
    args = checkpoint.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, dict) else {}
    return {k: v.float() for k, v in state.items()}, args


def _depth(state: dict, prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})


def _heads(width: int, depths: tuple[int, int], args: dict, num_heads: int | None) -> int:
    """The prior's head count: `num_heads` when given, else the released size whose width and (encoder, decoder)
    depths the weights have (and which the saved `args.model` names, when it names one). Anything else needs
    `num_heads`: a wrong count converts without error but computes another function."""
    if num_heads is None:
        name = args.get("model")
        released = [n for n, r in RELEASED_MARS.items() if (r["width"], r["depth"], r["depth"]) == (width, *depths)]
        if released and name in (None, released[0]):
            return RELEASED_MARS[released[0]]["num_heads"]
        named = f" and `args.model` is {name!r}" if name is not None else ""
        raise ConversionError(
            f"MAR prior: width {width} and depths {depths[0]} + {depths[1]}{named} are not one of the released sizes ("
            + ", ".join(
                f"{n}: width {r['width']}, depths {r['depth']} + {r['depth']}" for n, r in RELEASED_MARS.items()
            )
            + "), and the attention heads are not stored in the checkpoint; pass --num-heads."
        )
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or width % num_heads:
        raise ConversionError(f"MAR prior: --num-heads {num_heads} must be a positive divisor of the width {width}.")
    return num_heads


def prior_config(state: dict, vae: dict, args: dict, num_heads: int | None = None):
    """The `MarConfig` of a MAR prior state dict (+ the converted VAE's config)."""
    from hf_t2i import MarConfig

    num_classes, hidden = state["class_emb.weight"].shape
    token_dim = state["z_proj.weight"].shape[1]
    positions = state["encoder_pos_embed_learned"].shape[1]
    tokens = state["diffusion_pos_embed_learned"].shape[1]
    side = math.isqrt(tokens)
    patch = math.isqrt(token_dim // vae["latent_channels"])
    if side * side != tokens or patch * patch * vae["latent_channels"] != token_dim:
        raise ConversionError(
            f"MAR prior: {tokens} tokens of {token_dim} values do not form a square grid of patches of the VAE's "
            f"{vae['latent_channels']}-channel latents."
        )
    if state["decoder_embed.weight"].shape != (hidden, hidden):
        raise ConversionError(
            "MAR prior: encoder and decoder widths differ "
            f"({tuple(state['decoder_embed.weight'].shape)}); the converted layout has one `hidden_size`."
        )
    head_out = state["diffloss.net.final_layer.linear.weight"].shape[0]
    if head_out != 2 * token_dim:
        raise ConversionError(f"MAR prior: the head predicts {head_out} values per token, expected 2 x {token_dim}.")
    downsample = 2 ** (len(vae["block_out_channels"]) - 1)
    vae = {**vae, "sample_size": side * patch * downsample}
    depths = (_depth(state, "encoder_blocks."), _depth(state, "decoder_blocks."))
    heads = _heads(hidden, depths, args, num_heads)
    return MarConfig(
        token_type="continuous",
        generation_order="random",
        vae_config=vae,
        patch_size=patch,
        num_classes=num_classes,
        buffer_size=positions - tokens,
        class_dropout_prob=float(args.get("label_drop_prob", 0.1)),
        hidden_size=hidden,
        encoder_layers=depths[0],
        encoder_attention_heads=heads,
        encoder_intermediate_size=state["encoder_blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depths[1],
        num_attention_heads=heads,
        intermediate_size=state["decoder_blocks.0.mlp.fc1.weight"].shape[0],
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        diffusion_head_layers=_depth(state, "diffloss.net.res_blocks."),
        diffusion_head_width=state["diffloss.net.input_proj.weight"].shape[0],
        diffusion_head_frequency_dim=state["diffloss.net.time_embed.mlp.0.weight"].shape[1],
        diffusion_head_learned_variance=True,
        diffusion_head_norm_affine=True,
        diffusion_timestep_spacing="linspace",
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        num_diffusion_steps=int(args.get("num_sampling_steps", 100)),
        diffusion_batch_mul=int(args.get("diffusion_batch_mul", 4)),
    )


def convert_prior_state(state: dict) -> dict[str, torch.Tensor]:
    """MAR prior state dict -> `MarForConditionalGeneration` keys (without `vae.*`); fails on leftovers."""
    keys = KeyConsumer(state, "MAR prior")
    out: dict[str, torch.Tensor] = {}

    def move(src: str, dst: str, params=("weight", "bias")) -> None:
        for p in params:
            out[f"{dst}.{p}"] = keys.pop(f"{src}.{p}")

    out["model.class_embeddings.weight"] = keys.pop("class_emb.weight")
    out["model.null_class_embedding"] = keys.pop("fake_latent")[0]
    move("z_proj", "model.token_embeddings")
    move("z_proj_ln", "model.token_embedding_norm")
    out["model.encoder_position_embeddings"] = keys.pop("encoder_pos_embed_learned")[0]
    move("encoder_norm", "model.encoder_norm")
    move("decoder_embed", "model.decoder_embeddings")
    out["model.mask_embedding"] = keys.pop("mask_token")[0, 0]
    out["model.position_embeddings"] = keys.pop("decoder_pos_embed_learned")[0]
    move("decoder_norm", "model.decoder_norm")
    out["model.head_position_embeddings"] = keys.pop("diffusion_pos_embed_learned")[0]
    for side in ("encoder", "decoder"):
        for i in range(_depth(state, f"{side}_blocks.")):
            for src, dst in BLOCK_KEYS.items():
                move(f"{side}_blocks.{i}.{src}", f"model.{side}_layers.{i}.{dst}")
    for src, dst in HEAD_KEYS.items():
        move(f"diffloss.net.{src}", f"diffusion_head.{dst}")
    for i in range(_depth(state, "diffloss.net.res_blocks.")):
        for src, dst in RES_BLOCK_KEYS.items():
            move(f"diffloss.net.res_blocks.{i}.{src}", f"diffusion_head.blocks.{i}.{dst}")
    keys.finish()
    return out


def convert_prior(
    prior_path,
    vae_path,
    output_dir=None,
    weights: str = "ema",
    num_heads: int | None = None,
    mar_repo=None,
    trust_pickle: bool = False,
    push_to_hub_repo: str | None = None,
    license: str | None = LICENSE,
) -> dict:
    """-> {"model": MarForConditionalGeneration, "pipeline": FluidPipeline, "parity": dict (with `mar_repo`)}; saved
    to `output_dir` with its card and uploaded to the Hub repository `push_to_hub_repo` when given."""
    from hf_t2i import FluidPipeline, MarForConditionalGeneration

    repo_id = _check_push(output_dir, push_to_hub_repo)

    state, args = read_prior_checkpoint(prior_path, weights, trust_pickle)
    vae_config_, vae_state = convert_vae_state(read_vae_checkpoint(vae_path))
    config = prior_config(state, vae_config_, args, num_heads)
    converted = convert_prior_state(state)
    converted.update({f"vae.{k}": v for k, v in vae_state.items()})
    model = MarForConditionalGeneration(config).eval()
    load_converted(model, converted, "MarForConditionalGeneration")
    parity = {}
    if mar_repo is not None:
        original = build_original_mar(mar_repo, config)
        original.load_state_dict(state)  # strict: the source keys are exactly the original's
        parity = original_parity(original, model)
    pipeline = FluidPipeline(model=model, processor=None)
    if output_dir is not None:
        output_dir = Path(output_dir)
        pipeline.save_pretrained(output_dir)
        c = config
        write_model_card(
            output_dir,
            "Converted from a MAR checkpoint",
            f"""
Converted with `conversion_scripts/convert_mar_to_hf.py` of hf_t2i from LTH14/mar's `{Path(prior_path).name}` ({weights}
weights) and its KL-16 VAE. Class-conditional (`num_classes` = {c.num_classes}), {c.encoder_layers} + {c.num_hidden_layers}
encoder / decoder blocks of width {c.hidden_size}, {c.buffer_size} buffer positions, {c.num_image_tokens} tokens of
{c.token_dim} values, a {c.diffusion_head_layers}-block diffusion head of width {c.diffusion_head_width} with learned
variance.

MAR's own sampling settings: `pipe(class_labels=[207, 360], guidance_scale=2.9, guidance_schedule="linear",
num_inference_steps=256, num_diffusion_steps=100)`.

The parity of the architecture with MAR's `models/mar.py` is proven in hf_t2i's `tests/conversion/test_convert_mar.py`.
""",
            tags=PRIOR_TAGS,
            license=license,
            repo_id=repo_id,
        )
        print(f"saved to {output_dir}")
        if repo_id is not None:
            push_to_hub(output_dir, repo_id, "a MAR checkpoint", tags=PRIOR_TAGS, license=license)
    return {"model": model, "pipeline": pipeline, "config": config, "parity": parity}


def build_original_mar(mar_repo, config):
    """LTH14/mar's own `models.mar.MAR` (from a clone at `mar_repo`, needs timm) with the sizes of a converted
    `MarConfig`, in eval mode and with its own random weights."""
    repo = Path(mar_repo)
    if not (repo / "models" / "mar.py").is_file():
        raise ConversionError(f"--mar-repo {repo} is not a clone of LTH14/mar (no models/mar.py).")
    sys.path.insert(0, str(repo))
    try:
        from models.mar import MAR
    except ModuleNotFoundError as err:
        raise ConversionError(f"the original MAR needs the module {err.name!r} (pip install timm scipy).") from None
    finally:
        sys.path.remove(str(repo))
    c = config
    return MAR(
        img_size=c.image_size,
        vae_stride=c.vae_downsample_factor,
        patch_size=c.patch_size,
        encoder_embed_dim=c.hidden_size,
        encoder_depth=c.encoder_layers,
        encoder_num_heads=c.encoder_attention_heads,
        decoder_embed_dim=c.hidden_size,
        decoder_depth=c.num_hidden_layers,
        decoder_num_heads=c.num_attention_heads,
        mlp_ratio=c.intermediate_size / c.hidden_size,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        vae_embed_dim=c.token_dim // c.patch_size**2,
        class_num=c.num_classes,
        buffer_size=c.buffer_size,
        diffloss_d=c.diffusion_head_layers,
        diffloss_w=c.diffusion_head_width,
        num_sampling_steps=str(c.num_diffusion_steps),
    ).eval()


def original_parity(original, model) -> dict[str, float]:
    """Compare the original `MAR` (holding the source weights) with the converted model: the diffusion conditions of
    a fixed masked input and the head's outputs (epsilon and variance values)."""
    c = model.config
    g = torch.Generator().manual_seed(0)
    batch, n = 2, c.num_image_tokens
    tokens = torch.randn(batch, n, c.token_dim, generator=g)
    mask = torch.zeros(batch, n)
    mask[:, torch.randperm(n, generator=g)[: n // 2]] = 1.0  # MAR drops the same number of tokens per row
    labels = torch.tensor([0, c.num_classes - 1])
    with torch.no_grad():
        x = original.forward_mae_encoder(tokens, mask, original.class_emb(labels))
        z_ref = original.forward_mae_decoder(x, mask)
        z = model.model(class_labels=labels, image_tokens=tokens, mask=mask.bool()).last_hidden_state
        noisy = torch.randn(batch * n, c.token_dim, generator=g)
        timesteps = torch.randint(0, 1000, (batch * n,), generator=g)
        head_ref = original.diffloss.net(noisy, timesteps, z_ref.reshape(batch * n, -1))
        head = model.diffusion_head(noisy, timesteps, z.reshape(batch * n, -1))
    parity = {"diffusion conditions": max_abs_diff(z, z_ref), "head outputs": max_abs_diff(head, head_ref)}
    for name, delta in parity.items():
        report_parity(f"MAR prior vs models/mar.py: {name}", delta)
    if max(parity.values()) > 1e-4:
        raise ConversionError(f"the converted MAR prior does not match the original ({parity}).")
    return parity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--vae", required=True, help="MAR's kl16.ckpt")
    parser.add_argument("--prior", help="a MAR prior checkpoint (checkpoint-last.pth); converted with --vae")
    parser.add_argument("--weights", choices=("ema", "model"), default="ema", help="the prior's weight set")
    parser.add_argument("--num-heads", type=int, help="attention heads of the prior (not stored in the checkpoint)")
    parser.add_argument("--mar-repo", help="a clone of LTH14/mar: check parity against its own MAR (needs timm)")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="load the prior with full unpickling (runs code from the file)"
    )
    parser.add_argument("--output", required=True, help="output folder")
    add_hub_arguments(parser, default_license=LICENSE)
    args = parser.parse_args(argv)
    if args.prior is None:
        convert(args.vae, args.output, args.push_to_hub, args.license)
    else:
        convert_prior(
            args.prior,
            args.vae,
            args.output,
            args.weights,
            args.num_heads,
            args.mar_repo,
            args.trust_pickle,
            args.push_to_hub,
            args.license,
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
