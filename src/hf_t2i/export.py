"""Export a trained pipeline folder as a small shippable checkpoint (`hf-t2i export`), the way the folders under
`hf_t2i/shipped/` (listed in `hf_t2i.checkpoints`) are made from a recipe's `final/` export.

It loads and saves whole pipelines, so it sits above `hf_t2i.pipelines`; `hf_t2i.checkpoints`, which only names the
shipped folders, stays free of them.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil

import torch

from .generation import SamplingConfig
from .generation.stock_generate import ImageGenerationMixin
from .hub import CARD_NAME, REPORT_NAME, write_model_card
from .modeling_utils import write_json_atomically
from .pipelines import T2IPipeline


def set_compute_dtype(folder: str | os.PathLike, dtype: str = "float32") -> list[str]:
    """Set the top-level `"dtype"` of every transformers `config.json` under `folder` (stored weights keep their
    precision; loading casts them). Returns the configs changed."""
    changed = []
    for root, _, files in os.walk(folder):
        if "config.json" not in files:
            continue
        path = os.path.join(root, "config.json")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        if config.get("dtype", dtype) != dtype:
            config["dtype"] = dtype
            write_json_atomically(path, config, sort_keys=True)
            changed.append(path)
    return changed


#: parameter-name prefixes of an image tokenizer's decoding half (DalleDVAE, ViTVQGAN: `decoder`; diffusers
#: AutoencoderKL: `post_quant_conv` then `decoder`); the rest (encoder, codebook) decides the codes a prior learned
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


def replace_image_decoder(
    model: torch.nn.Module, tokenizer_path: str | os.PathLike, stored_dtype: torch.dtype | None = None
) -> str:
    """Load the image tokenizer folder `tokenizer_path` into the tokenizer nested in `model` (a prior), after checking
    that the two encode alike: the same config (`config_differences`) and every parameter outside the decoder
    (`DECODER_PREFIXES`) equal, as after a decoder-only fine-tune (`hf-t2i train vit_vqgan|dalle_dvae
    --no-train-encoder`), so the prior's tokens decode through the new decoder. A decoder of other sizes (the
    tokenizer config's `decoder_settings`, e.g. Parti's larger decoder: `ViTVQGAN.with_decoder`) replaces the nested
    tokenizer, and its config the prior's sub-config. Returns the nested tokenizer's attribute name; raises a
    `ValueError` naming `image_tokenizer` otherwise.

    With `stored_dtype` (the dtype the caller saves the weights in) "equal" means equal once stored in it: a
    float16 folder's encoder is the float32 one it was exported from rounded, so the decoder fine-tuned from that
    float32 tokenizer still fits it, and the folder written keeps the encoder it had, byte for byte."""
    from .models.image_tokenizers import config_differences, load_image_tokenizer

    tokenizer = load_image_tokenizer(tokenizer_path)
    path = os.fspath(tokenizer_path)
    nested = [(name, child) for name, child in model.named_children() if type(child) is type(tokenizer)]
    if len(nested) != 1:
        raise ValueError(
            f"`image_tokenizer` ({path!r}) is a {type(tokenizer).__name__}, but {type(model).__name__} nests "
            f"{len(nested)} of that class; pass a tokenizer of the kind the prior was trained on."
        )
    name, current = nested[0]
    decoder_settings = getattr(current.config, "decoder_settings", ())
    differing = config_differences(tokenizer, current)  # equal configs of one class: the same parameter shapes
    resized = [setting for setting in differing if setting in decoder_settings]
    fixed = [setting for setting in differing if setting not in decoder_settings]
    if fixed:
        raise ValueError(
            f"`image_tokenizer` ({path!r}) has other settings than the folder's `{name}` ({fixed} differ), so its "
            "codes or latents would be read otherwise; pass a fine-tune of that tokenizer, which keeps them."
        )
    ours, theirs = dict(current.named_parameters()), dict(tokenizer.named_parameters())
    compare_dtype = stored_dtype or torch.float32
    changed = [
        key
        for key in ours
        if not key.startswith(DECODER_PREFIXES)
        and not torch.equal(ours[key].detach().to(compare_dtype), theirs[key].detach().to(compare_dtype))
    ]
    if changed:
        raise ValueError(
            f"`image_tokenizer` ({path!r}) does not encode as the folder's `{name}`: {len(changed)} parameters outside "
            f"the decoder differ (first: {changed[0]}), so the prior's tokens would mean other images. Fine-tune the "
            "decoder alone (`hf-t2i train vit_vqgan|dalle_dvae --pretrained-model-name-or-path ... --no-train-encoder`)."
        )
    if not resized:
        current.load_state_dict(tokenizer.state_dict())
        return name
    # a decoder of other sizes (Parti's larger decoder): the tokenizer replaces the nested one, config included
    sub_config = [key for key, value in vars(model.config).items() if value is current.config]
    if len(sub_config) != 1:
        raise ValueError(
            f"`image_tokenizer` ({path!r}) has a decoder of other sizes ({resized}), but {type(model).__name__}'s "
            f"config does not hold the config of its `{name}` as one field, so the new sizes cannot be saved with it."
        )
    tokenizer.requires_grad_(False).to(device=current.device, dtype=current.dtype)
    tokenizer.config._name_or_path = current.config._name_or_path  # the folder records no local training path
    setattr(model.config, sub_config[0], tokenizer.config)
    setattr(model, name, tokenizer)
    return name


def load_upsampler(pipe, upsampler_path: str | os.PathLike) -> torch.nn.Module:
    """Load the `ViTVQGANUpsampler` folder `upsampler_path` (`hf-t2i train vit_vqgan_upsampler`) for `pipe`, after
    checking that it decodes the tokens `pipe`'s prior draws: `pipe` takes an `upsampler` (Parti), and the upsampler's
    token grid and codebook are those of the ViT-VQGAN nested in the prior (`ViTVQGANUpsampler.tokenizer_mismatch`).
    Raises a `ValueError` naming `upsampler` otherwise."""
    from .models.vit_vqgan import ViTVQGAN, ViTVQGANUpsampler

    path = os.fspath(upsampler_path)
    if "upsampler" not in getattr(pipe, "_optional_components", ()):
        raise ValueError(
            f"`upsampler` ({path!r}) is given, but {type(pipe).__name__} has no `upsampler` component (Parti's "
            "super-resolution stage); leave it out."
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"`upsampler` ({path!r}) is not a saved model folder (no config.json).")
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type != ViTVQGANUpsampler.config_class.model_type:
        raise ValueError(
            f"`upsampler` ({path!r}) holds a {model_type!r} model; pass the final/ folder of `hf-t2i train "
            "vit_vqgan_upsampler`."
        )
    upsampler = ViTVQGANUpsampler.from_pretrained(path, dtype=torch.float32).eval()
    nested = [child for child in pipe.model.children() if isinstance(child, ViTVQGAN)]
    if len(nested) != 1:
        raise ValueError(
            f"`upsampler` ({path!r}) decodes ViT-VQGAN tokens, but {type(pipe.model).__name__} nests "
            f"{len(nested)} ViT-VQGAN tokenizers."
        )
    mismatch = upsampler.tokenizer_mismatch(nested[0])
    if mismatch:
        raise ValueError(
            f"`upsampler` ({path!r}) would not decode the prior's tokens as the folder's tokenizer means them: "
            f"{mismatch}; train it on this tokenizer (`--tokenizer-path`)."
        )
    upsampler.config._name_or_path = ""  # the folder records no local training path
    return upsampler


def export_checkpoint(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    model_card: str | os.PathLike | None = None,
    dtype=None,
    *,
    eval_report: str | os.PathLike | dict | list | None = None,
    default_guidance_scale: float | None = None,
    default_guidance_interval: tuple[float, float] | None = None,
    default_temperature: float | None = None,
    rerank_scorer: str | os.PathLike | None = None,
    image_tokenizer: str | os.PathLike | None = None,
    upsampler: str | os.PathLike | None = None,
) -> str:
    """Copy a trained pipeline folder into a shippable one: weights stored in `dtype` (default float16, half the size),
    and a model card as the folder's README.md. The saved configs keep `"dtype": "float32"`, so every loader
    (`from_pretrained`, `pipeline("text-to-image")`, the Auto classes) computes in float32 unless asked otherwise:
    float16 arithmetic is slow or unsupported on CPUs. A prior with stock `generate()` support (DALL-E, Parti) also gets
    its processor's empty caption in its `generation_config`, so that `generate(..., guidance_scale=s)` needs no
    `negative_prompt_ids`.

    The card is `model_card` (a markdown file), else the README.md of `source` when it has one, else a new one; its
    metadata is completed by `hf_t2i.hub.write_model_card` (`library_name`, `pipeline_tag`, tags, license and the
    `model-index` results of `eval_report`, default `source`'s report.json), its text kept as written.

    `default_guidance_scale` (the scale the card's numbers were measured at) goes into model_index.json: the folder's
    pipeline, `hf-t2i generate` and `hf-t2i eval` then guide with it unless told otherwise. Without it the source's
    value (if any) is kept. `default_guidance_interval` (`(start, stop)`, the guided fractions of the denoising steps;
    pipelines with a `guidance_interval` argument: Transfusion, Fluid) goes there too, the same way.

    `default_temperature` (DALL-E and Parti: the sampling temperature the card's numbers were measured at) goes into
    the prior's generation_config.json, which its pipeline, `sample_image_tokens` and stock `generate()` read when a
    call sets no `temperature`.

    `rerank_scorer`, a `clip_scorer` recipe's folder, is stored in the folder as the pipeline's `scorer` and
    `scorer_processor` (DALL-E's reranking: `pipe(prompt, num_candidates=N)` then keeps the best of N). Only a pipeline
    with a `scorer` component takes one.

    `image_tokenizer`, a tokenizer folder whose encoder and codebook are those of the tokenizer nested in the prior
    once stored in `dtype` (a decoder-only fine-tune of it), replaces that tokenizer: the prior's tokens then decode
    through its decoder (`replace_image_decoder`).

    `upsampler`, a `vit_vqgan_upsampler` recipe's folder trained on the prior's tokenizer, is stored as Parti's
    super-resolution stage (`pipe(prompt, super_resolution=True)`, `hf-t2i generate --super-resolution`), checked
    by `load_upsampler` to decode the prior's tokens.

    This is how the checkpoints under `hf_t2i/shipped/` are made from a recipe's `final/` export, e.g.
    `hf-t2i export runs/dalle64/final src/hf_t2i/shipped/dalle-shapes --model-card model_cards/dalle-shapes.md
    --default-guidance-scale 2 --rerank-scorer runs/clip64/final` (the card has the commands that train both).
    """
    source, destination = os.fspath(source), os.fspath(destination)
    if not os.path.isfile(os.path.join(source, "model_index.json")):
        raise ValueError(f"`source` ({source}) is not a saved pipeline folder (no model_index.json).")
    if model_card is not None and not os.path.isfile(model_card):
        raise ValueError(f"`model_card` ({model_card}) does not exist.")
    pipe = T2IPipeline.from_pretrained(source)
    if (
        default_guidance_interval is not None
        and "guidance_interval" not in inspect.signature(pipe.__call__).parameters
    ):
        raise ValueError(
            f"`default_guidance_interval` ({default_guidance_interval!r}) is given, but {type(pipe).__name__} takes no "
            "`guidance_interval` (Transfusion and Fluid do); leave it out."
        )
    if default_temperature is not None:
        if not isinstance(pipe.model, ImageGenerationMixin):
            raise ValueError(
                f"`default_temperature` ({default_temperature!r}) is given, but {type(pipe.model).__name__} does not "
                "read a sampling temperature from its generation config (DALL-E and Parti do); leave it out."
            )
        SamplingConfig(temperature=default_temperature)  # raises, naming `temperature`, on a bad value
    if rerank_scorer is not None:
        if "scorer" not in getattr(pipe, "_optional_components", ()):
            raise ValueError(
                f"`rerank_scorer` ({os.fspath(rerank_scorer)!r}) is given, but {type(pipe).__name__} does not rerank "
                "(it has no `scorer` component); leave it out."
            )
        from .evaluation.clip_score import load_scorer

        scorer, scorer_processor = load_scorer(rerank_scorer, argument="rerank_scorer")
        pipe.register_modules(scorer=scorer, scorer_processor=scorer_processor)
    dtype = dtype or torch.float16
    if image_tokenizer is not None:
        replace_image_decoder(pipe.model, image_tokenizer, stored_dtype=dtype)
    if upsampler is not None:  # after a new decoder: the codebook checked is the one the folder keeps
        pipe.register_modules(upsampler=load_upsampler(pipe, upsampler))
    pipe.to(dtype=dtype)
    if isinstance(pipe.model, ImageGenerationMixin) and getattr(pipe, "processor", None) is not None:
        pipe.model.store_unconditional_caption(pipe.processor)  # stock generate() guides with it
    if default_guidance_scale is not None:
        pipe.register_default_guidance_scale(default_guidance_scale)
    if default_guidance_interval is not None:
        pipe.register_default_guidance_interval(default_guidance_interval)
    if default_temperature is not None:
        pipe.model.generation_config.temperature = float(default_temperature)
    pipe.save_pretrained(destination)
    set_compute_dtype(destination)
    card = model_card if model_card is not None else os.path.join(source, CARD_NAME)
    if os.path.isfile(card):
        shutil.copyfile(card, os.path.join(destination, CARD_NAME))
    if eval_report is None and os.path.isfile(os.path.join(source, REPORT_NAME)):
        eval_report = os.path.join(source, REPORT_NAME)
    write_model_card(destination, eval_report=eval_report)
    return destination


__all__ = ["export_checkpoint", "load_upsampler", "replace_image_decoder", "set_compute_dtype"]
