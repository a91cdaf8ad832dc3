"""Model-agnostic building blocks, written once and shared by every model."""

from .attention import (
    Attention,
    attention_function,
    cache_length,
    eager_attention,
    sdpa_attention,
    truncate_cache,
)
from .masks import (
    SPARSE_IMAGE_ATTENTION_TYPES,
    additive_mask,
    causal_mask,
    slice_mask,
    sparse_image_mask,
)
from .mlp import FeedForward
from .patchify import patchify, unpatchify
from .positional import AxialPositionalEmbedding, TimestepEmbedding, sincos_2d_embedding, sinusoidal_embedding
from .transformer import BlockStackOutput, TransformerBlock, run_blocks, transformer_blocks


__all__ = [
    "SPARSE_IMAGE_ATTENTION_TYPES",
    "Attention",
    "attention_function",
    "BlockStackOutput",
    "eager_attention",
    "run_blocks",
    "sdpa_attention",
    "additive_mask",
    "AxialPositionalEmbedding",
    "FeedForward",
    "TimestepEmbedding",
    "TransformerBlock",
    "transformer_blocks",
    "cache_length",
    "truncate_cache",
    "patchify",
    "unpatchify",
    "causal_mask",
    "sincos_2d_embedding",
    "sinusoidal_embedding",
    "slice_mask",
    "sparse_image_mask",
]
