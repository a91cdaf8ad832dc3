"""Convert OpenAI's released DALL-E discrete VAE (`encoder.pkl`, `decoder.pkl` of the `DALL-E` package) to
[`DalleDVAE`].

The two files are whole pickled `nn.Module`s. Unpickling them normally runs code from the file, so by default they
are read with a restricted unpickler that accepts only the classes of the dVAE's module tree (mapped to inert
stand-ins) and the tensor rebuilders, and keeps only tensors. `--trust-pickle` loads them with full unpickling instead
(needs the `DALL-E` package; fixes the `nn.Upsample.recompute_scale_factor` attribute that old pickles lack on
torch >= 1.11, so the original can run for the parity check).

Key map (source module tree -> `DalleDVAE`; module names match, only the parameter names differ):

| source (`dall_e`)                                      | target (`DalleDVAE`)                                        |
|--------------------------------------------------------|-------------------------------------------------------------|
| encoder.pkl `blocks.input.{w,b}`                        | `encoder.blocks.input.{weight,bias}`                        |
| encoder.pkl `blocks.group_G.block_B.id_path.{w,b}`      | `encoder.blocks.group_G.block_B.id_path.{weight,bias}`      |
| encoder.pkl `blocks.group_G.block_B.res_path.conv_K.{w,b}` | `encoder.blocks.group_G.block_B.res_path.conv_K.{weight,bias}` |
| encoder.pkl `blocks.output.conv.{w,b}`                  | `encoder.blocks.output.conv.{weight,bias}`                  |
| decoder.pkl `blocks.*.{w,b}` (same layout)              | `decoder.blocks.*.{weight,bias}`                            |

Nothing is dropped. The configuration (width, codebook size, groups, blocks per group, decoder input width,
channels) is read from the tensor shapes.

Usage:
    python conversion_scripts/convert_dalle_dvae_to_hf.py --encoder encoder.pkl --decoder decoder.pkl --output out/ \
        [--push-to-hub user/name]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from conversion_utils import (  # noqa: E402
    ConversionError,
    KeyConsumer,
    add_hub_arguments,
    create_hub_repo,
    load_converted,
    load_torch_file,
    max_abs_diff,
    module_tensors,
    push_to_hub,
    report_parity,
    require_parity,
    run_main,
    stand_ins,
    write_model_card,
)

from hf_t2i import DalleDVAE, DalleDVAEConfig, T2IImageProcessor  # noqa: E402


LICENSE = "mit"  # OpenAI's DALL-E release
TAGS = ["dalle", "dvae", "image-tokenizer"]
TORCH_MODULES = [
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
    "torch.nn.modules.linear.Identity",
]
ENCODER_CLASSES = ["dall_e.encoder.Encoder", "dall_e.encoder.EncoderBlock", "dall_e.utils.Conv2d", *TORCH_MODULES]
DECODER_CLASSES = ["dall_e.decoder.Decoder", "dall_e.decoder.DecoderBlock", "dall_e.utils.Conv2d", *TORCH_MODULES]
# The whole-pickle formats both files come in (the loader also accepts a plain state dict of the same names).
PARAM_NAME = re.compile(r"^blocks\.(input|output\.conv|group_\d+\.block_\d+\.(id_path|res_path\.conv_[1-4]))\.(w|b)$")


def load_dvae_half(path, what: str, classes: list[str], trust_pickle: bool):
    """-> (tensors by source name, the loaded object (an original module only with `trust_pickle`))."""
    obj = load_torch_file(path, what, known_classes=stand_ins(classes), trust_pickle=trust_pickle)
    if isinstance(obj, dict):
        state = obj
    else:
        state = module_tensors(obj, what)
    if not state or "blocks.input.w" not in state:
        found = sorted(state)[:8] if isinstance(state, dict) else type(obj).__name__
        raise ConversionError(
            f"{what} ({path}) is not an OpenAI dVAE half: no `blocks.input.w` parameter (found {found})."
        )
    return dict(state), obj


def _group_layout(state: dict[str, torch.Tensor], what: str) -> tuple[list[int], int]:
    """-> (output width of each group, blocks per group)."""
    groups = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.group_(\d+)\.", k))})
    if groups != list(range(1, len(groups) + 1)) or not groups:
        raise ConversionError(f"{what}: expected groups group_1..group_N, found {groups}.")
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.group_1\.block_(\d+)\.", k))})
    widths = [state[f"blocks.group_{g}.block_1.res_path.conv_4.w"].shape[0] for g in groups]
    return widths, len(blocks)


def infer_config(encoder: dict, decoder: dict, image_size: int | None) -> DalleDVAEConfig:
    """The `DalleDVAEConfig` the tensor shapes describe."""
    hidden = encoder["blocks.input.w"].shape[0]
    channels = encoder["blocks.input.w"].shape[1]
    vocab = encoder["blocks.output.conv.w"].shape[0]
    widths, blocks = _group_layout(encoder, "encoder")
    dec_widths, dec_blocks = _group_layout(decoder, "decoder")
    if dec_widths != widths[::-1] or dec_blocks != blocks:
        raise ConversionError(
            f"encoder and decoder do not match: encoder group widths {widths} x {blocks} blocks, decoder "
            f"{dec_widths} x {dec_blocks} blocks (expected the reverse)."
        )
    if decoder["blocks.input.w"].shape[1] != vocab or decoder["blocks.output.conv.w"].shape[0] != 2 * channels:
        raise ConversionError(
            f"encoder and decoder do not match: encoder has {vocab} codes and {channels} channels, decoder input "
            f"{decoder['blocks.input.w'].shape[1]} codes and output {decoder['blocks.output.conv.w'].shape[0]} "
            "statistics."
        )
    if any(w % hidden for w in widths):
        raise ConversionError(f"group widths {widths} are not multiples of the first width {hidden}.")
    multipliers = [w // hidden for w in widths]
    downsample = 2 ** (len(multipliers) - 1)
    return DalleDVAEConfig(
        image_size=image_size if image_size is not None else 32 * downsample,
        num_channels=channels,
        vocab_size=vocab,
        hidden_size=hidden,
        channel_multipliers=multipliers,
        num_blocks_per_group=blocks,
        decoder_init_channels=decoder["blocks.input.w"].shape[0],
    )


def convert_state(encoder: dict, decoder: dict) -> dict[str, torch.Tensor]:
    """Source tensors -> `DalleDVAE` state dict; fails on any source key it does not map."""
    out = {}
    for half, state in (("encoder", encoder), ("decoder", decoder)):
        keys = KeyConsumer(state, f"{half}.pkl")
        for key in keys.remaining():
            if not PARAM_NAME.match(key):
                continue
            module, param = key.rsplit(".", 1)
            out[f"{half}.{module}.{'weight' if param == 'w' else 'bias'}"] = keys.pop(key).float()
        keys.finish()
    return out


def fix_upsample_drift(module: torch.nn.Module) -> None:
    """Old pickles of `nn.Upsample` lack `recompute_scale_factor` (added in torch 1.11); give it the default."""
    for m in module.modules():
        if isinstance(m, torch.nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None


def original_modules(encoder_obj, decoder_obj, encoder: dict, decoder: dict, config: DalleDVAEConfig):
    """The original `dall_e` modules for the parity check: the unpickled ones (`--trust-pickle`), else fresh
    `dall_e` modules with the converted tensors loaded; `None` when the `DALL-E` package is missing."""
    if isinstance(encoder_obj, torch.nn.Module) and isinstance(decoder_obj, torch.nn.Module):
        fix_upsample_drift(decoder_obj)
        return encoder_obj.eval(), decoder_obj.eval()
    try:
        from dall_e import Decoder, Encoder
    except ImportError:
        return None
    if len(config.channel_multipliers) != 4 or config.channel_multipliers != [1, 2, 4, 8]:
        return None
    common = dict(n_hid=config.hidden_size, n_blk_per_group=config.num_blocks_per_group, vocab_size=config.vocab_size)
    enc = Encoder(input_channels=config.num_channels, **common)
    dec = Decoder(n_init=config.decoder_init_channels, output_channels=config.num_channels, **common)
    enc.load_state_dict(encoder)
    dec.load_state_dict(decoder)
    return enc.eval(), dec.eval()


@torch.no_grad()
def check_parity(model: DalleDVAE, originals, tolerance: float = 1e-4) -> dict[str, float]:
    """Encoder logits, greedy tokens, decoder statistics and decoded pixels against the original on a fixed input."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    size = config.image_size
    pixels = torch.rand(2, config.num_channels, size, size, generator=generator) * 2 - 1  # package range [-1, 1]
    enc, dec = originals
    eps = config.logit_laplace_eps
    mapped = (1 - 2 * eps) * (pixels + 1) / 2 + eps  # dall_e.map_pixels of [0, 1] images
    ref_logits = enc(mapped)
    logits = model.get_logits(pixels)
    ids = model.encode(pixels)
    ref_ids = ref_logits.argmax(dim=1).flatten(1)
    one_hot = torch.nn.functional.one_hot(ref_ids.view(-1, config.grid_size, config.grid_size), config.vocab_size)
    one_hot = one_hot.permute(0, 3, 1, 2).float()
    ref_stats = dec(one_hot)
    ref_pixels = ((torch.sigmoid(ref_stats[:, : config.num_channels]) - eps) / (1 - 2 * eps)).clamp(0, 1) * 2 - 1
    deltas = {
        "encoder logits": max_abs_diff(logits, ref_logits),
        "decoder statistics": max_abs_diff(model.decoder(one_hot), ref_stats),
        "decoded pixels": max_abs_diff(model.decode(ref_ids), ref_pixels),
    }
    for name, delta in deltas.items():
        report_parity(name, delta, tolerance)
    same = torch.equal(ids, ref_ids)
    print(f"parity greedy tokens: {'identical' if same else 'DIFFERENT'}")
    deltas["tokens_identical"] = float(same)
    return deltas


