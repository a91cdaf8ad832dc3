"""Processor of DALL-E: a byte-level BPE (or any) tokenizer + the shared image processor."""

# diffusers finds a component's loading method by looking its base class up in the component's module, so the base
# must be importable from here for `DallePipeline.from_pretrained` to load the processor.
from transformers import ProcessorMixin  # noqa: F401

from ...processing_utils import T2IProcessor


class DalleProcessor(T2IProcessor):
    """[`T2IProcessor`] for DALL-E: captions padded to `text_seq_len` (the pads become per-position learned
    embeddings in the model), images to `vq_config.image_size`."""


__all__ = ["DalleProcessor"]
