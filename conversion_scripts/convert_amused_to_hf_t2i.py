"""Convert an aMUSEd checkpoint (diffusers' `AmusedPipeline` folder: `transformer/` a `UVit2DModel`, `text_encoder/` a
`CLIPTextModelWithProjection`, `tokenizer/` its CLIP tokenizer, `vqvae/` a `VQModel`, `scheduler/` an
`AmusedScheduler`) to an hf_t2i `MusePipeline` folder (`MuseConfig(backbone="uvit", sampling_recipe="amused")`).

    python conversion_scripts/convert_amused_to_hf_t2i.py --checkpoint-path amused-256 --output-dir muse-amused-256

Key map (diffusers `UVit2DModel` -> `MuseForConditionalGeneration`; `B` = `model.backbone`, the U-ViT):

| diffusers                                       | hf_t2i                                     | note                 |
|-------------------------------------------------|--------------------------------------------|----------------------|
| embed.embeddings                                | model.token_embeddings                     | codes + mask row     |
| embed.layer_norm / embed.conv                   | B.embedding_norm / embedding_projection    | 1x1 conv -> Linear   |
| encoder_proj / encoder_proj_layer_norm          | B.text_projection / B.text_norm            |                      |
| cond_embed.linear_1 / linear_2                  | B.condition_mlp.0 / .2                     |                      |
| {down,up}_block.{down,up}sample.norm / .conv    | B.{down,up}_stage.resample_norm / _conv    |                      |
| {down,up}_block.res_blocks.i.depthwise / .norm  | B.{down,up}_stage.res_blocks.i.same        |                      |
| ...channelwise_linear_1 / _2                    | ...fc1 / fc2                               |                      |
| ...cond_embeds_mapper                           | ...modulation                              |                      |
| ...channelwise_norm.gamma / .beta               | ...response_norm.gamma / .beta             | (1,1,1,4C) -> (4C,)  |
| {down,up}_block.attention_blocks.i.kv_mapper    | B.{down,up}_stage.attentions.i.text_mapper |                      |
| ...norm{1,2} / attn{1,2}.to_q                   | ...norm{1,2} / attn{1,2}.q_proj            |                      |
| ...attn{1,2}.to_k + to_v / to_out.0             | ...attn{1,2}.kv_proj / out_proj            | k, v stacked         |
| project_to_hidden_norm / project_to_hidden      | B.input_norm / B.input_projection          |                      |
| transformer_layers.i.norm{1,2,3}.linear / .norm | B.layers.i.norm{1,2,3}.modulation / .norm  |                      |
| transformer_layers.i.attn1.to_q + to_k + to_v   | B.layers.i.self_attn.qkv_proj              | q, k, v stacked      |
| transformer_layers.i.attn2                      | B.layers.i.cross_attn                      | as the stages'       |
| transformer_layers.i.ff.net.0.proj / ff.net.2   | B.layers.i.mlp.fc1 / fc2                   | GEGLU halves swapped |
| project_from_hidden_norm / project_from_hidden  | B.output_norm / B.output_projection        |                      |
| mlm_layer.conv1 / layer_norm / conv2            | lm_head.dense / norm / projection          | 1x1 convs -> Linear  |

`text_encoder/` is nested as is (`model.text_encoder.model`), `vqvae/` as is (`vqmodel`, a `DiffusersVQConfig` with
`output_range=[0, 1]`, aMUSEd's pixel range, and `sample_size` set to the image size, which aMUSEd reads from the
transformer's `sample_size` times the VQ factor instead). The embedding rows between the codebook and the mask id
(aMUSEd rounds its vocabulary up to 8256) are never an input and are dropped.

Parity (on by default; `--skip-parity` to skip): diffusers' own `UVit2DModel`, `VQModel` and `AmusedPipeline` from
the same folder against the converted model on fixed prompts: the logits on half-masked codes, the codes
`AmusedPipeline` draws (`guidance_scale` 3, a few steps, a fixed seed) against `MusePipeline`'s, the decoded
pixels.

What does not map: an `AmusedScheduler` with `masking_schedule="linear"` (hf_t2i's masked decoding follows the
cosine schedule), a transformer with `downsample != upsample`, and LoRA / attention-processor options (an inference
setting of diffusers, not weights). Dropout sits after the attention projections and GEGLU activation in diffusers and
on the attention probabilities and MLP output here: the same function at inference (aMUSEd trains with none).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from conversion_utils import (
    ConversionError,
    KeyConsumer,
    add_hub_arguments,
    create_hub_repo,
    load_converted,
    max_abs_diff,
    push_to_hub,
    report_parity,
    run_main,
    write_model_card,
)


TAGS = ["amused", "muse"]
PROMPTS = ["a red circle left of a blue square", "a photo of a cat"]
MICRO_CONDITION_COUNT = 5  # width, height, crop top, crop left, aesthetic score


# -- reading the diffusers folder ------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConversionError(f"{what} not found: {path} (pass the folder `AmusedPipeline.save_pretrained` writes).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} must hold a JSON object.")
    return data


def load_transformer_state(folder: Path) -> dict[str, torch.Tensor]:
    """The `UVit2DModel` weights in float32, from safetensors only (no pickle is read)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    full = [f for f in files if f.name == "diffusion_pytorch_model.safetensors"]
    files = full or files
    if len(files) != 1:
        raise ConversionError(
            f"{folder} must hold one diffusers safetensors file (diffusion_pytorch_model.safetensors), found "
            f"{[f.name for f in files]}. A .bin checkpoint is not read: save it again with safe_serialization."
        )
    return {k: v.float() for k, v in load_file(files[0]).items()}


