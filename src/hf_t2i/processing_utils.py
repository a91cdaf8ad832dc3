"""The text + image processor every text-to-image model in the package uses (tokenizer + `T2IImageProcessor`).

Text is always padded to the model's text context (`tokenizer.model_max_length`); a prompt that does not fit raises
a `ValueError` unless `truncation=True` (training captions), because silently cutting a prompt changes the image.
"""

from __future__ import annotations

import os

from transformers import BatchFeature, ProcessorMixin

from .modeling_utils import json_file_problem, local_folder


def as_prompt_list(prompt, argument: str = "prompt") -> list[str]:
    """A prompt or list of prompts -> a non-empty list of strings, else a `ValueError` / `TypeError` naming
    `argument`."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"`{argument}` must be a string or a list of strings, got {type(prompt).__name__}.")
    if len(prompt) == 0:
        raise ValueError(f"`{argument}` is an empty list; pass at least one prompt.")
    for i, p in enumerate(prompt):
        if not isinstance(p, str):
            raise TypeError(f"`{argument}[{i}]` must be a string, got {type(p).__name__}.")
    return list(prompt)


class T2IProcessor(ProcessorMixin):
    """Tokenizer + image processor.

    Args:
        image_processor: a [`T2IImageProcessor`].
        tokenizer: any Hugging Face tokenizer whose `model_max_length` is the model's text context and which has a
            pad token.
    """

    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor, tokenizer, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`ProcessorMixin.from_pretrained`; a saved folder whose tokenizer.json (or another processor file) is
        missing or invalid raises a `ValueError` naming that file and the fix instead of a tokenizers traceback."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as error:
            folder = local_folder(pretrained_model_name_or_path, kwargs.get("subfolder"))
            problem = diagnose_processor_folder(folder) if folder else None
            if problem is None:
                raise
            raise ValueError(f"Cannot load {cls.__name__} from {folder}: {problem}") from error

    @property
    def max_length(self) -> int:
        return self.tokenizer.model_max_length

    def __call__(
        self,
        text: str | list[str] | None = None,
        images=None,
        truncation: bool = False,
        return_tensors: str = "pt",
        text_argument: str = "text",
        **kwargs,
    ) -> BatchFeature:
        """Tokenize `text` to `input_ids` (B, L) padded to L = `max_length`, and/or preprocess `images` to
        `pixel_values` (B, 3, S, S) in [-1, 1].

        Args:
            text: prompt(s).
            images: PIL image(s) or arrays.
            truncation: cut prompts longer than the context instead of raising.
            text_argument: the name used for `text` in error messages (pipelines pass "prompt").
        """
        if text is None and images is None:
            raise ValueError("Pass `text`, `images` or both.")
        data = {}
        if text is not None:
            texts = as_prompt_list(text, text_argument)
            length = self.max_length
            if not truncation:
                lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]
                too_long = [(i, n) for i, n in enumerate(lengths) if n > length]
                if too_long:
                    i, n = too_long[0]
                    raise ValueError(
                        f"`{text_argument}` {texts[i]!r} is {n} tokens long, but the model's text context holds "
                        f"{length}. Shorten it, or pass `truncation=True` to cut it."
                    )
            encoded = self.tokenizer(
                texts, padding="max_length", max_length=length, truncation=True, return_tensors=return_tensors
            )
            data["input_ids"] = encoded["input_ids"]
            data["attention_mask"] = encoded["attention_mask"]
        if images is not None:
            data["pixel_values"] = self.image_processor(images, return_tensors=return_tensors, **kwargs)[
                "pixel_values"
            ]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


__all__ = ["T2IProcessor", "as_prompt_list"]


def diagnose_processor_folder(folder: str) -> str | None:
    """The first problem of a saved processor folder (tokenizer.json missing, not JSON or not a tokenizers file; a
    processor / tokenizer config that is not JSON) as a sentence naming the file and the fix, or None."""
    tokenizer_file = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
        return f"{tokenizer_file} is missing; restore the tokenizer.json saved with the model (save_pretrained)."
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        path = os.path.join(folder, name)
        problem = json_file_problem(path) if os.path.isfile(path) else None
        if problem is not None:
            return problem
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_file(tokenizer_file)
    except Exception as error:  # noqa: BLE001 - tokenizers raises its own Exception type
        return f"{tokenizer_file} is not a tokenizers file ({error}); restore the one saved with the model."
    return None
