"""Convert a DALLE-pytorch training checkpoint (`dalle.pt` of `train_dalle.py`) to [`DalleForConditionalGeneration`]
with its VAE nested: OpenAI's dVAE as [`DalleDVAE`], or DALLE-pytorch's own `DiscreteVAE` as [`DallePytorchDVAE`].
`--vae-checkpoint` converts a `DiscreteVAE` alone (`vae.pt` of `train_vae.py`: `{'hparams', 'weights'}`).

Checkpoint: `{'hparams', 'vae_params', 'weights', 'vae_class_name', 'version', 'epoch', 'opt_state',
'scheduler_state'}` (older releases have only the first three). `hparams`, `vae_class_name`, `vae_params` (the
`DiscreteVAE`'s constructor arguments; None for OpenAI's dVAE) and `weights` are read; optimizer and scheduler states
are dropped. Layer keys are matched by suffix, because the number of `fn.`
hops between a layer index and its weights changes with options and releases (`LayerScale`, `PreNorm`, `CachedAs`,
`PreShiftToken`, `NonCached` wrappers).

Token layout. DALLE-pytorch prepends a <bos> (id 0) to the `L` text ids, replaces each text id 0 (padding) with a
per-position id `V + i`, and predicts image codes in the logit slots after the `V + L` text slots. The converted
model uses the same id space: `text_seq_len = L + 1` (the <bos> is position 0), `text_vocab_size = V + L`, image code
`k` is id `V + L + k`, and `text_pad_token_id = 0` selects `text_pad_embeddings[p]`, which holds the <bos> embedding
at `p = 0` and the per-position padding embedding `V + p - 1` elsewhere. Inputs are therefore `[0, *text_ids]`, with
the text padded by 0 to `L` as DALLE-pytorch's tokenizers do.

Key map (`{i}`: layer, `...`: any wrapper hops):

| source (`weights`)                                       | target                                                 |
|----------------------------------------------------------|--------------------------------------------------------|
| `text_emb.weight` (or `to_logits.1.weight` when shared)  | `model.text_embeddings.weight`; rows 0 and `V..V+L-1` also `model.text_pad_embeddings.weight` |
| `image_emb.weight` (or `to_logits.1.weight` rows)        | `model.image_embeddings.weight`                         |
| `text_pos_emb.weight` (`rotary_emb=False`)               | `model.text_position_embeddings.weight`                |
| `image_pos_emb.weights.{0,1}` (or `weights_{0,1}`)       | `model.image_position_embeddings.{row,col}.weight`     |
| `transformer.pos_emb` (`rotary_emb=True`)                | checked against `dalle_rotary_angles`, dropped: `position_embedding_type="rotary"` recomputes it |
| `transformer.layers.layers.{i}.0...norm.{weight,bias}`   | `model.layers.{i}.norm1.*`                             |
| `transformer.layers.layers.{i}.0...to_qkv.weight`        | `model.layers.{i}.self_attn.qkv_proj.weight` (bias: zeros) |
| `transformer.layers.layers.{i}.0...to_out.0.*`           | `model.layers.{i}.self_attn.out_proj.*`                |
| `transformer.layers.layers.{i}.0...norm_out.*` (sandwich) | `model.layers.{i}.norm1_post.*`                        |
| `transformer.layers.layers.{i}.0.scale` (LayerScale)     | `model.layers.{i}.scale1`                              |
| `transformer.layers.layers.{i}.1...norm.*`               | `model.layers.{i}.norm2.*`                             |
| `transformer.layers.layers.{i}.1...net.0.*` (GEGLU in)   | `model.layers.{i}.mlp.fc1.*` (halves swapped: [gate, value]) |
| `transformer.layers.layers.{i}.1...net.3.*`              | `model.layers.{i}.mlp.fc2.*`                           |
| `transformer.layers.layers.{i}.1...norm_out.*`, `.1.scale` | `model.layers.{i}.norm2_post.*`, `model.layers.{i}.scale2` |
| `to_logits.0.*`, `to_logits.1.*`                         | `model.norm.*`, `lm_head.*`                            |
| `vae.enc.blocks.*.{w,b}`, `vae.dec.blocks.*.{w,b}`       | `vqmodel.{encoder,decoder}.blocks.*.{weight,bias}`     |
| `vae.{codebook,encoder,decoder}.*` (its own DiscreteVAE) | `vqmodel.{codebook,encoder,decoder}.*` (same tree)     |
| `text_emb.linear.*`, `image_emb.linear.*` (shared copies) | dropped after checking they equal `to_logits.1.*`     |
| `logits_mask` (persistent in old releases)               | dropped (recomputed)                                   |

Supported: `attn_types` of `full`, `axial_col` (the image token sees the whole text and the earlier tokens of its
column: the package's `"column"` mask), `axial_row` (the earlier tokens of its row: `"axial_row"`) and `conv_like`
(the 5 x 5 window whose bottom-right corner is the image token: `"conv_corner"` with `conv_kernel_size=5`),
`rotary_emb=True` (DALLE-pytorch's default: queries, keys and values rotated with its text + axial-pixel layout,
`DalleConfig(position_embedding_type="rotary")`), `shift_tokens=True` (its other default: `DalleConfig(shift_tokens=
True)`, the shifted channels of the last image row kept in the cache while decoding), `sandwich_norm`, LayerScale,
`share_input_output_emb`, `shared_attn_ids` / `shared_ff_ids` (weights are copied per layer), dropout settings,
`loss_img_weight`. Refused with an error naming the option: `reversible`, `stable`, `sparse_attn` and the `sparse`
attention type, `dim_head * heads != dim`, and `VQGanVAE` (taming-transformers' VQGAN: another architecture).
`DiscreteVAE`'s `normalization` (mean, std of [0, 1] images) is kept in the config; its `reinmax` (training only) is
not.

Usage:
    python conversion_scripts/convert_dalle_pytorch_to_hf.py --checkpoint dalle.pt --output out/ \
        [--push-to-hub user/name --license mit]
    python conversion_scripts/convert_dalle_pytorch_to_hf.py --vae-checkpoint vae.pt --output vae/
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import re
import sys
import types
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_dalle_dvae_to_hf as dvae_script  # noqa: E402
from conversion_utils import (  # noqa: E402
    ConversionError,
    KeyConsumer,
    add_hub_arguments,
    create_hub_repo,
    load_converted,
    load_torch_file,
    max_abs_diff,
    push_to_hub,
    report_parity,
    require_mapping,
    require_parity,
    run_main,
    tensors_only,
    write_model_card,
)

from hf_t2i import DalleConfig, DalleForConditionalGeneration, DallePytorchDVAE, DallePytorchDVAEConfig  # noqa: E402
from hf_t2i.models.dalle.modeling_dalle import dalle_rotary_angles  # noqa: E402


# DALLE-pytorch 1.6.6 defaults of the `DALLE` constructor, used for hparams an older checkpoint did not record.
DALLE_DEFAULTS = dict(
    num_text_tokens=10000,
    text_seq_len=256,
    heads=8,
    dim_head=64,
    reversible=False,
    attn_dropout=0.0,
    ff_dropout=0.0,
    sparse_attn=False,
    attn_types=None,
    loss_img_weight=7,
    stable=False,
    sandwich_norm=False,
    shift_tokens=True,
    rotary_emb=True,
    shared_attn_ids=None,
    shared_ff_ids=None,
    share_input_output_emb=False,
    optimize_for_inference=False,
)
REQUIRED_HPARAMS = ("dim", "depth")
TAGS = ["dalle", "dalle-pytorch"]
# DALLE-pytorch attention type -> DalleConfig's. `conv_like` is SparseConvCausalAttention with its defaults (kernel 5,
# dilation 1), which DALLE-pytorch's Transformer never changes.
ATTENTION_TYPES = {"full": "full", "axial_col": "column", "axial_row": "axial_row", "conv_like": "conv_corner"}
CONV_LIKE_KERNEL_SIZE = 5
CHECKPOINT_DROPPED = ("opt_state", "scheduler_state", "epoch", "version")
VAE_CLASSES = ("OpenAIDiscreteVAE", "DiscreteVAE")
# DALLE-pytorch 1.6.6 defaults of the `DiscreteVAE` constructor, for `vae_params` an older checkpoint did not record
DISCRETE_VAE_DEFAULTS = dict(
    image_size=256,
    num_tokens=512,
    codebook_dim=512,
    num_layers=3,
    num_resnet_blocks=0,
    hidden_dim=64,
    channels=3,
    smooth_l1_loss=False,
    temperature=0.9,
    straight_through=False,
    reinmax=False,
    kl_div_loss_weight=0.0,
    normalization=((0.5, 0.5, 0.5, 0), (0.5, 0.5, 0.5, 1)),
)


def read_hparams(checkpoint: dict) -> dict:
    """The DALLE constructor arguments, with 1.6.6 defaults filled in; unknown names fail."""
    hparams = dict(require_mapping(checkpoint["hparams"], "checkpoint['hparams']", REQUIRED_HPARAMS))
    unknown = sorted(set(hparams) - set(DALLE_DEFAULTS) - set(REQUIRED_HPARAMS) - {"vae"})
    if unknown:
        raise ConversionError(f"unsupported DALLE-pytorch hparams {unknown}: this converter does not know them.")
    return {**DALLE_DEFAULTS, **hparams}


def check_supported(hparams: dict, weights: dict, vae_class_name: str) -> list[str]:
    """Fail with the name of the first option the package's DALL-E cannot reproduce; return the attention types."""
    refusals = [
        (hparams["reversible"], "reversible=True", "reversible layers compute a two-stream residual"),
        (hparams["stable"], "stable=True", "the final divide-by-max before the output norm changes the logits"),
        (bool(hparams["sparse_attn"]), "sparse_attn", "DeepSpeed block-sparse attention has no exact mask here"),
        (
            hparams["heads"] * hparams["dim_head"] != hparams["dim"],
            f"dim_head={hparams['dim_head']}",
            f"heads * dim_head ({hparams['heads']} * {hparams['dim_head']}) must equal dim ({hparams['dim']})",
        ),
    ]
    for refused, option, why in refusals:
        if refused:
            raise ConversionError(f"unsupported DALLE-pytorch hparam {option}: {why}.")
    if vae_class_name not in VAE_CLASSES:
        raise ConversionError(
            f"unsupported DALLE-pytorch VAE {vae_class_name!r}: DalleForConditionalGeneration nests OpenAI's dVAE "
            "(`OpenAIDiscreteVAE` -> DalleDVAE) or DALLE-pytorch's own `DiscreteVAE` (-> DallePytorchDVAE); "
            "`VQGanVAE` (taming-transformers' VQGAN) has another architecture."
        )
    attn_types = hparams["attn_types"] or ("full",)
    if isinstance(attn_types, str):
        attn_types = tuple(t.strip() for t in attn_types.split(","))
    bad = [t for t in attn_types if t not in ATTENTION_TYPES]
    if bad:
        raise ConversionError(
            f"unsupported DALLE-pytorch attn_types {bad}: only {sorted(ATTENTION_TYPES)} map exactly onto the "
            "package's masks ('sparse' is DeepSpeed's block-sparse attention with random blocks)."
        )
    depth = hparams["depth"]
    return [ATTENTION_TYPES[attn_types[i % len(attn_types)]] for i in range(depth)]