def read_checkpoint(path) -> dict:
    """The parts of an `AmusedPipeline` folder: transformer config and state, text encoder, tokenizer, VQ model and
    scheduler config."""
    from diffusers import VQModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    root = Path(path)
    if not root.is_dir():
        raise ConversionError(f"--checkpoint-path must be the folder of a saved AmusedPipeline, got {root}.")
    index = _read_json(root / "model_index.json", "model_index.json")
    if index.get("_class_name") != "AmusedPipeline":
        raise ConversionError(f"{root} holds a {index.get('_class_name')!r}, not an AmusedPipeline.")
    for part in ("transformer", "text_encoder", "tokenizer", "vqvae", "scheduler"):
        if not (root / part).is_dir():
            raise ConversionError(f"{root / part} is missing: an AmusedPipeline folder has {part}/.")
    return {
        "transformer_config": _read_json(root / "transformer" / "config.json", "transformer/config.json"),
        "transformer_state": load_transformer_state(root / "transformer"),
        "scheduler_config": _read_json(root / "scheduler" / "scheduler_config.json", "scheduler_config.json"),
        "text_encoder": CLIPTextModelWithProjection.from_pretrained(root / "text_encoder").float().eval(),
        "tokenizer": AutoTokenizer.from_pretrained(root / "tokenizer"),
        "vqvae": VQModel.from_pretrained(root / "vqvae").float().eval(),
    }


# -- config --------------------------------------------------------------------------------------------------------