def convert(
    encoder_path,
    decoder_path,
    output_dir=None,
    trust_pickle: bool = False,
    image_size: int | None = None,
    check: bool = True,
    push_to_hub_repo: str | None = None,
    license: str | None = LICENSE,
) -> tuple[DalleDVAE, dict[str, float] | None]:
    """Convert, check parity (when the original can be run), save and optionally upload to the Hub repository
    `push_to_hub_repo` (created first, so a bad id or login fails before converting). Returns the model and the
    parity numbers."""
    if push_to_hub_repo is not None and output_dir is None:
        raise ConversionError("--push-to-hub uploads the --output folder: pass --output too.")
    repo_id = create_hub_repo(push_to_hub_repo)
    encoder, encoder_obj = load_dvae_half(encoder_path, "encoder.pkl", ENCODER_CLASSES, trust_pickle)
    decoder, decoder_obj = load_dvae_half(decoder_path, "decoder.pkl", DECODER_CLASSES, trust_pickle)
    config = infer_config(encoder, decoder, image_size)
    model = DalleDVAE(config).eval()
    load_converted(model, convert_state(encoder, decoder), "DalleDVAE")
    print(
        f"converted: {sum(p.numel() for p in model.encoder.parameters()) / 1e6:.1f}M encoder + "
        f"{sum(p.numel() for p in model.decoder.parameters()) / 1e6:.1f}M decoder parameters, "
        f"{config.vocab_size} codes, {config.image_size}px -> {config.grid_size}x{config.grid_size}"
    )
    parity = None
    if check:
        originals = original_modules(encoder_obj, decoder_obj, encoder, decoder, config)
        if originals is None:
            print("parity: skipped (install the `DALL-E` package to compare against the original)")
        else:
            parity = check_parity(model, originals)
            require_parity(parity)
    if output_dir is not None:
        output_dir = Path(output_dir)
        model.save_pretrained(output_dir)
        T2IImageProcessor(image_size=config.image_size).save_pretrained(output_dir)
        write_model_card(
            output_dir,
            "Converted from OpenAI's DALL-E dVAE",
            f"""
OpenAI's DALL-E discrete VAE ({config.vocab_size} codes, {config.image_size}x{config.image_size} images ->
{config.grid_size}x{config.grid_size} tokens) as an `hf_t2i.DalleDVAE`, converted with
`conversion_scripts/convert_dalle_dvae_to_hf.py` of hf_t2i. `dvae.encode(pixel_values)` takes pixels in [-1, 1] and
returns code ids; `dvae.decode(ids)` returns pixels in [-1, 1].

Parity with the original (max |delta|, float32): {parity if parity is not None else "not measured"}.
Weights: the license of OpenAI's `DALL-E` release (MIT) applies.
""",
            tags=TAGS,
            license=license,
            repo_id=repo_id,
        )
        print(f"saved to {output_dir}")
        if repo_id is not None:
            push_to_hub(output_dir, repo_id, "OpenAI's DALL-E dVAE", tags=TAGS, license=license)
    return model, parity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--encoder", required=True, help="OpenAI's encoder.pkl")
    parser.add_argument("--decoder", required=True, help="OpenAI's decoder.pkl")
    parser.add_argument("--output", required=True, help="output folder (save_pretrained layout)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load the pickles with full unpickling (RUNS CODE FROM THE FILES; needs the DALL-E package). "
        "Default: a restricted unpickler that accepts only the dVAE's known classes.",
    )
    parser.add_argument("--image-size", type=int, default=None, help="image side (default: 32 x the downsampling)")
    parser.add_argument("--skip-parity", action="store_true", help="do not compare against the original")
    add_hub_arguments(parser, default_license=LICENSE)
    args = parser.parse_args(argv)
    convert(
        args.encoder,
        args.decoder,
        args.output,
        args.trust_pickle,
        args.image_size,
        not args.skip_parity,
        args.push_to_hub,
        args.license,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
