"""Processor of Transfusion: a text tokenizer with `<boi>`, `<eoi>` and `<image>` special tokens + the shared image
processor. It writes every sequence layout the model reads:

    image_generation_inputs(prompts)   <s> prompt </s> <boi>                       (left-padded; text -> image)
    __call__(images=..., text=...)     <s> <boi> <image> x N <eoi> text            (left-padded; captioning, the
                                                                                    image-text-to-text convention)
    __call__(text=...)                 <s> text                                    (left-padded; continuation)
    build_training_batch(...)          <s> caption </s> <boi> <image> x N <eoi>    (right-padded, with labels)
                                       <s> <boi> <image> x N <eoi> caption </s>    (image first: captioning)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

# diffusers finds a component's loading method by looking its base class up in the component's module, so the base
# must be importable from here for `TransfusionPipeline.from_pretrained` to load the processor.
from transformers import BatchFeature, ProcessorMixin  # noqa: F401

from ...processing_utils import T2IProcessor, as_prompt_list


BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN = "<boi>", "<eoi>", "<image>"
IMAGE_SPECIAL_TOKENS = (BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN)


def add_image_tokens(tokenizer):
    """A copy of `tokenizer` with `<boi>`, `<eoi>` and `<image>` added as special tokens (those it lacks)."""
    tokenizer = copy.deepcopy(tokenizer)
    missing = [t for t in IMAGE_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer


class TransfusionProcessor(T2IProcessor):
    """Tokenizer + [`T2IImageProcessor`] writing Transfusion's interleaved sequences.

    Args:
        image_processor: a [`T2IImageProcessor`] at the model's `image_size`.
        tokenizer: a tokenizer with `<boi>`, `<eoi>`, `<image>` tokens (see `add_image_tokens`), a pad token, and
            `model_max_length` = the longest caption in tokens.
        num_image_tokens: patches per image, N (the model's `config.num_image_tokens`).
    """

    def __init__(self, image_processor, tokenizer, num_image_tokens: int = 256, **kwargs):
        vocab = tokenizer.get_vocab()
        missing = [t for t in IMAGE_SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(
                f"The tokenizer lacks the image tokens {missing} (BOI / EOI / image placeholder). Build the processor "
                "with `add_image_tokens(tokenizer)`."
            )
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer needs a pad token (`tokenizer.pad_token`).")
        if not isinstance(num_image_tokens, int) or num_image_tokens < 1:
            raise ValueError(f"`num_image_tokens` must be a positive integer, got {num_image_tokens!r}.")
        self.num_image_tokens = num_image_tokens
        super().__init__(image_processor, tokenizer, **kwargs)

    # -- ids ----------------------------------------------------------------------------------------------------------
    @property
    def boi_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(BOI_TOKEN)

    @property
    def eoi_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(EOI_TOKEN)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def special_token_ids(self) -> dict[str, int | None]:
        """The ids a `TransfusionConfig` needs, by config field name."""
        t = self.tokenizer
        return {
            "pad_token_id": t.pad_token_id,
            "bos_token_id": t.bos_token_id,
            "eos_token_id": t.eos_token_id,
            "boi_token_id": self.boi_token_id,
            "eoi_token_id": self.eoi_token_id,
            "image_token_id": self.image_token_id,
        }

    def image_block(self) -> list[int]:
        """`<boi> <image> x N <eoi>`."""
        return [self.boi_token_id] + [self.image_token_id] * self.num_image_tokens + [self.eoi_token_id]

    def _bos(self) -> list[int]:
        return [] if self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]

    def _eos(self) -> list[int]:
        return [] if self.tokenizer.eos_token_id is None else [self.tokenizer.eos_token_id]

    def text_ids(self, texts: list[str], truncation: bool, argument: str) -> list[list[int]]:
        """Token ids without special tokens; longer than `max_length` raises unless `truncation`."""
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        for i, ids in enumerate(rows):
            if len(ids) > self.max_length and not truncation:
                raise ValueError(
                    f"`{argument}` {texts[i]!r} is {len(ids)} tokens long, but the model's text context holds "
                    f"{self.max_length}. Shorten it, or pass `truncation=True` to cut it."
                )
        return [ids[: self.max_length] for ids in rows]

    def pad(
        self, rows: Sequence[Sequence[int]], padding_side: str = "left", return_tensors: str = "pt"
    ) -> BatchFeature:
        """Pad id lists into `input_ids` / `attention_mask` (left for prompts, right for training)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"`padding_side` must be 'left' or 'right', got {padding_side!r}.")
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids, masks = [], []
        for r in rows:
            fill = length - len(r)
            ids.append(([pad] * fill + list(r)) if padding_side == "left" else (list(r) + [pad] * fill))
            masks.append(([0] * fill + [1] * len(r)) if padding_side == "left" else ([1] * len(r) + [0] * fill))
        return BatchFeature({"input_ids": ids, "attention_mask": masks}, tensor_type=return_tensors)

    # -- inference inputs ---------------------------------------------------------------------------------------------
    def image_generation_inputs(
        self, prompts: str | list[str], truncation: bool = False, text_argument: str = "prompt"
    ) -> BatchFeature:
        """`<s> prompt </s> <boi>` per prompt, left-padded: the model draws the image after `<boi>`. The empty
        prompt gives `<s> </s> <boi>`, the caption-dropped (unconditional) form of training."""
        texts = as_prompt_list(prompts, text_argument)
        rows = [
            self._bos() + ids + self._eos() + [self.boi_token_id]
            for ids in self.text_ids(texts, truncation, text_argument)
        ]
        return self.pad(rows, "left")

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        truncation: bool = False,
        return_tensors: str = "pt",
        text_argument: str = "text",
        padding=True,
        **kwargs,
    ) -> BatchFeature:
        """Prompts for LM mode, left-padded (transformers' `image-text-to-text` convention: `processor(images=...,
        text=...)` then `model.generate(**inputs)`).

        - `images` (one per prompt) and optional `text`: `<s> <boi> <image> x N <eoi> text`, plus `pixel_values`.
        - `text` only: `<s> text`.
        """
        if text is None and images is None:
            raise ValueError("Pass `text`, `images` or both.")
        pixel_values = None
        if images is not None:
            pixel_values = self.image_processor(images, return_tensors="pt", **kwargs)["pixel_values"]
            texts = as_prompt_list(text, text_argument) if text is not None else [""] * pixel_values.shape[0]
            if len(texts) == 1 and pixel_values.shape[0] > 1:
                texts = texts * pixel_values.shape[0]
            if len(texts) != pixel_values.shape[0]:
                raise ValueError(
                    f"Got {pixel_values.shape[0]} images for {len(texts)} texts; pass one image per text."
                )
            rows = [self._bos() + self.image_block() + ids for ids in self.text_ids(texts, truncation, text_argument)]
        else:
            rows = [
                self._bos() + ids
                for ids in self.text_ids(as_prompt_list(text, text_argument), truncation, text_argument)
            ]
        out = self.pad(rows, "left", return_tensors)
        if pixel_values is not None:
            out["pixel_values"] = pixel_values
        return out

    # -- training -----------------------------------------------------------------------------------------------------
    def build_training_batch(
        self,
        captions: Sequence[str] | Sequence[Sequence[int]],
        image_latents: torch.Tensor,
        image_first: Sequence[bool] | torch.Tensor | None = None,
        drop_caption: Sequence[bool] | torch.Tensor | None = None,
        image_first_max_timestep: int | None = None,
        num_train_timesteps: int = 1000,
    ) -> dict[str, torch.Tensor]:
        """One interleaved training batch, right-padded, one image per example.

        Args:
            captions: strings, or token-id lists already without special tokens (cached encodings).
            image_latents: (B, C, h, w) clean scaled latents, one per caption.
            image_first: per example, write `<s> image caption </s>` (captioning) instead of caption -> image.
            drop_caption: per example, replace the caption with the empty one (classifier-free guidance training;
                only for caption-first examples).
            image_first_max_timestep: noise limit of images that precede their caption (the paper caps them at
                t = 500); None = no limit.
            num_train_timesteps: the limit of the other images.

        Returns:
            `input_ids`, `attention_mask`, `labels` (B, T) (-100 on pads, placeholders and `<eoi>`),
            `image_latents` (B, C, h, w) and `timestep_limits` (B,).
        """
        batch = len(captions)
        if image_latents.shape[0] != batch:
            raise ValueError(f"Got {image_latents.shape[0]} image latents for {batch} captions; pass one per caption.")
        if batch and isinstance(captions[0], str):
            captions = self.text_ids(list(captions), truncation=True, argument="captions")
        image_first = [False] * batch if image_first is None else [bool(x) for x in image_first]
        drop_caption = [False] * batch if drop_caption is None else [bool(x) for x in drop_caption]
        block, ignored = self.image_block(), {self.image_token_id, self.eoi_token_id}
        rows, limits = [], []
        for ids, first, drop in zip(captions, image_first, drop_caption):
            ids = list(ids)[: self.max_length]
            if first:
                rows.append(self._bos() + block + ids + self._eos())
                limits.append(image_first_max_timestep or num_train_timesteps)
            else:
                rows.append(self._bos() + ([] if drop else ids) + self._eos() + block)
                limits.append(num_train_timesteps)
        out = self.pad(rows, "right")
        labels = out["input_ids"].masked_fill(out["attention_mask"] == 0, -100)
        labels = labels.masked_fill(torch.isin(labels, torch.tensor(sorted(ignored))), -100)
        return {
            "input_ids": out["input_ids"],
            "attention_mask": out["attention_mask"],
            "labels": labels,
            "image_latents": image_latents,
            "timestep_limits": torch.tensor(limits, dtype=torch.long),
        }

    def batch_decode(self, *args, **kwargs):
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.decode(*args, **kwargs)


__all__ = ["BOI_TOKEN", "EOI_TOKEN", "IMAGE_TOKEN", "TransfusionProcessor", "add_image_tokens"]
