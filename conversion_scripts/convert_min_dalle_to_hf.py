"""Convert min-dalle's VQGAN detokenizer (`detoker.pt`) to a diffusers `VQModel`, and its BART BPE vocabulary
(`vocab.json`, `merges.txt`) to a transformers fast tokenizer.

Status: the DALL·E Mega / mini prior (`encoder.pt`, `decoder.pt`) is NOT converted yet (see the README: it needs
Parti options that are not written); this script converts the two other parts of a min-dalle folder.

`detoker.pt` is a plain state dict (read with torch's restricted `weights_only` loader) of the decoder half of a
taming-transformers VQGAN (f16, 16384 codes of 256 dims, channels 128-128-256-256-512, attention at 16x16). min-dalle
ships no encoder: the `VQModel`'s `encoder.*` and `quant_conv.*` are written as zeros, so `encode` is meaningless
and only `decode` (codes -> pixels) is usable.

Key map (`U = 4 - j`: min-dalle applies `up[4]` first, diffusers `up_blocks[0]` first):

| source (`detoker.pt`)                                  | target (`VQModel`)                                   |
|--------------------------------------------------------|------------------------------------------------------|
| `embedding.weight`                                     | `quantize.embedding.weight`                          |
| `post_quant_conv.*`                                    | `post_quant_conv.*`                                  |
| `decoder.conv_in.*`, `decoder.norm_out.*`, `decoder.conv_out.*` | `decoder.conv_in.*`, `decoder.conv_norm_out.*`, `decoder.conv_out.*` |
| `decoder.mid.block_{1,2}.*`                            | `decoder.mid_block.resnets.{0,1}.*`                  |
| `decoder.mid.attn_1.{norm,q,k,v,proj_out}.*`           | `decoder.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}.*` (1x1 convs -> linears) |
| `decoder.up.{U}.block.{r}.{norm1,conv1,norm2,conv2,nin_shortcut}.*` | `decoder.up_blocks.{j}.resnets.{r}.{norm1,conv1,norm2,conv2,conv_shortcut}.*` |
| `decoder.up.{U}.attn.{r}.*`                            | `decoder.up_blocks.{j}.attentions.{r}.*`             |
| `decoder.up.{U}.upsample.conv.*`                       | `decoder.up_blocks.{j}.upsamplers.0.conv.*`          |

Numerics: min-dalle's GroupNorms use torch's default eps 1e-5; diffusers' VQ decoder uses 1e-6 (taming's value, which
the VQGAN was trained with). The parity printout shows the resulting difference. min-dalle's image is
`clip(decoder_output, 0, 1) * 255`: the `VQModel` output is in [0, 1], not the package's [-1, 1].

Tokenizer: min-dalle lower-cases, drops non-ASCII characters, splits on spaces and runs BPE over `Ġ` + word, then
wraps the ids in `<s> ... </s>`; the converted `PreTrainedTokenizerFast` does the same (without min-dalle's
`emoji.demojize` step: text with emoji tokenizes differently) with `<pad>` (id 1) as padding, 64 positions.

Usage:
    python conversion_scripts/convert_min_dalle_to_hf.py --model-dir dalle_bart_mega/ --detoker vqgan/detoker.pt \
        --output out/
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from conversion_utils import (  # noqa: E402
    ConversionError,
    KeyConsumer,
    check_file,
    load_converted,
    load_torch_file,
    max_abs_diff,
    report_parity,
    run_main,
    tensors_only,
    write_model_card,
)


TEXT_TOKEN_COUNT = 64
UP_BLOCKS = 5


def import_min_dalle(module: str):
    """Import a min-dalle module, undoing the `torch.set_grad_enabled(False)` that min-dalle runs at import time
    (it would switch autograd off for the whole process)."""
    grad = torch.is_grad_enabled()
    try:
        return importlib.import_module(module)
    finally:
        torch.set_grad_enabled(grad)


def vqgan_config() -> dict:
    """The diffusers `VQModel` configuration of min-dalle's (fixed-size) VQGAN."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 5,
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 128, 256, 256, 512),
        layers_per_block=2,
        latent_channels=256,
        num_vq_embeddings=16384,
        vq_embed_dim=256,
        norm_num_groups=32,
        sample_size=256,
    )


def _resnet(keys: KeyConsumer, src: str, dst: str, out: dict) -> None:
    for name, target in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2")):
        for p in ("weight", "bias"):
            out[f"{dst}.{target}.{p}"] = keys.pop(f"{src}.{name}.{p}")
    if f"{src}.nin_shortcut.weight" in keys:
        for p in ("weight", "bias"):
            out[f"{dst}.conv_shortcut.{p}"] = keys.pop(f"{src}.nin_shortcut.{p}")


def _attention(keys: KeyConsumer, src: str, dst: str, out: dict) -> None:
    for p in ("weight", "bias"):
        out[f"{dst}.group_norm.{p}"] = keys.pop(f"{src}.norm.{p}")
    for name, target in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        out[f"{dst}.{target}.weight"] = keys.pop(f"{src}.{name}.weight")[:, :, 0, 0]  # 1x1 conv -> linear
        out[f"{dst}.{target}.bias"] = keys.pop(f"{src}.{name}.bias")