def _pop_suffix(keys: KeyConsumer, prefix: str, pattern: str, required: bool = True) -> torch.Tensor | None:
    """Pop the one key under `prefix` whose remainder matches the regex `pattern` (anchored at a dot or start)."""
    regex = re.compile(rf"(?:^|\.){pattern}$")
    found = [k for k in keys.remaining() if k.startswith(prefix) and regex.search(k[len(prefix) :])]
    if len(found) > 1:
        raise ConversionError(f"ambiguous keys under {prefix!r} for {pattern!r}: {found}")
    if not found:
        if required:
            raise ConversionError(f"the checkpoint lacks a {pattern!r} weight under {prefix!r}.")
        return None
    return keys.pop(found[0])


def _check_rotary_table(keys: KeyConsumer, hparams: dict) -> int:
    """Pop the rotary table DALLE-pytorch saves (`transformer.pos_emb`, (1, S, R) angles), check that it is the
    layout `dalle_rotary_angles` computes (the converted model recomputes it), and return the image grid side."""
    table = keys.pop_optional("transformer.pos_emb")
    if table is None:
        raise ConversionError("rotary_emb=True but the checkpoint has no `transformer.pos_emb` rotary table.")
    text_length = hparams["text_seq_len"] + 1  # <bos> + text
    grid = math.isqrt(max(table.shape[1] - text_length, 0))
    if table.ndim != 3 or table.shape[0] != 1 or grid < 1 or text_length + grid * grid != table.shape[1]:
        raise ConversionError(
            f"`transformer.pos_emb` has shape {tuple(table.shape)}; expected (1, {text_length} + a square number of "
            "image positions, R)."
        )
    expected = dalle_rotary_angles(text_length, grid, hparams["dim_head"])
    if table.shape[2] != expected.shape[1] or max_abs_diff(table[0], expected) > 1e-5 * expected.abs().max():
        raise ConversionError(
            "`transformer.pos_emb` is not DALLE-pytorch 1.6.6's rotary layout (text + axial pixel frequencies) for "
            f"dim_head={hparams['dim_head']}: it was written by another version, which this converter does not know."
        )
    return grid