def muse_config(parts: dict):
    """The `MuseConfig` of the checkpoint, after checking that its parts fit together and that nothing is set that
    hf_t2i does not compute."""
    from hf_t2i.models.image_tokenizers import DiffusersVQConfig
    from hf_t2i.models.muse import MuseConfig

    t, scheduler = parts["transformer_config"], parts["scheduler_config"]
    text_config, vq = parts["text_encoder"].config, parts["vqvae"].config
    if bool(t.get("downsample", False)) != bool(t.get("upsample", False)):
        raise ConversionError(
            f"transformer downsample={t.get('downsample')} but upsample={t.get('upsample')}: the logits would not be "
            "on the code grid; hf_t2i's U-ViT resamples both ways or neither."
        )
    if scheduler.get("masking_schedule", "cosine") != "cosine":
        raise ConversionError(
            f"the scheduler's masking_schedule is {scheduler.get('masking_schedule')!r}; hf_t2i's masked decoding "
            "follows the cosine schedule only."
        )
    codebook = t["codebook_size"]
    mask_id = scheduler["mask_token_id"]
    checks = [
        (vq.num_vq_embeddings == codebook, f"vqvae has {vq.num_vq_embeddings} codes, the transformer {codebook}"),
        (codebook <= mask_id < t["vocab_size"], f"mask_token_id {mask_id} is not in [{codebook}, {t['vocab_size']})"),
        (
            t["micro_cond_embed_dim"] == MICRO_CONDITION_COUNT * t["micro_cond_encode_dim"],
            f"micro_cond_embed_dim {t['micro_cond_embed_dim']} != 5 x micro_cond_encode_dim",
        ),
        (t["cond_embed_dim"] == text_config.projection_dim, "cond_embed_dim != the text encoder's projection_dim"),
        (t["encoder_hidden_size"] == text_config.hidden_size, "encoder_hidden_size != the text encoder's width"),
        (bool(vq.lookup_from_codebook), "the vqvae must look its codes up (lookup_from_codebook)"),
    ]
    for ok, problem in checks:
        if not ok:
            raise ConversionError(f"the checkpoint's parts do not fit together: {problem}.")
    factor = 2 ** (len(vq.block_out_channels) - 1)
    image_size = t["sample_size"] * factor
    vqmodel_config = {k: v for k, v in dict(vq).items() if not k.startswith("_")}
    vqmodel_config["sample_size"] = image_size  # hf_t2i reads the image size from the tokenizer
    return MuseConfig(
        vq_config=DiffusersVQConfig(vqmodel_config=vqmodel_config, output_range=[0.0, 1.0]),
        text_encoder_config=text_config.to_dict(),
        text_seq_len=parts["tokenizer"].model_max_length,
        text_vocab_size=text_config.vocab_size,
        backbone="uvit",
        hidden_size=t["hidden_size"],
        num_hidden_layers=t["num_hidden_layers"],
        num_attention_heads=t["num_attention_heads"],
        intermediate_size=t["intermediate_size"],
        layer_norm_eps=t["layer_norm_eps"],
        hidden_dropout=t.get("hidden_dropout", 0.0),
        embedding_size=t["in_channels"],
        conv_channels=t["block_out_channels"],
        num_res_blocks=t["num_res_blocks"],
        conv_attention_heads=t["block_num_heads"],
        downsample=bool(t.get("downsample", False)),
        micro_conditioning_size=t["micro_cond_encode_dim"],
        use_bias=bool(t["use_bias"]),
        norm_elementwise_affine=bool(t["ln_elementwise_affine"]),
        sampling_recipe="amused",
        num_inference_steps=12,  # AmusedPipeline's default
        choice_temperature=2.0,  # AmusedPipeline's default temperature (2, 0)
    )


# -- weights -------------------------------------------------------------------------------------------------------


def _take(keys: KeyConsumer, out: dict, src: str, dst: str, conv1x1: bool = False) -> None:
    """`src.weight` (and `src.bias` when present) -> `dst.*`; a 1x1 convolution's kernel becomes a Linear's weight."""
    weight = keys.pop(f"{src}.weight")
    out[f"{dst}.weight"] = weight[:, :, 0, 0] if conv1x1 else weight
    bias = keys.pop_optional(f"{src}.bias")
    if bias is not None:
        out[f"{dst}.bias"] = bias


def _norm(keys: KeyConsumer, out: dict, src: str, dst: str) -> None:
    """A norm's optional weight and bias (absent without elementwise affine)."""
    for p in ("weight", "bias"):
        tensor = keys.pop_optional(f"{src}.{p}")
        if tensor is not None:
            out[f"{dst}.{p}"] = tensor


def _stacked(keys: KeyConsumer, out: dict, sources: list[str], dst: str) -> None:
    """Separate projections (q, k, v) -> one fused Linear, in that order."""
    out[f"{dst}.weight"] = torch.cat([keys.pop(f"{s}.weight") for s in sources])
    biases = [keys.pop_optional(f"{s}.bias") for s in sources]
    if any(b is not None for b in biases):
        out[f"{dst}.bias"] = torch.cat(biases)


def _attention(keys: KeyConsumer, out: dict, src: str, dst: str, cross: bool) -> None:
    if cross:
        _take(keys, out, f"{src}.to_q", f"{dst}.q_proj")
        _stacked(keys, out, [f"{src}.to_k", f"{src}.to_v"], f"{dst}.kv_proj")
    else:
        _stacked(keys, out, [f"{src}.to_q", f"{src}.to_k", f"{src}.to_v"], f"{dst}.qkv_proj")
    _take(keys, out, f"{src}.to_out.0", f"{dst}.out_proj")


