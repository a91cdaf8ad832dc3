"""Convert a min-dalle model folder (DALL·E Mega / mini): the prior (`encoder.pt`, `decoder.pt`) to a
[`PartiForConditionalGeneration`] with BART-style options, its VQGAN detokenizer (`detoker.pt`) to a diffusers
`VQModel` nested in the prior, and its BART BPE vocabulary (`vocab.json`, `merges.txt`) to the prior's
`PartiProcessor`.

With `encoder.pt` + `decoder.pt` in `--model-dir` (and `--detoker`), the output is ONE checkpoint folder: the prior,
the nested `VQModel`, the processor and a model card. With only `--detoker` and / or the vocabulary, the parts are
saved in `vqgan/` and `tokenizer/`.

Prior (key map in `convert_prior_state`). The attention head count is NOT stored in min-dalle's files. It is taken
from the released model whose shapes the files have (mega: width 2048, GLU 4096, 24 + 24 layers, 32 heads; mini:
1024, 2730, 12 + 12, 16 heads); any other shapes need `--num-heads`, because a wrong count converts without error
and computes something else. The parity check builds min-dalle's own encoder and decoder with that same, known head
count, never with a count guessed from the width.

Detokenizer. `detoker.pt` is a plain state dict (read with torch's restricted `weights_only` loader) of the decoder
half of a taming-transformers VQGAN (f16, 16384 codes of 256 dims, channels 128-128-256-256-512, attention at 16x16).
min-dalle ships no encoder: the `VQModel`'s `encoder.*` and `quant_conv.*` are written as zeros, so `encode` is
meaningless and only `decode` (codes -> pixels) is usable.

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
Captions longer than 64 tokens are handled differently: min-dalle keeps the first 64 ids, `<s>` and 63 text ids with
no `</s>`, and its unconditional row becomes `<s>` + the 64th id instead of `<s> </s>`. The package's processor
refuses such a caption unless `truncation=True`, which keeps `<s>`, the first 62 text ids and `</s>`. Up to 64
tokens the ids are identical.

Usage:
    python conversion_scripts/convert_min_dalle_to_hf.py --model-dir dalle_bart_mega/ --detoker vqgan/detoker.pt \
        --output out/ [--num-heads N] [--push-to-hub user/name]
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
    add_hub_arguments,
    check_file,
    create_hub_repo,
    ldm_attention,
    ldm_resnet,
    load_converted,
    load_torch_file,
    max_abs_diff,
    push_to_hub,
    report_parity,
    run_main,
    tensors_only,
    write_model_card,
)


TEXT_TOKEN_COUNT = 64
LICENSE = "apache-2.0"  # the DALL·E Mega / mini weights (dalle-mini)
TAGS = ["min-dalle", "dalle-mini", "parti"]
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


def convert_detokenizer_state(state: dict) -> dict[str, torch.Tensor]:
    """`detoker.pt` -> the decoder half of a `VQModel` state dict; fails on any key it does not map."""
    keys = KeyConsumer(state, "detoker.pt")
    out = {"quantize.embedding.weight": keys.pop("embedding.weight", shape=(16384, 256))}
    for p in ("weight", "bias"):
        out[f"post_quant_conv.{p}"] = keys.pop(f"post_quant_conv.{p}")
        out[f"decoder.conv_in.{p}"] = keys.pop(f"decoder.conv_in.{p}")
        out[f"decoder.conv_norm_out.{p}"] = keys.pop(f"decoder.norm_out.{p}")
        out[f"decoder.conv_out.{p}"] = keys.pop(f"decoder.conv_out.{p}")
    ldm_resnet(keys, "decoder.mid.block_1", "decoder.mid_block.resnets.0", out)
    ldm_attention(keys, "decoder.mid.attn_1", "decoder.mid_block.attentions.0", out)
    ldm_resnet(keys, "decoder.mid.block_2", "decoder.mid_block.resnets.1", out)
    for j in range(UP_BLOCKS):
        src, dst = f"decoder.up.{UP_BLOCKS - 1 - j}", f"decoder.up_blocks.{j}"
        for r in range(3):
            ldm_resnet(keys, f"{src}.block.{r}", f"{dst}.resnets.{r}", out)
            if f"{src}.attn.{r}.q.weight" in keys:
                ldm_attention(keys, f"{src}.attn.{r}", f"{dst}.attentions.{r}", out)
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


# -- the DALL·E Mega / mini prior --------------------------------------------------------------------------------

# The released models (min-dalle's `MinDalle.__init__`). Their head count is not stored in the files: it is known
# only for these shapes (width, GLU width, encoder layers, decoder layers).
RELEASED_PRIORS = {
    "mega": dict(shapes=(2048, 4096, 24, 24), num_heads=32),
    "mini": dict(shapes=(1024, 2730, 12, 12), num_heads=16),
}
IMAGE_CODES = 2**14  # min-dalle samples from the first 2**14 logits only
START_TOKEN = 2**14 - 1  # min-dalle's decoder start token (itself a valid code)


def _glu(keys: KeyConsumer, src: str, dst: str, out: dict) -> None:
    """min-dalle's `GLU`: ln0 -> (gelu(fc0) * fc1) -> ln1 -> fc2; the block's pre-norm is `ln0`."""
    for p in ("weight", "bias"):
        out[f"{dst}.norm2.{p}"] = keys.pop(f"{src}.glu.ln0.{p}")
        out[f"{dst}.mlp.inner_norm.{p}"] = keys.pop(f"{src}.glu.ln1.{p}")
    # FeedForward(glu=True) chunks fc1's output into (gate, up): fc0 is the gated half.
    out[f"{dst}.mlp.fc1.weight"] = torch.cat([keys.pop(f"{src}.glu.fc0.weight"), keys.pop(f"{src}.glu.fc1.weight")])
    out[f"{dst}.mlp.fc2.weight"] = keys.pop(f"{src}.glu.fc2.weight")


def _norm(keys: KeyConsumer, src: str, dst: str, out: dict) -> None:
    for p in ("weight", "bias"):
        out[f"{dst}.{p}"] = keys.pop(f"{src}.{p}")


def _self_attention(keys: KeyConsumer, src: str, dst: str, out: dict) -> None:
    qkv = [keys.pop(f"{src}.{n}_proj.weight") for n in ("q", "k", "v")]
    out[f"{dst}.qkv_proj.weight"] = torch.cat(qkv)  # (3C, C): q, k, v as `Attention._heads` splits them
    out[f"{dst}.out_proj.weight"] = keys.pop(f"{src}.out_proj.weight")


def _count_layers(state: dict) -> int:
    layers = {int(k.split(".")[1]) for k in state if k.startswith("layers.")}
    if not layers or layers != set(range(len(layers))):
        raise ConversionError(f"expected layers 0..N-1 under `layers.`, found {sorted(layers)[:8]}")
    return len(layers)


def resolve_num_heads(shapes: tuple[int, int, int, int], num_heads: int | None) -> int:
    """The prior's head count: `num_heads` when given, else the released model's whose (width, GLU width, encoder
    layers, decoder layers) are `shapes`. Other shapes are refused: the files do not record the count, and a wrong
    one converts without error but computes another function."""
    hidden = shapes[0]
    if num_heads is None:
        for released in RELEASED_PRIORS.values():
            if released["shapes"] == tuple(shapes):
                return released["num_heads"]
        known = ", ".join(
            f"{name}: width {r['shapes'][0]}, GLU {r['shapes'][1]}, {r['shapes'][2]} + {r['shapes'][3]} layers, "
            f"{r['num_heads']} heads"
            for name, r in RELEASED_PRIORS.items()
        )
        raise ConversionError(
            f"the prior (width {shapes[0]}, GLU {shapes[1]}, {shapes[2]} encoder + {shapes[3]} decoder layers) matches "
            f"no released min-dalle model ({known}), and min-dalle's files do not store the attention head count. "
            "Pass --num-heads with the count the model was trained with (a wrong count converts but computes "
            "something else, and the parity check can only use the count it is given)."
        )
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or hidden % num_heads:
        raise ConversionError(f"--num-heads {num_heads} must be a positive divisor of the width {hidden}.")
    return num_heads


def convert_prior_state(
    encoder_state: dict, decoder_state: dict, num_heads: int | None = None
) -> tuple[dict, dict[str, torch.Tensor], dict[str, dict[str, str]]]:
    """encoder.pt + decoder.pt -> (PartiConfig keyword arguments, the prior's state dict without `vqmodel.*`,
    the dropped keys of each file). Every source key is consumed; leftovers fail the conversion.

    `num_heads` is not stored in the files: without it, the shapes must be those of a released model
    ([`resolve_num_heads`])."""
    enc, dec = KeyConsumer(encoder_state, "encoder.pt"), KeyConsumer(decoder_state, "decoder.pt")
    for keys, required in ((enc, "embed_tokens.weight"), (dec, "lm_head.weight")):
        if required not in keys:
            other = "decoder.pt" if keys is enc else "encoder.pt"
            raise ConversionError(
                f"{keys.what} has no `{required}`: it is not min-dalle's {keys.what.split('.')[0]}"
                + (f" (is it the {other}?)" if required.replace("lm_head", "embed_tokens") in keys else ".")
            )
    text_vocab, hidden = enc.state["embed_tokens.weight"].shape
    text_len = enc.state["embed_positions.weight"].shape[0]
    decoder_vocab, decoder_hidden = dec.state["embed_tokens.weight"].shape
    image_tokens = dec.state["embed_positions.weight"].shape[0]
    glu_width = enc.state["layers.0.glu.fc0.weight"].shape[0]
    if decoder_hidden != hidden:
        raise ConversionError(f"encoder width {hidden} and decoder width {decoder_hidden} differ.")
    if decoder_vocab <= IMAGE_CODES or image_tokens != 256:
        raise ConversionError(
            f"decoder.pt has {decoder_vocab} token rows and {image_tokens} positions; min-dalle's decoder has more "
            f"than {IMAGE_CODES} rows and 256 positions."
        )
    encoder_layers, decoder_layers = _count_layers(enc.state), _count_layers(dec.state)
    num_heads = resolve_num_heads((hidden, glu_width, encoder_layers, decoder_layers), num_heads)
    out: dict[str, torch.Tensor] = {}

    te = "model.text_encoder"
    out[f"{te}.embeddings.weight"] = enc.pop("embed_tokens.weight")
    out[f"{te}.position_embeddings.weight"] = enc.pop("embed_positions.weight")
    _norm(enc, "layernorm_embedding", f"{te}.embedding_norm", out)
    for i in range(encoder_layers):
        src, dst = f"layers.{i}", f"{te}.layers.{i}"
        _norm(enc, f"{src}.pre_self_attn_layer_norm", f"{dst}.norm1", out)
        _self_attention(enc, f"{src}.self_attn", f"{dst}.self_attn", out)
        _norm(enc, f"{src}.self_attn_layer_norm", f"{dst}.norm1_post", out)
        _glu(enc, src, dst, out)
    _norm(enc, "final_ln", f"{te}.norm", out)

    de = "model.decoder"
    out[f"{de}.embeddings.weight"] = dec.pop("embed_tokens.weight")
    out[f"{de}.position_embeddings.weight"] = dec.pop("embed_positions.weight")
    _norm(dec, "layernorm_embedding", f"{de}.embedding_norm", out)
    for i in range(decoder_layers):
        src, dst = f"layers.{i}", f"{de}.layers.{i}"
        _norm(dec, f"{src}.pre_self_attn_layer_norm", f"{dst}.norm1", out)
        _self_attention(dec, f"{src}.self_attn", f"{dst}.self_attn", out)
        _norm(dec, f"{src}.self_attn_layer_norm", f"{dst}.norm1_post", out)
        _norm(dec, f"{src}.pre_encoder_attn_layer_norm", f"{dst}.norm_cross", out)
        out[f"{dst}.cross_attn.q_proj.weight"] = dec.pop(f"{src}.encoder_attn.q_proj.weight")
        kv = [dec.pop(f"{src}.encoder_attn.{n}_proj.weight") for n in ("k", "v")]
        out[f"{dst}.cross_attn.kv_proj.weight"] = torch.cat(kv)  # (2C, C): keys then values
        out[f"{dst}.cross_attn.out_proj.weight"] = dec.pop(f"{src}.encoder_attn.out_proj.weight")
        _norm(dec, f"{src}.encoder_attn_layer_norm", f"{dst}.norm_cross_post", out)
        _glu(dec, src, dst, out)
    _norm(dec, "final_ln", f"{de}.norm", out)
    out["lm_head.weight"] = dec.pop("lm_head.weight", shape=(decoder_vocab, hidden))
    enc.finish()
    dec.finish()
    config = dict(
        text_vocab_size=text_vocab,
        text_seq_len=text_len,
        encoder_layers=encoder_layers,
        encoder_attention_heads=num_heads,
        encoder_intermediate_size=glu_width,
        hidden_size=hidden,
        num_hidden_layers=decoder_layers,
        num_attention_heads=num_heads,
        intermediate_size=glu_width,
        hidden_act="gelu",  # torch's exact GELU (nn.GELU())
        layer_norm_eps=1e-5,
        use_bias=False,
        mlp_glu=True,
        mlp_inner_norm=True,
        attention_post_norm=True,
        embedding_norm=True,
        decoder_vocab_size=decoder_vocab,
        image_start_token_id=START_TOKEN,
    )
    return config, out, {"encoder.pt": enc.dropped, "decoder.pt": dec.dropped}


def load_state(path, what: str) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in tensors_only(load_torch_file(path, what), what).items()}


def convert_prior(encoder_path, decoder_path, vqmodel, num_heads: int | None = None):
    """encoder.pt + decoder.pt (+ the converted detokenizer) -> `PartiForConditionalGeneration`."""
    from hf_t2i import PartiConfig, PartiForConditionalGeneration
    from hf_t2i.models.parti import DiffusersVQConfig

    config_kwargs, state, _ = convert_prior_state(
        load_state(encoder_path, "encoder.pt"), load_state(decoder_path, "decoder.pt"), num_heads
    )
    vqmodel_config = {k: v for k, v in vqmodel.config.items() if not k.startswith("_")}
    vq_config = DiffusersVQConfig(vqmodel_config=vqmodel_config, output_range=[0.0, 1.0])  # min-dalle: [0, 1]
    config = PartiConfig(vq_config=vq_config, **config_kwargs)
    model = PartiForConditionalGeneration(config).eval()
    state.update({f"vqmodel.{k}": v for k, v in vqmodel.state_dict().items()})
    load_converted(model, state, "PartiForConditionalGeneration")
    return model


def _build_original_prior(encoder_state: dict, decoder_state: dict, heads: int):
    models = import_min_dalle("min_dalle.models")
    hidden = encoder_state["embed_tokens.weight"].shape[1]
    glu = encoder_state["layers.0.glu.fc0.weight"].shape[0]
    encoder = models.DalleBartEncoder(
        layer_count=_count_layers(encoder_state),
        embed_count=hidden,
        attention_head_count=heads,
        text_vocab_count=encoder_state["embed_tokens.weight"].shape[0],
        text_token_count=encoder_state["embed_positions.weight"].shape[0],
        glu_embed_count=glu,
        device="cpu",
    ).eval()
    decoder = models.DalleBartDecoder(
        image_vocab_count=decoder_state["embed_tokens.weight"].shape[0] - 1,
        embed_count=hidden,
        attention_head_count=heads,
        glu_embed_count=glu,
        layer_count=_count_layers(decoder_state),
        device="cpu",
    ).eval()
    encoder.load_state_dict(encoder_state)
    decoder.load_state_dict(decoder_state)
    return encoder, decoder


def fixed_text_tokens(text_vocab: int, text_len: int) -> torch.Tensor:
    """min-dalle's (2, L) text batch: row 0 the unconditional `<s> </s>`, row 1 a caption; pads are id 1."""
    tokens = torch.ones(2, text_len, dtype=torch.long)
    caption = torch.randint(4, text_vocab, (min(text_len, 7),), generator=torch.Generator().manual_seed(0))
    tokens[0, :2] = torch.tensor([0, 2])
    tokens[1, : len(caption)] = caption
    tokens[1, 0], tokens[1, len(caption) - 1] = 0, 2
    return tokens