def discrete_vae_config(vae_params) -> DallePytorchDVAEConfig:
    """The `DallePytorchDVAEConfig` of a `DiscreteVAE`'s constructor arguments (`vae_params` of `dalle.pt`,
    `hparams` of `train_vae.py`'s `vae.pt`), with 1.6.6 defaults for the ones not recorded; unknown names fail."""
    params = dict(require_mapping(vae_params, "the DiscreteVAE's hparams"))
    unknown = sorted(set(params) - set(DISCRETE_VAE_DEFAULTS))
    if unknown:
        raise ConversionError(f"unsupported DiscreteVAE hparams {unknown}: this converter does not know them.")
    params = {**DISCRETE_VAE_DEFAULTS, **params}
    if params["reinmax"]:
        print("note: reinmax=True (a training-only gradient estimator) is not kept; inference is unaffected")
    channels = params["channels"]
    normalization = params["normalization"]
    if normalization is None:  # no normalisation: [0, 1] images go in as they are, i.e. mean 0 and std 1
        normalization = ((0.0,) * channels, (1.0,) * channels)
    mean, std = (list(t)[:channels] for t in normalization)
    try:
        return DallePytorchDVAEConfig(
            image_size=params["image_size"],
            num_channels=channels,
            vocab_size=params["num_tokens"],
            codebook_dim=params["codebook_dim"],
            num_layers=params["num_layers"],
            num_resnet_blocks=params["num_resnet_blocks"],
            hidden_size=params["hidden_dim"],
            normalization_mean=mean,
            normalization_std=std,
            gumbel_temperature=params["temperature"],
            straight_through=params["straight_through"],
            kl_div_loss_weight=params["kl_div_loss_weight"],
            reconstruction_loss="smooth_l1" if params["smooth_l1_loss"] else "mse",
        )
    except ValueError as error:
        raise ConversionError(
            f"the DiscreteVAE's hparams do not make a valid DallePytorchDVAEConfig: {error}"
        ) from None