def _stage(keys: KeyConsumer, out: dict, src: str, dst: str, config, resample: str | None) -> None:
    if resample is not None:
        _norm(keys, out, f"{src}.{resample}sample.norm", f"{dst}.resample_norm")
        _take(keys, out, f"{src}.{resample}sample.conv", f"{dst}.resample_conv")
    for i in range(config.num_res_blocks):
        res, block = f"{src}.res_blocks.{i}", f"{dst}.res_blocks.{i}"
        _take(keys, out, f"{res}.depthwise", f"{block}.depthwise")
        _norm(keys, out, f"{res}.norm", f"{block}.norm")
        _take(keys, out, f"{res}.channelwise_linear_1", f"{block}.fc1")
        out[f"{block}.response_norm.gamma"] = keys.pop(f"{res}.channelwise_norm.gamma").reshape(-1)
        out[f"{block}.response_norm.beta"] = keys.pop(f"{res}.channelwise_norm.beta").reshape(-1)
        _take(keys, out, f"{res}.channelwise_linear_2", f"{block}.fc2")
        _take(keys, out, f"{res}.cond_embeds_mapper", f"{block}.modulation")
        att, attention = f"{src}.attention_blocks.{i}", f"{dst}.attentions.{i}"
        if f"{att}.kv_mapper.weight" in keys:
            _take(keys, out, f"{att}.kv_mapper", f"{attention}.text_mapper")
        for n in (1, 2):
            _norm(keys, out, f"{att}.norm{n}", f"{attention}.norm{n}")
            _attention(keys, out, f"{att}.attn{n}", f"{attention}.attn{n}", cross=True)


def convert_transformer_state(state: dict[str, torch.Tensor], config, mask_token_id: int) -> dict[str, torch.Tensor]:
    """The `UVit2DModel` state dict -> the prior's keys (without `model.text_encoder.*` and `vqmodel.*`)."""
    keys = KeyConsumer(state, "transformer")
    out: dict[str, torch.Tensor] = {}
    b = "model.backbone"
    embeddings = keys.pop("embed.embeddings.weight")
    codebook = config.image_vocab_size
    out["model.token_embeddings.weight"] = torch.cat(
        [embeddings[:codebook], embeddings[mask_token_id : mask_token_id + 1]]
    )
    _norm(keys, out, "embed.layer_norm", f"{b}.embedding_norm")
    _take(keys, out, "embed.conv", f"{b}.embedding_projection", conv1x1=True)
    _take(keys, out, "encoder_proj", f"{b}.text_projection")
    _norm(keys, out, "encoder_proj_layer_norm", f"{b}.text_norm")
    _take(keys, out, "cond_embed.linear_1", f"{b}.condition_mlp.0")
    _take(keys, out, "cond_embed.linear_2", f"{b}.condition_mlp.2")
    _stage(keys, out, "down_block", f"{b}.down_stage", config, "down" if config.downsample else None)
    _norm(keys, out, "project_to_hidden_norm", f"{b}.input_norm")
    _take(keys, out, "project_to_hidden", f"{b}.input_projection")
    for i in range(config.num_hidden_layers):
        src, dst = f"transformer_layers.{i}", f"{b}.layers.{i}"
        for n in (1, 2, 3):
            _take(keys, out, f"{src}.norm{n}.linear", f"{dst}.norm{n}.modulation")
            _norm(keys, out, f"{src}.norm{n}.norm", f"{dst}.norm{n}.norm")
        _attention(keys, out, f"{src}.attn1", f"{dst}.self_attn", cross=False)
        _attention(keys, out, f"{src}.attn2", f"{dst}.cross_attn", cross=True)
        proj = {p: keys.pop_optional(f"{src}.ff.net.0.proj.{p}") for p in ("weight", "bias")}
        for p, tensor in proj.items():  # diffusers' GEGLU: (value, gate) halves; hf_t2i's FeedForward: (gate, value)
            if tensor is not None:
                value, gate = tensor.chunk(2, dim=0)
                out[f"{dst}.mlp.fc1.{p}"] = torch.cat([gate, value])
        if proj["weight"] is None:
            keys.pop(f"{src}.ff.net.0.proj.weight")  # raises, naming the key
        _take(keys, out, f"{src}.ff.net.2", f"{dst}.mlp.fc2")
    _norm(keys, out, "project_from_hidden_norm", f"{b}.output_norm")
    _take(keys, out, "project_from_hidden", f"{b}.output_projection")
    _stage(keys, out, "up_block", f"{b}.up_stage", config, "up" if config.downsample else None)
    _take(keys, out, "mlm_layer.conv1", "lm_head.dense", conv1x1=True)
    _norm(keys, out, "mlm_layer.layer_norm", "lm_head.norm")
    _take(keys, out, "mlm_layer.conv2", "lm_head.projection", conv1x1=True)
    keys.finish()
    return out