@torch.no_grad()
def min_dalle_greedy(encoder, decoder, text_tokens: torch.Tensor, guidance: float, num_tokens: int) -> torch.Tensor:
    """min-dalle's own sampling loop (`MinDalle.generate_raw_image_stream`, one image) with top_k = 1: greedy."""
    hidden = decoder.embed_count
    encoder_state = encoder(text_tokens)  # (2, L, C): [uncond, cond]
    attention_mask = text_tokens.not_equal(1)[:, None, None, :]
    attention_state = torch.zeros(decoder.layer_count, 4, 256, hidden)  # (layers, 2 * 2 images, 256, C)
    tokens = torch.full((1, num_tokens + 1), START_TOKEN, dtype=torch.long)
    settings = torch.tensor([1.0, 1.0, guidance])
    indices = torch.arange(256)
    for i in range(num_tokens):
        tokens[:, i + 1], attention_state = decoder.sample_tokens(
            settings=settings,
            attention_mask=attention_mask,
            encoder_state=encoder_state,
            attention_state=attention_state,
            prev_tokens=tokens[:, [i]],
            token_index=indices[[i]],
        )
    return tokens[0, 1:]


def prior_shapes(encoder_state: dict, decoder_state: dict) -> tuple[int, int, int, int]:
    """(width, GLU width, encoder layers, decoder layers) of min-dalle's prior files."""
    hidden = encoder_state["embed_tokens.weight"].shape[1]
    glu_width = encoder_state["layers.0.glu.fc0.weight"].shape[0]
    return hidden, glu_width, _count_layers(encoder_state), _count_layers(decoder_state)