def pop_discrete_vae(keys: KeyConsumer, prefix: str) -> dict[str, torch.Tensor]:
    """Pop a `DiscreteVAE`'s weights (`{prefix}codebook.weight`, `{prefix}encoder.*`, `{prefix}decoder.*`): the
    module tree of `DallePytorchDVAE` is the same, so the names stay."""
    state = {
        k[len(prefix) :]: keys.pop(k)
        for k in keys.remaining()
        if k.startswith(prefix) and k[len(prefix) :].split(".")[0] in ("codebook", "encoder", "decoder")
    }
    if "codebook.weight" not in state:
        raise ConversionError(f"the checkpoint has no `{prefix}codebook.weight` of a DiscreteVAE.")
    return state


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """GEGLU's `x, gates = chunk(2)` -> the package's `gate, up = chunk(2)` order."""
    value, gate = t.chunk(2, dim=0)
    return torch.cat([gate, value], dim=0)


def convert_weights(
    weights: dict,
    hparams: dict,
    attention_types: list[str],
    vae_class_name: str = "OpenAIDiscreteVAE",
    vae_params=None,
) -> tuple[DalleConfig, dict]:
    """-> (config, state dict of `DalleForConditionalGeneration`)."""
    keys = KeyConsumer(weights, "checkpoint['weights']")
    dim, depth = hparams["dim"], hparams["depth"]
    seq_len_text = hparams["text_seq_len"]
    keys.drop("logits_mask", "a constant mask the model recomputes")

    # -- dVAE -------------------------------------------------------------------------------------------------------
    if vae_class_name == "DiscreteVAE":
        if vae_params is None:
            raise ConversionError("the checkpoint's VAE is a DiscreteVAE but it has no `vae_params` to build it from.")
        vq_config = discrete_vae_config(vae_params)
        vae_state = pop_discrete_vae(keys, "vae.")
    else:
        halves = {}
        for half, short in (("encoder", "enc"), ("decoder", "dec")):
            prefix = f"vae.{short}."
            halves[half] = {k[len(prefix) :]: keys.pop(k) for k in keys.remaining() if k.startswith(prefix)}
            if not halves[half]:
                raise ConversionError(f"the checkpoint has no `{prefix}*` weights of its OpenAIDiscreteVAE.")
        vae_state = dvae_script.convert_state(halves["encoder"], halves["decoder"])
        vq_config = dvae_script.infer_config(halves["encoder"], halves["decoder"], None)

    # -- embeddings and head ----------------------------------------------------------------------------------------
    head_w, head_b = keys.pop("to_logits.1.weight"), keys.pop("to_logits.1.bias")
    total_tokens = head_w.shape[0]
    if "text_emb.linear.weight" in keys:  # share_input_output_emb: SharedEmbedding views of the head
        for k in (
            "text_emb.linear.weight",
            "text_emb.linear.bias",
            "image_emb.linear.weight",
            "image_emb.linear.bias",
        ):
            if not torch.equal(keys.pop(k), head_b if k.endswith("bias") else head_w):
                raise ConversionError(f"{k} should be the shared output projection but differs from to_logits.1.")
        num_text_tokens = hparams["num_text_tokens"] + seq_len_text
        text_emb, image_emb = head_w[:num_text_tokens], head_w[num_text_tokens:]
    else:
        text_emb, image_emb = keys.pop("text_emb.weight"), keys.pop("image_emb.weight")
        num_text_tokens = text_emb.shape[0]
    vocab_text = num_text_tokens - seq_len_text
    num_codes = image_emb.shape[0]
    if num_text_tokens + num_codes != total_tokens or vocab_text < 1:
        raise ConversionError(
            f"inconsistent sizes: {num_text_tokens} text + {num_codes} image embeddings vs {total_tokens} logits "
            f"(text_seq_len {seq_len_text})."
        )
    # rotary_emb=True saves a rotary table and no learned positions (old releases without the hparam had no rotary)
    rotary = "transformer.pos_emb" in keys or "text_pos_emb.weight" not in keys
    if rotary:
        grid = _check_rotary_table(keys, hparams)
    else:
        text_pos = keys.pop("text_pos_emb.weight", shape=(seq_len_text + 1, dim))
        axial = [_pop_suffix(keys, "image_pos_emb.", rf"weights[._]{i}") for i in (0, 1)]
        grid = axial[0].shape[1]
        if axial[0].shape != (1, grid, 1, dim) or axial[1].shape != (1, 1, grid, dim):
            raise ConversionError(f"unexpected axial position shapes {[tuple(a.shape) for a in axial]}.")

    if vae_class_name == "DiscreteVAE":
        if vq_config.grid_size != grid:
            raise ConversionError(
                f"the DiscreteVAE makes a {vq_config.grid_size} x {vq_config.grid_size} grid (image_size "
                f"{vq_config.image_size} / 2 ** {vq_config.num_layers}) but the prior's positions are {grid} x {grid}."
            )
    else:
        vq_config.image_size = grid * vq_config.downsample_factor
    if vq_config.vocab_size != num_codes:
        raise ConversionError(f"the dVAE has {vq_config.vocab_size} codes but the prior {num_codes} image embeddings.")
    weight = hparams["loss_img_weight"]
    config = DalleConfig(
        vq_config=vq_config.to_dict(),
        text_vocab_size=num_text_tokens,
        text_seq_len=seq_len_text + 1,
        text_pad_token_id=0,
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=hparams["heads"],
        intermediate_size=4 * dim,
        hidden_act="gelu",
        glu=True,
        attention_types=attention_types,
        conv_kernel_size=CONV_LIKE_KERNEL_SIZE,
        attention_dropout=hparams["attn_dropout"],
        hidden_dropout=hparams["ff_dropout"],
        text_loss_weight=1 / (weight + 1),
        image_loss_weight=weight / (weight + 1),
        sandwich_norm=any(k.endswith("norm_out.weight") for k in keys.remaining()),
        layer_scale_init=0.1 if any(k.endswith(".scale") for k in keys.remaining()) else None,
        position_embedding_type="rotary" if rotary else "learned",
        shift_tokens=bool(hparams["shift_tokens"]),
    )

    state = {f"vqmodel.{k}": v for k, v in vae_state.items()}
    state["model.text_embeddings.weight"] = text_emb
    state["model.text_pad_embeddings.weight"] = torch.cat([text_emb[:1], text_emb[vocab_text:]])  # <bos>, pads
    state["model.image_embeddings.weight"] = image_emb
    if not rotary:
        state["model.text_position_embeddings.weight"] = text_pos
        state["model.image_position_embeddings.row.weight"] = axial[0].reshape(grid, dim)
        state["model.image_position_embeddings.col.weight"] = axial[1].reshape(grid, dim)
    state["model.norm.weight"], state["model.norm.bias"] = keys.pop("to_logits.0.weight"), keys.pop("to_logits.0.bias")
    state["lm_head.weight"], state["lm_head.bias"] = head_w, head_b

    # -- layers -----------------------------------------------------------------------------------------------------
    for i in range(depth):
        ours = f"model.layers.{i}."
        for j, branch in ((0, "1"), (1, "2")):
            src = f"transformer.layers.layers.{i}.{j}."
            for p in ("weight", "bias"):
                state[f"{ours}norm{branch}.{p}"] = _pop_suffix(keys, src, rf"norm\.{p}")
                if config.sandwich_norm:
                    state[f"{ours}norm{branch}_post.{p}"] = _pop_suffix(keys, src, rf"norm_out\.{p}")
            if config.layer_scale_init is not None:
                state[f"{ours}scale{branch}"] = _pop_suffix(keys, src, "scale").reshape(dim)
        src = f"transformer.layers.layers.{i}.0."
        qkv = _pop_suffix(keys, src, r"to_qkv\.weight")
        state[f"{ours}self_attn.qkv_proj.weight"] = qkv
        state[f"{ours}self_attn.qkv_proj.bias"] = torch.zeros(qkv.shape[0])  # DALLE-pytorch's to_qkv has no bias
        state[f"{ours}self_attn.out_proj.weight"] = _pop_suffix(keys, src, r"to_out\.0\.weight")
        state[f"{ours}self_attn.out_proj.bias"] = _pop_suffix(keys, src, r"to_out\.0\.bias")
        src = f"transformer.layers.layers.{i}.1."
        state[f"{ours}mlp.fc1.weight"] = _swap_halves(_pop_suffix(keys, src, r"net\.0\.weight"))
        state[f"{ours}mlp.fc1.bias"] = _swap_halves(_pop_suffix(keys, src, r"net\.0\.bias"))
        state[f"{ours}mlp.fc2.weight"] = _pop_suffix(keys, src, r"net\.3\.weight")
        state[f"{ours}mlp.fc2.bias"] = _pop_suffix(keys, src, r"net\.3\.bias")
    keys.finish()
    return config, state


