"""The transformers `pipeline("text-to-image", model=...)` task of hf_t2i.

It is a thin front over the package's diffusers pipelines: it finds the `DiffusionPipeline` class registered for the
model's `model_type` and runs it, so both entry points give the same images for the same seed.
"""

from __future__ import annotations

from typing import Any

from transformers import Pipeline


# model_type -> DiffusionPipeline class; filled by `hf_t2i.auto.register_all`.
TEXT_TO_IMAGE_PIPELINES: dict[str, type] = {}


class TextToImagePipeline(Pipeline):
    """`pipeline("text-to-image", model=path)`: prompt(s) -> PIL image(s).

    Any keyword of the model's diffusers pipeline is accepted (`guidance_scale`, `generator`, `top_k`,
    `num_images_per_prompt`, ...). A single prompt returns one PIL image, or a list when `num_images_per_prompt > 1`;
    a list of prompts returns a list of those, in order, also when `batch_size=k` runs them k prompts per call (a
    `generator` then serves every call in turn; a list of generators, one per image, fits one call's images only).

    Example:

    ```python
    >>> import hf_t2i  # registers the task
    >>> from transformers import pipeline
    >>> pipe = pipeline("text-to-image", model=path)
    >>> image = pipe("a red circle", generator=torch.Generator().manual_seed(0))
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        model_type = self.model.config.model_type
        if model_type not in TEXT_TO_IMAGE_PIPELINES:
            raise ValueError(
                f"The text-to-image task has no pipeline for model type {model_type!r}; "
                f"supported: {sorted(TEXT_TO_IMAGE_PIPELINES)}."
            )
        if self.processor is None:
            raise ValueError("The text-to-image task needs the model's processor (tokenizer + image processor).")
        self.generation_pipeline = TEXT_TO_IMAGE_PIPELINES[model_type](model=self.model, processor=self.processor)

    def _sanitize_parameters(self, **kwargs) -> tuple[dict, dict, dict]:
        for reserved in ("output_type", "return_dict"):
            if reserved in kwargs:
                raise ValueError(f"`{reserved}` is fixed by the text-to-image task (PIL images); drop it.")
        return {}, kwargs, {}

    def preprocess(self, prompt: str) -> dict[str, Any]:
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}.")
        return {"prompt": prompt}

    def _forward(self, model_inputs: dict[str, Any], **generate_kwargs) -> dict[str, Any]:
        """One prompt -> `{"images": its images}`; a batch of prompts (`batch_size` > 1: transformers collates the
        prompts into a list) -> `{"images": one list of images per prompt}`, which transformers splits back into one
        output per prompt."""
        prompt = model_inputs["prompt"]
        images = self.generation_pipeline(prompt, output_type="pil", **generate_kwargs).images
        if isinstance(prompt, str):
            return {"images": images}
        per_prompt = len(images) // len(prompt)
        return {"images": [images[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompt))]}

    def postprocess(self, model_outputs: dict[str, Any]):
        """A prompt's images: one PIL image, or a list when it has several."""
        images = model_outputs["images"]
        return images[0] if len(images) == 1 else images


__all__ = ["TEXT_TO_IMAGE_PIPELINES", "TextToImagePipeline"]