@torch.no_grad()
def check_prior_parity(
    model, encoder_state: dict, decoder_state: dict, num_heads: int, guidance: float = 16.0, tolerance: float = 1e-4
) -> dict[str, float] | None:
    """Compare the converted prior with min-dalle's `DalleBartEncoder` / `DalleBartDecoder` on a fixed input: text
    states, decoder logits of a fixed image-token prefix (teacher forcing, both guidance rows), the guided logits,
    and the greedy tokens of min-dalle's own loop against the package's cached sampler.

    `num_heads` is the head count the checkpoint was trained with (the user's `--num-heads`, or the released
    model's), which the original is built with. It is deliberately not read from `model`: a converted model with a
    wrong count must not be compared against an original built with the same wrong count."""
    try:
        encoder, decoder = _build_original_prior(encoder_state, decoder_state, num_heads)
    except ImportError:
        print("parity prior: skipped (install `min-dalle` to compare against the original)")
        return None
    config = model.config
    text = fixed_text_tokens(config.text_vocab_size, config.text_seq_len)  # (2, L) [uncond, cond]
    mask = text.ne(1).long()
    ref_states = encoder(text)
    ours_states = model.model.text_encoder(text, mask).last_hidden_state
    codes = torch.randint(0, IMAGE_CODES, (1, 256), generator=torch.Generator().manual_seed(1))
    prev = torch.cat([torch.full((1, 1), START_TOKEN), codes[:, :-1]], dim=1)  # (1, 256)
    ref_logits, _ = decoder(
        attention_mask=mask.bool()[:, None, None, :],
        encoder_state=ref_states,
        attention_state=torch.zeros(decoder.layer_count, 4, 256, decoder.embed_count),
        prev_tokens=prev,
        token_index=torch.arange(256),
    )  # (2, 256, V): [uncond, cond]
    out = model(input_ids=text, attention_mask=mask, decoder_input_ids=prev.expand(2, -1), use_cache=False)
    ours_logits = out.logits[..., :IMAGE_CODES]
    ref_logits = ref_logits[..., :IMAGE_CODES]
    ref_guided = ref_logits[0] * (1 - guidance) + ref_logits[1] * guidance  # min-dalle's formula
    from hf_t2i.generation import ClassifierFreeGuidance

    ours_guided = ClassifierFreeGuidance(guidance).combine(ours_logits.flip(0))[0]  # ours: conditional rows first
    deltas = {
        "prior text encoder states": max_abs_diff(ours_states, ref_states),
        "prior decoder logits": max_abs_diff(ours_logits, ref_logits),
        f"prior guided logits (s={guidance:g})": max_abs_diff(ours_guided, ref_guided),
    }
    for name, delta in deltas.items():
        # Guided logits are a difference amplified by s: compare them relative to s.
        report_parity(name, delta, tolerance * (guidance if "guided" in name else 1))
    num_tokens = config.num_image_tokens
    ref_tokens = min_dalle_greedy(encoder, decoder, text, guidance, num_tokens)
    ours_tokens = model.sample_image_tokens(
        text[1:], mask[1:], text[:1], mask[:1], guidance_scale=guidance, do_sample=False
    )[0]
    same = bool(torch.equal(ours_tokens, ref_tokens))
    print(f"parity prior greedy tokens ({num_tokens}, s={guidance:g}): {'identical' if same else 'DIFFERENT'}")
    deltas["prior_greedy_identical"] = float(same)
    return deltas