# -- the original, for the parity check -------------------------------------------------------------------------------


@contextlib.contextmanager
def _stand_in_modules(names: list[str]):
    """Temporarily provide empty modules for imports that dalle-pytorch makes at import time but that the classes
    used here never call (its VQGAN wrapper, tokenizers, packaging metadata); removed again afterwards."""
    added = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            parts = name.split(".")
            for k in range(1, len(parts) + 1):
                sub = ".".join(parts[:k])
                if sub not in sys.modules:
                    module = types.ModuleType(sub)
                    module.__path__ = []
                    module.__getattr__ = lambda attr, sub=sub: type(attr, (), {"__module__": sub})
                    sys.modules[sub] = module
                    added.append(sub)
    try:
        yield
    finally:
        for sub in added:
            sys.modules.pop(sub, None)


def import_dalle_pytorch():
    """`dalle_pytorch` (the original package), or None when it (or a module its model code needs) is missing."""
    with _stand_in_modules(["pkg_resources", "omegaconf", "taming.models.vqgan", "youtokentome", "yaml", "tqdm"]):
        try:
            return importlib.import_module("dalle_pytorch")
        except ImportError:
            return None


def build_original_openai_vae(dalle_pytorch, vq):
    """DALLE-pytorch's `OpenAIDiscreteVAE` built from `dall_e`'s classes with the shapes of `vq` (its own
    `__init__` downloads OpenAI's weights); None without the `DALL-E` package."""
    try:
        import dall_e
    except ImportError:
        return None
    vae = dalle_pytorch.OpenAIDiscreteVAE.__new__(dalle_pytorch.OpenAIDiscreteVAE)
    torch.nn.Module.__init__(vae)
    common = dict(n_hid=vq.hidden_size, n_blk_per_group=vq.num_blocks_per_group, vocab_size=vq.vocab_size)
    vae.enc = dall_e.Encoder(**common)
    vae.dec = dall_e.Decoder(n_init=vq.decoder_init_channels, **common)
    vae.channels, vae.num_layers, vae.image_size, vae.num_tokens = 3, 3, vq.image_size, vq.vocab_size
    return vae