def convert_detokenizer_state(state: dict) -> dict[str, torch.Tensor]:
    """`detoker.pt` -> the decoder half of a `VQModel` state dict; fails on any key it does not map."""
    keys = KeyConsumer(state, "detoker.pt")
    out = {"quantize.embedding.weight": keys.pop("embedding.weight", shape=(16384, 256))}
    for p in ("weight", "bias"):
        out[f"post_quant_conv.{p}"] = keys.pop(f"post_quant_conv.{p}")
        out[f"decoder.conv_in.{p}"] = keys.pop(f"decoder.conv_in.{p}")
        out[f"decoder.conv_norm_out.{p}"] = keys.pop(f"decoder.norm_out.{p}")
        out[f"decoder.conv_out.{p}"] = keys.pop(f"decoder.conv_out.{p}")
    _resnet(keys, "decoder.mid.block_1", "decoder.mid_block.resnets.0", out)
    _attention(keys, "decoder.mid.attn_1", "decoder.mid_block.attentions.0", out)
    _resnet(keys, "decoder.mid.block_2", "decoder.mid_block.resnets.1", out)
    for j in range(UP_BLOCKS):
        src, dst = f"decoder.up.{UP_BLOCKS - 1 - j}", f"decoder.up_blocks.{j}"
        for r in range(3):
            _resnet(keys, f"{src}.block.{r}", f"{dst}.resnets.{r}", out)
            if f"{src}.attn.{r}.q.weight" in keys:
                _attention(keys, f"{src}.attn.{r}", f"{dst}.attentions.{r}", out)
        if f"{src}.upsample.conv.weight" in keys:
            for p in ("weight", "bias"):
                out[f"{dst}.upsamplers.0.conv.{p}"] = keys.pop(f"{src}.upsample.conv.{p}")
    keys.finish()
    return out


def convert_detokenizer(path):
    """-> a diffusers `VQModel` holding min-dalle's detokenizer (encoder zeroed)."""
    from diffusers import VQModel

    state = tensors_only(load_torch_file(path, "detoker.pt"), "detoker.pt")
    if "embedding.weight" not in state or "decoder.conv_in.weight" not in state:
        raise ConversionError(
            f"detoker.pt ({path}) is not min-dalle's VQGAN detokenizer (no `embedding.weight` / `decoder.conv_in`)."
        )
    decoder_state = convert_detokenizer_state(state)
    model = VQModel(**vqgan_config()).eval()
    full = {k: torch.zeros_like(v) for k, v in model.state_dict().items() if k not in decoder_state}  # no encoder
    full.update({k: v.float() for k, v in decoder_state.items()})
    load_converted(model, full, "VQModel")
    return model


@torch.no_grad()
def decode_codes(vqmodel, codes: torch.Tensor) -> torch.Tensor:
    """(B, 256) codes -> (B, 3, 256, 256) raw decoder output (min-dalle's image is its clip to [0, 1])."""
    side = int(codes.shape[1] ** 0.5)
    quant = vqmodel.quantize.get_codebook_entry(codes, (codes.shape[0], side, side, vqmodel.config.vq_embed_dim))
    return vqmodel.decode(quant, force_not_quantize=True).sample


@torch.no_grad()
def check_detokenizer_parity(vqmodel, state: dict, tolerance: float = 1e-4) -> dict[str, float] | None:
    try:
        VQGanDetokenizer = import_min_dalle("min_dalle.models").VQGanDetokenizer  # noqa: N806
    except ImportError:
        print("parity: skipped (install `min-dalle` to compare against the original)")
        return None
    original = VQGanDetokenizer().eval()
    original.load_state_dict(state)
    codes = torch.randint(0, 16384, (1, 256), generator=torch.Generator().manual_seed(0))
    z = original.embedding(codes).view(1, 16, 16, 256).permute(0, 3, 1, 2)
    ref = original.decoder(original.post_quant_conv(z))
    image = original(False, codes)  # (256, 256, 3) in [0, 255]
    # The mapping itself is checked with the GroupNorm eps set to min-dalle's 1e-5; the saved model keeps diffusers'
    # fixed 1e-6 (not a config option), whose difference is reported separately.
    matched = copy.deepcopy(vqmodel)
    for module in matched.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.eps = 1e-5
    ours = decode_codes(matched, codes)
    deltas = {
        "detokenizer output (eps matched)": max_abs_diff(ours, ref),
        "detokenizer output (as saved, eps 1e-6)": max_abs_diff(decode_codes(vqmodel, codes), ref),
        "detokenizer pixels 0-255 (eps matched)": max_abs_diff(ours[0].permute(1, 2, 0).clip(0, 1) * 255, image),
    }
    for name, delta in deltas.items():
        report_parity(name, delta, tolerance * (255 if "0-255" in name else 10 if "as saved" in name else 1))
    return deltas