def convert(
    model_dir=None,
    detoker_path=None,
    output_dir=None,
    check: bool = True,
    num_heads: int | None = None,
    push_to_hub_repo: str | None = None,
    license: str | None = LICENSE,
) -> dict:
    """Convert what is given; returns {"vqmodel", "tokenizer", "model" (the prior), "parity"}.

    The prior (`encoder.pt` + `decoder.pt` in `model_dir`) is converted when both files are there; it needs
    `detoker_path` too (the prior nests its image tokenizer). `num_heads` is the prior's head count (required unless
    its shapes are a released model's). With `push_to_hub_repo` the saved prior folder is uploaded with its card
    (the repository is created first, so a bad id or login fails before converting).
    """
    if model_dir is None and detoker_path is None:
        raise ConversionError("pass --model-dir (encoder.pt, decoder.pt, vocab.json, merges.txt) and/or --detoker.")
    repo_id = None
    if push_to_hub_repo is not None:
        has_prior = model_dir is not None and any(Path(model_dir, n).exists() for n in ("encoder.pt", "decoder.pt"))
        if output_dir is None or not has_prior:
            raise ConversionError(
                "--push-to-hub uploads one checkpoint folder: the prior (encoder.pt + decoder.pt in --model-dir, with "
                "--detoker) saved to --output. The detokenizer and tokenizer alone are saved as two parts (vqgan/, "
                "tokenizer/); upload one of them with `hf upload` instead."
            )
        repo_id = create_hub_repo(push_to_hub_repo)
    result, parity = {}, {}
    if detoker_path is not None:
        vqmodel = convert_detokenizer(detoker_path)
        result["vqmodel"] = vqmodel
        if check:
            state = tensors_only(load_torch_file(detoker_path, "detoker.pt"), "detoker.pt")
            parity.update(check_detokenizer_parity(vqmodel, state) or {})
    if model_dir is not None:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ConversionError(f"--model-dir must be a folder, got {model_dir}")
        encoder_path, decoder_path = model_dir / "encoder.pt", model_dir / "decoder.pt"
        if encoder_path.exists() or decoder_path.exists():
            check_file(encoder_path, "encoder.pt")
            check_file(decoder_path, "decoder.pt")
            if detoker_path is None:
                raise ConversionError(
                    "converting the prior (encoder.pt, decoder.pt) needs --detoker: the prior nests its VQGAN."
                )
            model = convert_prior(encoder_path, decoder_path, result["vqmodel"], num_heads)
            result["model"] = model
            if check:
                states = load_state(encoder_path, "encoder.pt"), load_state(decoder_path, "decoder.pt")
                true_heads = resolve_num_heads(prior_shapes(*states), num_heads)
                parity.update(check_prior_parity(model, *states, num_heads=true_heads) or {})
        vocab, merges = model_dir / "vocab.json", model_dir / "merges.txt"
        if vocab.exists() or merges.exists() or "model" not in result:
            tokenizer = convert_tokenizer(vocab, merges)
            if "model" in result:
                text_config = result["model"].config
                tokenizer.model_max_length = text_config.text_seq_len  # min-dalle: 64
                if len(tokenizer) > text_config.text_vocab_size:
                    raise ConversionError(
                        f"vocab.json has {len(tokenizer)} tokens, more than the encoder's {text_config.text_vocab_size} "
                        "embeddings: it belongs to another model (mega and mini have their own vocabularies)."
                    )
            result["tokenizer"] = tokenizer
            if check:
                texts = ["a red circle", "Cats   playing chess on the moon", "an astronaut, riding a horse.", "zzqx"]
                same = check_tokenizer_parity(tokenizer, vocab, merges, texts)
                if same is not None:
                    parity["tokenizer_identical"] = float(same)
    result["parity"] = parity
    failed = [
        k
        for k, v in parity.items()
        if k in ("detokenizer output (eps matched)", "prior text encoder states", "prior decoder logits") and v > 1e-4
    ]
    failed += [k for k, v in parity.items() if k.startswith("prior guided") and v > 16e-4]
    if parity.get("tokenizer_identical") == 0.0:
        failed.append("tokenizer")
    if parity.get("prior_greedy_identical") == 0.0:
        failed.append("prior greedy tokens")
    if output_dir is not None:
        save(result, parity, Path(output_dir), license, repo_id)
    if failed:
        raise ConversionError(f"the converted parts do not match min-dalle ({failed}).")
    if repo_id is not None:
        push_to_hub(output_dir, repo_id, "min-dalle's DALL·E Mega / mini", tags=TAGS, license=license)
    return result


