"""Stock `model.generate()` for the raster image priors (DALL-E, Parti): one whole image per call, guidance included.

transformers' `generate()` needs three things from an image prior that it cannot guess:

- How long an image is. [`image_generation_config`] builds the model's `generation_config` from its config (saved as
  generation_config.json): `max_new_tokens = num_image_tokens`, sampling at temperature 1 with no top-k / top-p
  filtering (`hf-t2i export --default-temperature` stores another; the pipelines and `sample_image_tokens` resolve
  unset settings from it as `generate()` does, `image_sampling_config`), and no `eos_token_id` / `pad_token_id`: an
  image has no end token, so nothing stops a generation before its last image token (`min_new_tokens`, which only
  holds an end token back, is not needed and would warn when a caller asks for part of an image). An id there would
  not be harmless either: transformers reads DALL-E's caption pads, learned inputs that are never masked, as
  right-padding to warn about and to mask.
- Which ids are image codes. The models restrict their logits themselves (DALL-E's joint text + image vocabulary,
  Parti's start token), so every token sampled at an image position is an image code.
- How to guide. `generate(guidance_scale=s)` in transformers 5 adds `UnbatchedClassifierFreeGuidanceLogitsProcessor`
  for every model: it runs the unconditional branch as a decoder-only language model call
  `model(negative_prompt_ids, attention_mask=..., cache=...)` (default prompt: the last prompt token) and reads
  `logits` / `cache` from its output. That fits neither prior: Parti is an encoder-decoder (the call has no
  `decoder_input_ids`), one token is no DALL-E prefix (its text context is always `text_seq_len` long), and the
  output is a tuple when `config.return_dict` is False. [`ImageGenerationMixin.generate`] replaces it with
  [`ImageGuidanceLogitsProcessor`], which runs the unconditional branch through the model's own image-generation
  protocol (`prepare_image_generation` + `image_generation_step` on the negative caption, with its own KV cache) and
  guides the raw image-code logits as the package's loop does ([`ClassifierFreeGuidance.combine`]; transformers
  combines log-softmaxes instead, which differs by a constant per row). Greedy `generate()` and
  `sample_image_tokens(do_sample=False)` therefore draw the same codes, guided or not.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList

from .config import SAMPLING_SETTINGS, SamplingConfig
from .guidance import ClassifierFreeGuidance


def image_generation_config(num_image_tokens: int, **fields: Any) -> GenerationConfig:
    """The `generation_config` of a raster prior: a bare `model.generate(inputs)` draws exactly one image.

    Args:
        num_image_tokens: N, the image tokens of one image (`max_new_tokens = N`).
        fields: further `GenerationConfig` fields (Parti's `decoder_start_token_id`; the empty caption of guidance,
            `unconditional_input_ids` / `unconditional_attention_mask`).
    """
    return GenerationConfig(
        max_new_tokens=num_image_tokens,
        do_sample=True,
        temperature=1.0,
        top_k=0,  # transformers' global default is 50; the pipelines filter nothing unless asked
        top_p=1.0,
        eos_token_id=None,  # no end token: every image is N tokens long
        pad_token_id=None,
        **fields,
    )


class ImageGuidanceLogitsProcessor(LogitsProcessor):
    """Classifier-free guidance of the image-code logits inside `generate()`, the unconditional branch run beside it.

    One instance serves one `generate()` call: it keeps the unconditional branch's state (its KV cache) and expects to
    be called once per image token, in order.

    Args:
        guidance: the scale and schedule (progress `i / (N - 1)` at image token `i`, as [`AutoregressiveDecoder`]).
        unconditional_step: `step(previous) -> (R, image_vocab_size)` logits of the unconditional branch: its prefix
            when `previous` is None, else after the (R, 1) image codes drawn last.
        num_image_tokens: N.
        image_token_offset: the id of image code 0 in `generate()`'s vocabulary (DALL-E: `text_vocab_size`; Parti: 0).
        image_vocab_size: codes in the codebook.
    """

    def __init__(
        self,
        guidance: ClassifierFreeGuidance,
        unconditional_step: Callable[[torch.Tensor | None], torch.Tensor],
        num_image_tokens: int,
        image_token_offset: int,
        image_vocab_size: int,
    ):
        self.guidance = guidance
        self.unconditional_step = unconditional_step
        self.num_image_tokens = num_image_tokens
        self.codes = slice(image_token_offset, image_token_offset + image_vocab_size)
        self.prompt_length: int | None = None
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """input_ids: (R, prompt + i) the sequences so far; scores: (R, V) logits of image token i."""
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        i = input_ids.shape[1] - self.prompt_length
        if i != self.steps:
            raise ValueError(
                f"{type(self).__name__} guides one generate() call one image token at a time (token {self.steps} "
                f"expected, got {i}); build a new one for each call."
            )
        previous = None if i == 0 else input_ids[:, -1:] - self.codes.start  # (R, 1) image codes
        unconditional = self.unconditional_step(previous).to(scores.dtype)  # (R, image_vocab)
        progress = i / (self.num_image_tokens - 1) if self.num_image_tokens > 1 else 1.0
        doubled = torch.cat([scores[:, self.codes], unconditional])  # (2R, image_vocab): conditional rows first
        guided = scores.clone()
        guided[:, self.codes] = self.guidance.combine(doubled, self.guidance.scale_at(progress))
        self.steps += 1
        return guided


class ImageGenerationMixin(GenerationMixin):
    """transformers' `GenerationMixin` for raster priors, with classifier-free guidance that works (see the module
    docstring): `generate(..., guidance_scale=s)` guides against `negative_prompt_ids` (and, for models with a text
    encoder, `negative_prompt_attention_mask`), by default the empty caption stored in the `generation_config` as
    `unconditional_input_ids` / `unconditional_attention_mask` (lists of ints: the processor's encoding of ''; a
    `GenerationConfig` refuses fields named like `generate()`'s arguments).

    A model using it implements the [`ImageGenerator`] protocol and:
    - `image_token_offset`: the id of image code 0 in its LM head's vocabulary;
    - `unconditional_image_step(negative_prompt_ids, negative_prompt_attention_mask) -> step`: the unconditional
      branch of guidance, `step(previous_codes | None) -> (R, image_vocab_size)` logits;
    - `check_generate_inputs(input_ids, guided, kwargs)`: its checks of `generate()`'s prompt and arguments.
    """

    image_token_offset: int

    def unconditional_image_step(
        self, negative_prompt_ids: torch.Tensor, negative_prompt_attention_mask: torch.Tensor | None
    ) -> Callable[[torch.Tensor | None], torch.Tensor]:
        raise NotImplementedError

    def check_generate_inputs(self, input_ids: torch.Tensor | None, guided: bool, kwargs: dict[str, Any]) -> None:
        """Raise a `ValueError` for a prompt (or another `generate()` argument) that cannot give one image."""

    def store_unconditional_caption(self, processor) -> None:
        """Store `processor`'s encoding of the empty caption in `generation_config` (`unconditional_input_ids`, and
        `unconditional_attention_mask` for an encoder-decoder, whose text encoder masks pads; a decoder-only prior's pads
        are learned tokens), so that `generate(..., guidance_scale=s)` guides without `negative_prompt_ids` once saved."""
        empty = processor(text=[""], return_tensors="pt")
        self.generation_config.unconditional_input_ids = empty["input_ids"][0].tolist()
        if self.config.is_encoder_decoder and "attention_mask" in empty:
            self.generation_config.unconditional_attention_mask = empty["attention_mask"][0].tolist()

    def _generation_setting(self, name: str, generation_config: GenerationConfig | None, kwargs: dict, default=None):
        """A generation setting as `generate()` resolves it: its keyword, else the given config, else the model's."""
        for source in (kwargs, vars(generation_config) if generation_config is not None else {}):
            if source.get(name) is not None:
                return source[name]
        value = getattr(self.generation_config, name, None)
        return default if value is None else value

    def image_sampling_config(
        self,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        do_sample: bool | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
    ) -> SamplingConfig:
        """One image call's settings (the pipelines and `sample_image_tokens`): each sampling setting left None is
        resolved as `generate()` resolves it, from the model's `generation_config` (generation_config.json holds the
        temperature a checkpoint's card chose); transformers' "off" values there (top_k 0, top_p 1.0) mean no filter."""
        given = dict(zip(SAMPLING_SETTINGS, (temperature, top_k, top_p, min_p, do_sample)))
        off = {"top_k": 0, "top_p": 1.0}  # in the generation config only: a call's top_k=0 stays an error
        stored = {name: self._generation_setting(name, None, {}) for name in given if given[name] is None}
        settings = {name: value for name, value in given.items() if value is not None}
        settings.update(
            {name: value for name, value in stored.items() if value is not None and value != off.get(name)}
        )
        return SamplingConfig(**settings, guidance_scale=guidance_scale, guidance_schedule=guidance_schedule)

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        *,
        negative_prompt_ids: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        guidance_schedule: str | None = None,
        **kwargs,
    ):
        """transformers' `generate()`; by default (the model's `generation_config`) it samples one whole image.

        Args:
            inputs: the prompt (DALL-E: the (B, text_seq_len) caption ids; Parti: the caption ids, with
                `attention_mask`), as in transformers.
            negative_prompt_ids, negative_prompt_attention_mask: (B or 1, S) the unconditional branch of guidance
                (default: the empty caption, `generation_config.unconditional_input_ids` /
                `unconditional_attention_mask`); used when `guidance_scale != 1`.
            guidance_schedule: "constant" (default) or "linear" (see [`ClassifierFreeGuidance`]).
            kwargs: any other `generate()` argument (`guidance_scale`, `do_sample`, `top_k`, `max_new_tokens`, ...).
        """
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        scale = self._generation_setting("guidance_scale", generation_config, kwargs, 1.0)
        schedule = guidance_schedule or self._generation_setting(
            "guidance_schedule", generation_config, {}, "constant"
        )
        guidance = ClassifierFreeGuidance(scale, schedule)
        self.check_generate_inputs(input_ids, guidance.enabled, kwargs)
        if not guidance.enabled:
            return super().generate(inputs, generation_config, logits_processor, **kwargs)

        # the unconditional branch: one row per sequence generate() runs (prompts x num_return_sequences)
        if self._generation_setting("num_beams", generation_config, kwargs, 1) > 1:
            raise ValueError("`guidance_scale` works with sampling or greedy decoding; pass `num_beams=1`.")
        if input_ids is None:
            raise ValueError("Guided `generate()` needs the prompt as `input_ids` (or `inputs`).")
        repeats = self._generation_setting("num_return_sequences", generation_config, kwargs, 1)
        negative = {}
        for name, value, stored in (
            ("negative_prompt_ids", negative_prompt_ids, "unconditional_input_ids"),
            ("negative_prompt_attention_mask", negative_prompt_attention_mask, "unconditional_attention_mask"),
        ):
            if value is None:
                value = self._generation_setting(stored, generation_config, {})
            if value is None:
                negative[name] = None
                continue
            value = torch.as_tensor(value, dtype=torch.long, device=input_ids.device)
            value = value[None] if value.ndim == 1 else value
            if value.ndim != 2 or value.shape[0] not in (1, input_ids.shape[0]):
                raise ValueError(
                    f"`{name}` must be (1 or {input_ids.shape[0]}, length): one row for every prompt or one for all, "
                    f"got shape {tuple(value.shape)}."
                )
            negative[name] = value.expand(input_ids.shape[0], -1).repeat_interleave(repeats, dim=0)
        if negative["negative_prompt_ids"] is None:
            raise ValueError(
                f"`guidance_scale={scale}` needs the unconditional caption: pass `negative_prompt_ids` (the "
                "processor's encoding of '', or of a negative prompt; with its `negative_prompt_attention_mask` for a "
                "model with a text encoder), or store it as `model.generation_config.unconditional_input_ids` (and "
                "`unconditional_attention_mask`)."
            )
        guide = ImageGuidanceLogitsProcessor(
            guidance,
            self.unconditional_image_step(**negative),
            self.config.num_image_tokens,
            self.image_token_offset,
            self.config.image_vocab_size,
        )
        logits_processor = LogitsProcessorList([guide, *(logits_processor or [])])
        # the guidance above replaces transformers' own (UnbatchedClassifierFreeGuidanceLogitsProcessor)
        if generation_config is not None:
            generation_config = copy.deepcopy(generation_config)
            generation_config.guidance_scale = 1.0
        if generation_config is None or "guidance_scale" in kwargs:
            kwargs["guidance_scale"] = 1.0
        return super().generate(inputs, generation_config, logits_processor, **kwargs)


__all__ = ["ImageGenerationMixin", "ImageGuidanceLogitsProcessor", "image_generation_config"]