def convert_tokenizer(vocab_path, merges_path):
    """min-dalle's BPE (vocab.json + merges.txt) -> a `PreTrainedTokenizerFast` with min-dalle's text handling."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    try:
        vocab = json.loads(check_file(vocab_path, "vocab.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"vocab.json ({vocab_path}) is not a JSON vocabulary: {err}") from None
    if not isinstance(vocab, dict) or not all(t in vocab for t in ("<s>", "</s>", "<unk>", "<pad>")):
        raise ConversionError(f"vocab.json ({vocab_path}) lacks BART's special tokens <s>, </s>, <unk>, <pad>.")
    lines = check_file(merges_path, "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    if any(len(m) != 2 for m in merges):
        raise ConversionError(f"merges.txt ({merges_path}) must hold one pair of subwords per line.")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    # min-dalle lower-cases, keeps ASCII only, splits on spaces (skipping empty words) and runs BPE over
    # "Ġ" (chr(ord(" ") + 256)) + word.
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[^\x00-\x7f]"), ""),
            normalizers.Replace(Regex(" +"), " "),
            normalizers.Strip(),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u0120", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="\u0120", prepend_scheme="always", split=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=TEXT_TOKEN_COUNT,
    )


def check_tokenizer_parity(tokenizer, vocab_path, merges_path, texts: list[str]) -> bool | None:
    try:
        TextTokenizer = import_min_dalle("min_dalle.text_tokenizer").TextTokenizer  # noqa: N806
    except ImportError:
        print("parity tokenizer: skipped (install `min-dalle` to compare against the original)")
        return None
    vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
    merges = Path(merges_path).read_text(encoding="utf-8").split("\n")[1:-1]  # as min-dalle reads it
    original = TextTokenizer(vocab, merges)
    same = all(tokenizer(t)["input_ids"] == original.tokenize(t) for t in texts)
    print(f"parity tokenizer ids on {len(texts)} texts: {'identical' if same else 'DIFFERENT'}")
    return same


def convert(model_dir=None, detoker_path=None, output_dir=None, check: bool = True) -> dict:
    """Convert what is given; returns {"vqmodel", "tokenizer", "parity"}."""
    if model_dir is None and detoker_path is None:
        raise ConversionError("pass --model-dir (vocab.json, merges.txt) and/or --detoker (detoker.pt).")
    result, parity = {}, {}
    if detoker_path is not None:
        vqmodel = convert_detokenizer(detoker_path)
        result["vqmodel"] = vqmodel
        if check:
            state = tensors_only(load_torch_file(detoker_path, "detoker.pt"), "detoker.pt")
            parity.update(check_detokenizer_parity(vqmodel, state) or {})
    if model_dir is not None:
        model_dir = Path(model_dir)
        for name in ("encoder.pt", "decoder.pt"):
            if (model_dir / name).exists():
                print(f"note: {name} (the DALL·E Mega/mini prior) is not converted by this version of the script")
        vocab, merges = model_dir / "vocab.json", model_dir / "merges.txt"
        tokenizer = convert_tokenizer(vocab, merges)
        result["tokenizer"] = tokenizer
        if check:
            texts = ["a red circle", "Cats   playing chess on the moon", "an astronaut, riding a horse.", "zzqx"]
            same = check_tokenizer_parity(tokenizer, vocab, merges, texts)
            if same is not None:
                parity["tokenizer_identical"] = float(same)
    result["parity"] = parity
    failed = [k for k, v in parity.items() if k == "detokenizer output (eps matched)" and v > 1e-4]
    if parity.get("tokenizer_identical") == 0.0:
        failed.append("tokenizer")
    if output_dir is not None:
        output_dir = Path(output_dir)
        if "vqmodel" in result:
            result["vqmodel"].save_pretrained(output_dir / "vqgan")
        if "tokenizer" in result:
            result["tokenizer"].save_pretrained(output_dir / "tokenizer")
        write_model_card(
            output_dir,
            "min-dalle VQGAN detokenizer and BART tokenizer",
            f"""
Converted with `conversion_scripts/convert_min_dalle_to_hf.py`: `vqgan/` is a diffusers `VQModel` holding min-dalle's
VQGAN detokenizer (decoder half only; the encoder is zeros), `tokenizer/` the BART BPE tokenizer with min-dalle's
text handling. The DALL·E Mega / mini prior is not part of this conversion.

Parity with min-dalle (max |delta|, float32): {parity or "not measured"}.
""",
            tags=["min-dalle", "vqgan"],
        )
        print(f"saved to {output_dir}")
    if failed:
        raise ConversionError(f"the converted parts do not match min-dalle ({failed}).")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model-dir", help="min-dalle model folder with vocab.json and merges.txt")
    parser.add_argument("--detoker", help="min-dalle's detoker.pt")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--skip-parity", action="store_true", help="do not compare against the original")
    args = parser.parse_args(argv)
    convert(args.model_dir, args.detoker, args.output, not args.skip_parity)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