def save(result: dict, parity: dict, output_dir: Path, license: str | None = LICENSE, repo_id: str | None = None):
    """The prior as one checkpoint folder (a `PartiPipeline`: model and processor at the root, when the vocabulary
    was converted too; else the model alone) with hf_t2i's model card; without a prior, the parts in subfolders."""
    if "model" not in result:
        if "vqmodel" in result:
            result["vqmodel"].save_pretrained(output_dir / "vqgan")
        if "tokenizer" in result:
            result["tokenizer"].save_pretrained(output_dir / "tokenizer")
        print(f"saved to {output_dir} (vqgan/: diffusers VQModel, decoder half only; tokenizer/: BART BPE)")
        return
    from hf_t2i import PartiPipeline, PartiProcessor, T2IImageProcessor

    model = result["model"]
    if "tokenizer" in result:
        image_processor = T2IImageProcessor(image_size=model.config.vq_config.image_size)
        PartiPipeline(model=model, processor=PartiProcessor(image_processor, result["tokenizer"])).save_pretrained(
            output_dir
        )
    else:
        model.save_pretrained(output_dir)
    c = model.config
    body = f"""
Converted with `conversion_scripts/convert_min_dalle_to_hf.py` of hf_t2i from min-dalle's `encoder.pt`, `decoder.pt`,
`detoker.pt` (and `vocab.json`, `merges.txt` when present): a `PartiForConditionalGeneration` ({c.encoder_layers} +
{c.num_hidden_layers} layers of width {c.hidden_size}, {c.num_attention_heads} heads) with the BART-style options (no
biases, GLU feed-forward with an inner LayerNorm, post-attention LayerNorms, embedding LayerNorm, decoder start token
{START_TOKEN}) nesting min-dalle's VQGAN as a diffusers `VQModel`.

Sample as min-dalle does with `guidance_scale=16` (its `supercondition_factor`) and `top_k=256`; the unconditional
prompt is the empty string (`<s> </s>`). Captions are limited to {c.text_seq_len} tokens: a longer one is refused
unless the processor is called with `truncation=True`, which keeps `<s>`, the first {c.text_seq_len - 2} text tokens
and `</s>` (min-dalle keeps `<s>` and the first {c.text_seq_len - 1} text tokens, without `</s>`).

Parity with min-dalle (max |delta|, float32): {parity or "not measured"}.
"""
    write_model_card(output_dir, "Converted from min-dalle", body, tags=TAGS, license=license, repo_id=repo_id)
    print(f"saved to {output_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--model-dir", help="min-dalle model folder: encoder.pt and decoder.pt (the prior), vocab.json, merges.txt"
    )
    parser.add_argument("--detoker", help="min-dalle's detoker.pt")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--num-heads",
        type=int,
        help="attention heads of the prior (not stored in the files; required unless the prior has the shapes of "
        "the released mega (32 heads) or mini (16 heads))",
    )
    parser.add_argument("--skip-parity", action="store_true", help="do not compare against the original")
    add_hub_arguments(parser, default_license=LICENSE)
    args = parser.parse_args(argv)
    convert(
        args.model_dir, args.detoker, args.output, not args.skip_parity, args.num_heads, args.push_to_hub, args.license
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