def original_pixels(vae, image_token_ids: torch.Tensor) -> torch.Tensor:
    """An original VAE's `decode` in the package's [-1, 1]: OpenAI's gives [0, 1] (`unmap_pixels`), DiscreteVAE's
    gives its `normalization`'s space."""
    out = vae.decode(image_token_ids)
    if not hasattr(vae, "normalization"):
        return out * 2 - 1
    mean, std = (torch.as_tensor(t, dtype=out.dtype).view(1, -1, 1, 1) for t in vae.normalization)
    return (out * std + mean) * 2 - 1


@torch.no_grad()
def check_vae_parity(vqmodel, vae, tolerance: float = 1e-4) -> dict[str, float]:
    """Codes of fixed images (`encode` vs the original's `get_codebook_indices` of the same images in [0, 1]) and
    decoded pixels of those codes."""
    size = vqmodel.config.image_size
    pixels = torch.rand(2, vqmodel.config.num_channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    codes = vqmodel.encode(pixels)
    same = torch.equal(codes, vae.get_codebook_indices((pixels + 1) / 2))
    print(f"parity VAE codes: {'identical' if same else 'DIFFERENT'}")
    delta = max_abs_diff(vqmodel.decode(codes), original_pixels(vae, codes))
    report_parity("decoded pixels", delta, tolerance)
    return {"decoded pixels": delta, "tokens_identical": float(same)}


def build_original(checkpoint: dict, hparams: dict, config: DalleConfig):
    """The original DALLE-pytorch model with the checkpoint's weights; None when the packages are missing."""
    dalle_pytorch = import_dalle_pytorch()
    if dalle_pytorch is None:
        return None
    if isinstance(config.vq_config, DallePytorchDVAEConfig):
        vae = dalle_pytorch.DiscreteVAE(**checkpoint["vae_params"])
    else:
        vae = build_original_openai_vae(dalle_pytorch, config.vq_config)
        if vae is None:
            return None
    kwargs = {k: v for k, v in hparams.items() if k != "vae"}
    original = dalle_pytorch.DALLE(vae=vae, **kwargs)
    weights = {k: v for k, v in checkpoint["weights"].items() if k != "logits_mask"}  # persistent in old releases
    original.load_state_dict(weights)
    return original.eval()


@torch.no_grad()
def original_greedy(original, text: torch.Tensor, num_tokens: int, guidance_scale: float = 1.0) -> torch.Tensor:
    """Greedy image tokens from the original's own forward (no cache): argmax of the last position's logits, guided
    as its `generate_images(cond_scale=...)` guides them (against the caption dropped to all padding)."""
    image = text.new_zeros(text.shape[0], 0)
    for _ in range(num_tokens):
        logits = original.forward_with_cond_scale(text.clone(), image, cond_scale=guidance_scale)[:, -1]
        image = torch.cat([image, logits.argmax(-1, keepdim=True) - original.num_text_tokens], dim=1)
    return image


@torch.no_grad()
def check_parity(model: DalleForConditionalGeneration, original, tolerance: float = 1e-4) -> dict[str, float]:
    """Logits of a fixed (text, image) pair and the greedy image tokens of a fixed text, against the original."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    length = config.text_seq_len - 1
    vocab_text = config.text_vocab_size - length
    text = torch.randint(1, vocab_text, (2, length), generator=generator)
    text[0, length // 2 :] = 0  # padding, which DALLE-pytorch turns into per-position pad tokens
    codes = torch.randint(0, config.image_vocab_size, (2, config.num_image_tokens), generator=generator)
    ref = original(text.clone(), codes.clone())  # (B, L + N, V + L + K): the last image token is not fed
    ids = torch.cat([torch.zeros(2, 1, dtype=torch.long), text, codes + config.text_vocab_size], dim=1)
    logits = model(ids, use_cache=False).logits[:, : ref.shape[1]]
    deltas = {"logits": max_abs_diff(logits, ref)}
    report_parity("logits", deltas["logits"], tolerance)
    ours = model.sample_image_tokens(ids[:, : config.text_seq_len], do_sample=False)
    same = torch.equal(ours, original_greedy(original, text, config.num_image_tokens))
    # guided: DALLE-pytorch's unconditional branch is the caption dropped to all padding, i.e. ids [0, 0, ..., 0]
    empty = torch.zeros(1, config.text_seq_len, dtype=torch.long)
    guided = model.sample_image_tokens(ids[:, : config.text_seq_len], empty, guidance_scale=3.0, do_sample=False)
    same_guided = torch.equal(guided, original_greedy(original, text, config.num_image_tokens, guidance_scale=3.0))
    print(f"parity greedy tokens: {'identical' if same else 'DIFFERENT'}; guided (s=3): ", end="")
    print("identical" if same_guided else "DIFFERENT")
    vae = check_vae_parity(model.vqmodel, original.vae, tolerance)
    deltas["decoded pixels"] = vae["decoded pixels"]
    deltas["tokens_identical"] = float(same and same_guided and vae["tokens_identical"])
    return deltas


def convert(
    checkpoint_path,
    output_dir=None,
    check: bool = True,
    push_to_hub_repo: str | None = None,
    license: str | None = None,
):
    """Convert, check parity (when dalle-pytorch and DALL-E are installed), save and optionally upload to the Hub
    repository `push_to_hub_repo` (created first, so a bad id or login fails before converting). Returns
    (model, parity)."""
    if push_to_hub_repo is not None and output_dir is None:
        raise ConversionError("--push-to-hub uploads the --output folder: pass --output too.")
    repo_id = create_hub_repo(push_to_hub_repo)
    checkpoint = load_torch_file(checkpoint_path, "DALLE-pytorch checkpoint")
    checkpoint = require_mapping(checkpoint, "the DALLE-pytorch checkpoint", ("hparams", "weights"))
    unknown = sorted(set(checkpoint) - {"hparams", "weights", "vae_class_name", "vae_params", *CHECKPOINT_DROPPED})
    if unknown:
        raise ConversionError(f"the DALLE-pytorch checkpoint has unknown entries {unknown}.")
    weights = tensors_only(checkpoint["weights"], "checkpoint['weights']")
    hparams = read_hparams(checkpoint)
    vae_class_name = checkpoint.get("vae_class_name")
    if vae_class_name is None:  # releases before `vae_class_name`: tell the VAE by its keys
        vae_class_name = "OpenAIDiscreteVAE" if any(k.startswith("vae.enc.") for k in weights) else "DiscreteVAE"
    attention_types = check_supported(hparams, weights, vae_class_name)
    vae_params = checkpoint.get("vae_params")
    config, state = convert_weights(weights, hparams, attention_types, vae_class_name, vae_params)
    model = DalleForConditionalGeneration(config).eval()
    load_converted(model, state, "DalleForConditionalGeneration")
    print(
        f"converted: {config.num_hidden_layers} layers x {config.hidden_size}, text {config.text_seq_len - 1} "
        f"(+<bos>) x {config.text_vocab_size - config.text_seq_len + 1} ids, image "
        f"{config.image_grid_size}x{config.image_grid_size} x {config.image_vocab_size} codes"
    )
    parity = None
    if check:
        original = build_original(checkpoint, hparams, config)
        if original is None:
            print("parity: skipped (install `dalle-pytorch` and `DALL-E` to compare against the original)")
        else:
            parity = check_parity(model, original)
            require_parity(parity)
    if output_dir is not None:
        output_dir = Path(output_dir)
        model.save_pretrained(output_dir)
        write_model_card(
            output_dir,
            "Converted from a DALLE-pytorch checkpoint",
            f"""
A DALLE-pytorch model ({config.num_hidden_layers} layers, width {config.hidden_size}, attention
{sorted(set(config.attention_types))}) with OpenAI's dVAE, as `hf_t2i.DalleForConditionalGeneration`, converted with
`conversion_scripts/convert_dalle_pytorch_to_hf.py` of hf_t2i.

Text input: `[0, *ids]` where `ids` are the original tokenizer's ids padded with 0 to {config.text_seq_len - 1}
(DALLE-pytorch's <bos> and padding convention). The tokenizer is not part of the checkpoint and is not converted.

Parity with the original (float32): {parity if parity is not None else "not measured"}.
""",
            tags=TAGS,
            license=license,
            repo_id=repo_id,
        )
        print(f"saved to {output_dir}")
        if repo_id is not None:
            push_to_hub(output_dir, repo_id, "a DALLE-pytorch checkpoint", tags=TAGS, license=license)
    return model, parity


def convert_vae(
    checkpoint_path,
    output_dir=None,
    check: bool = True,
    push_to_hub_repo: str | None = None,
    license: str | None = None,
):
    """Convert the `vae.pt` of DALLE-pytorch's `train_vae.py` (`{'hparams', 'weights'}` of a `DiscreteVAE`) to a
    [`DallePytorchDVAE`], check parity (codes and decoded pixels, when dalle-pytorch is installed), save and
    optionally upload. Returns (model, parity)."""
    if push_to_hub_repo is not None and output_dir is None:
        raise ConversionError("--push-to-hub uploads the --output folder: pass --output too.")
    repo_id = create_hub_repo(push_to_hub_repo)
    checkpoint = load_torch_file(checkpoint_path, "DALLE-pytorch VAE checkpoint")
    checkpoint = require_mapping(checkpoint, "the DALLE-pytorch VAE checkpoint", ("hparams", "weights"))
    unknown = sorted(set(checkpoint) - {"hparams", "weights"})
    if unknown:
        raise ConversionError(f"the DALLE-pytorch VAE checkpoint has unknown entries {unknown}.")
    config = discrete_vae_config(checkpoint["hparams"])
    keys = KeyConsumer(tensors_only(checkpoint["weights"], "checkpoint['weights']"), "checkpoint['weights']")
    state = pop_discrete_vae(keys, "")
    keys.finish()
    model = DallePytorchDVAE(config).eval()
    load_converted(model, state, "DallePytorchDVAE")
    print(
        f"converted: DiscreteVAE {config.image_size} px -> {config.grid_size}x{config.grid_size} x "
        f"{config.vocab_size} codes ({config.num_layers} layers, {config.num_resnet_blocks} residual blocks)"
    )
    parity = None
    if check:
        dalle_pytorch = import_dalle_pytorch()
        if dalle_pytorch is None:
            print("parity: skipped (install `dalle-pytorch` to compare against the original)")
        else:
            original = dalle_pytorch.DiscreteVAE(**checkpoint["hparams"])
            original.load_state_dict(checkpoint["weights"])
            parity = check_vae_parity(model, original.eval())
            require_parity(parity)
    if output_dir is not None:
        output_dir = Path(output_dir)
        model.save_pretrained(output_dir)
        write_model_card(
            output_dir,
            "Converted from a DALLE-pytorch DiscreteVAE",
            f"""
DALLE-pytorch's own discrete VAE (`train_vae.py`'s `vae.pt`: {config.image_size} px, {config.num_layers} layers,
{config.num_resnet_blocks} residual blocks, {config.vocab_size} codes) as `hf_t2i.DallePytorchDVAE`, converted with
`conversion_scripts/convert_dalle_pytorch_to_hf.py --vae-checkpoint` of hf_t2i. Pixels are in [-1, 1]; the original's
normalisation (mean {config.normalization_mean}, std {config.normalization_std} of [0, 1] images) is in the config.

Parity with the original (float32): {parity if parity is not None else "not measured"}.
""",
            tags=TAGS,
            license=license,
            repo_id=repo_id,
        )
        print(f"saved to {output_dir}")
        if repo_id is not None:
            push_to_hub(output_dir, repo_id, "a DALLE-pytorch DiscreteVAE", tags=TAGS, license=license)
    return model, parity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="DALLE-pytorch checkpoint (dalle.pt of train_dalle.py)")
    source.add_argument("--vae-checkpoint", help="a DiscreteVAE alone (vae.pt of train_vae.py)")
    parser.add_argument("--output", required=True, help="output folder (save_pretrained layout)")
    parser.add_argument("--skip-parity", action="store_true", help="do not compare against the original")
    add_hub_arguments(parser)  # DALLE-pytorch checkpoints are the user's own: no default license is known
    args = parser.parse_args(argv)
    run = convert if args.checkpoint is not None else convert_vae
    run(args.checkpoint or args.vae_checkpoint, args.output, not args.skip_parity, args.push_to_hub, args.license)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
