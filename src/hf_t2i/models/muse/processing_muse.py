"""Processor of Muse: a text tokenizer (a trained byte-level BPE, or the pretrained encoder's own tokenizer) + the
shared image processor."""

# diffusers finds a component's loading method by looking its base class up in the component's module, so the base
# must be importable from here for `MusePipeline.from_pretrained` to load the processor.
from transformers import ProcessorMixin  # noqa: F401

from ...processing_utils import T2IProcessor


class MuseProcessor(T2IProcessor):
    """[`T2IProcessor`] for Muse: captions padded to `text_seq_len` with an `attention_mask` (cross-attention masks
    the pads), images to the VQ tokenizer's `image_size`."""


__all__ = ["MuseProcessor"]