def convert_model(parts: dict):
    """The `MuseForConditionalGeneration` of an aMUSEd folder (eval mode, float32)."""
    from hf_t2i.models.muse import MuseForConditionalGeneration

    config = muse_config(parts)
    model = MuseForConditionalGeneration(config)
    state = convert_transformer_state(parts["transformer_state"], config, parts["scheduler_config"]["mask_token_id"])
    state.update({f"model.text_encoder.model.{k}": v for k, v in parts["text_encoder"].state_dict().items()})
    state.update({f"vqmodel.{k}": v for k, v in parts["vqvae"].state_dict().items()})
    load_converted(model, state, "aMUSEd")
    return model.eval()


def build_pipeline(model, tokenizer):
    from hf_t2i import MusePipeline, MuseProcessor, T2IImageProcessor

    processor = MuseProcessor(T2IImageProcessor(image_size=model.config.image_size), tokenizer)
    return MusePipeline(model=model, processor=processor)


# -- parity --------------------------------------------------------------------------------------------------------


def check_parity(path, pipeline, steps: int = 3, guidance_scale: float = 3.0, seed: int = 0) -> dict[str, float]:
    """diffusers' own classes from `path` against the converted pipeline: logits, drawn codes, decoded pixels."""
    from diffusers import AmusedPipeline

    original = AmusedPipeline.from_pretrained(path, dtype=torch.float32)
    original.set_progress_bar_config(disable=True)
    pipeline.set_progress_bar_config(disable=True)
    model, parity = pipeline.model, {}
    with torch.no_grad():
        ids = original.tokenizer(
            PROMPTS,
            padding="max_length",
            max_length=original.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        encoded = original.text_encoder(ids, output_hidden_states=True)
        grid, codebook = model.config.image_grid_size, model.config.image_vocab_size
        generator = torch.Generator().manual_seed(seed)
        codes = torch.randint(0, codebook, (len(PROMPTS), grid * grid), generator=generator)
        mask = torch.rand(codes.shape, generator=generator) < 0.5
        inputs = codes.masked_fill(mask, original.scheduler.config.mask_token_id).view(-1, grid, grid)
        size = model.config.image_size
        micro = torch.tensor([size, size, 0, 0, 6.0]).expand(len(PROMPTS), -1)
        reference = original.transformer(
            inputs,
            micro_conds=micro,
            pooled_text_emb=encoded.text_embeds,
            encoder_hidden_states=encoded.hidden_states[-2],
        )  # (B, V, g, g)
        reference = reference.flatten(2).transpose(1, 2)  # (B, N, V)
        inputs = processor_inputs(pipeline, PROMPTS)
        logits = model(**inputs, image_token_ids=codes, mask=mask, return_loss=False).logits
        parity["transformer logits"] = max_abs_diff(logits, reference)
        expected = original(
            PROMPTS[0],
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            output_type="latent",
            generator=torch.Generator().manual_seed(seed),
        ).images.flatten(1)
        drawn = pipeline(
            PROMPTS[0],
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            output_type="latent",
            generator=torch.Generator().manual_seed(seed),
        ).images
        parity["tokens_identical"] = float(torch.equal(drawn, expected))
        vq = original.vqvae
        shape = (1, grid, grid, vq.config.latent_channels)
        pixels = vq.decode(expected, force_not_quantize=True, shape=shape).sample.clip(0, 1) * 2 - 1
        parity["decoded pixels"] = max_abs_diff(model.decode_image_tokens(expected), pixels)
    report_parity("transformer logits", parity["transformer logits"], 1e-4)
    same = "identical" if parity["tokens_identical"] else "DIFFERENT"
    print(f"parity codes drawn ({steps} steps, guidance {guidance_scale:g}, seed {seed}): {same}")
    report_parity("decoded pixels", parity["decoded pixels"], 1e-4)
    return parity


def processor_inputs(pipeline, prompts: list[str]) -> dict[str, torch.Tensor]:
    encoded = pipeline.processor(text=prompts)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


# -- entry points --------------------------------------------------------------------------------------------------


def convert(
    checkpoint_path,
    output_dir=None,
    check: bool = True,
    push_to_hub_repo: str | None = None,
    license: str | None = None,
) -> dict:
    """Convert an `AmusedPipeline` folder; returns {"pipeline", "parity"}. With `output_dir` the `MusePipeline` is
    saved there with its model card; with `push_to_hub_repo` it is uploaded (the repository is created first)."""
    if push_to_hub_repo is not None and output_dir is None:
        raise ConversionError("--push-to-hub uploads the converted folder: pass --output-dir too.")
    repo_id = create_hub_repo(push_to_hub_repo)
    parts = read_checkpoint(checkpoint_path)
    model = convert_model(parts)
    pipeline = build_pipeline(model, parts["tokenizer"])
    parity = check_parity(checkpoint_path, pipeline) if check else {}
    if output_dir is not None:
        save(pipeline, parity, Path(output_dir), license, repo_id)
    failed = [k for k, v in parity.items() if k != "tokens_identical" and v > 1e-4]
    if failed or parity.get("tokens_identical") == 0.0:
        raise ConversionError(f"the converted model does not match diffusers' aMUSEd ({failed or 'drawn codes'}).")
    if repo_id is not None:
        push_to_hub(output_dir, repo_id, "aMUSEd (diffusers AmusedPipeline)", tags=TAGS, license=license)
    return {"pipeline": pipeline, "parity": parity}


def save(pipeline, parity: dict, output_dir: Path, license: str | None, repo_id: str | None) -> None:
    pipeline.save_pretrained(output_dir)
    c = pipeline.model.config
    body = f"""
Converted with `conversion_scripts/convert_amused_to_hf_t2i.py` of hf_t2i from a diffusers `AmusedPipeline` folder: a
`MuseForConditionalGeneration` with `backbone="uvit"` (aMUSEd's U-ViT: {c.num_hidden_layers} transformer layers of
width {c.hidden_size}, {c.num_res_blocks} ConvNeXt blocks per stage of width {c.conv_channels}, downsample
{c.downsample}), its CLIP text encoder with projection and its VQ-GAN (a diffusers `VQModel`, {c.image_vocab_size}
codes, {c.image_size} px, a {c.image_grid_size} x {c.image_grid_size} grid).

Generation follows aMUSEd's `AmusedScheduler` (`sampling_recipe="amused"`): the same seed draws the same codes as
diffusers' `AmusedPipeline` with the same number of steps and guidance scale (`guidance_scale` > 1; aMUSEd's default
is 10, `MusePipeline`'s 1).

Parity with diffusers (max |delta|, float32; codes drawn: 1.0 = identical): {parity or "not measured"}.
"""
    write_model_card(output_dir, "Converted from aMUSEd", body, tags=TAGS, license=license, repo_id=repo_id)
    print(f"saved to {output_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--checkpoint-path", required=True, help="folder of a diffusers AmusedPipeline (save_pretrained layout)"
    )
    parser.add_argument("--output-dir", required=True, help="output folder (a MusePipeline)")
    parser.add_argument("--skip-parity", action="store_true", help="do not compare against diffusers' classes")
    add_hub_arguments(parser)
    args = parser.parse_args(argv)
    convert(args.checkpoint_path, args.output_dir, not args.skip_parity, args.push_to_hub, args.license)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
