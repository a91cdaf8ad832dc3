"""Multi-head attention on `scaled_dot_product_attention`, with transformers `Cache` semantics.

This is the only module (with `masks.py`) that touches transformers internals: the `Cache` classes move between
releases, so every model goes through `Attention` and never calls the cache API itself.

Masks are boolean, `True` where a query may attend to a key, shaped `(B or 1, 1 or H, Q, K)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, EncoderDecoderCache


class Attention(nn.Module):
    """Self- or cross-attention with a fused input projection and SDPA as the kernel.

    Self-attention projects queries, keys and values with one matrix (`qkv_proj`); cross-attention projects queries
    from the hidden states (`q_proj`) and keys/values from the encoder states (`kv_proj`). With a cache, self-attention
    appends its keys/values (`Cache.update`); cross-attention computes them once per prompt and reads them back on
    every later step.

    Args:
        hidden_size: width of the queries and of the output.
        num_heads: number of attention heads; `hidden_size` must be divisible by it.
        layer_idx: index of the layer in the cache.
        is_cross_attention: attend to `encoder_hidden_states` instead of the hidden states.
        kv_input_size: width of `encoder_hidden_states` (cross-attention only; defaults to `hidden_size`).
        bias: whether the projections have a bias.
        dropout: attention-probability dropout used in training.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        layer_idx: int,
        is_cross_attention: bool = False,
        kv_input_size: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"`hidden_size` ({hidden_size}) must be divisible by `num_attention_heads` ({num_heads})."
            )
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.dropout = dropout
        if is_cross_attention:
            self.q_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
            self.kv_proj = nn.Linear(kv_input_size or hidden_size, 2 * hidden_size, bias=bias)
        else:
            self.qkv_proj = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=bias)

    def _heads(self, x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """(B, T, n * H * D) -> n tensors of shape (B, H, T, D)."""
        batch, length, _ = x.shape
        x = x.view(batch, length, n, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (n, B, H, T, D)
        return x.unbind(0)

    def _cross_key_values(
        self, encoder_hidden_states: torch.Tensor | None, cache: Cache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cross_cache = cache.cross_attention_cache if isinstance(cache, EncoderDecoderCache) else None
        if cross_cache is not None and cache.is_updated.get(self.layer_idx, False):
            layer = cross_cache.layers[self.layer_idx]
            return layer.keys, layer.values
        if encoder_hidden_states is None:
            raise ValueError("Cross-attention needs `encoder_hidden_states` (or a cache that already holds them).")
        key, value = self._heads(self.kv_proj(encoder_hidden_states), 2)
        if cross_cache is not None:
            key, value = cross_cache.update(key, value, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
        return key, value

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: (B, Q, C) queries' inputs.
            attention_mask: boolean (B or 1, 1 or H, Q, K), True = attend; `None` = full (or causal if `is_causal`).
            cache: a transformers `Cache` (an `EncoderDecoderCache` when this layer cross-attends).
            encoder_hidden_states: (B, K, C_kv) keys/values' inputs for cross-attention.
            is_causal: use SDPA's built-in causal mask (only without a cache offset and without `attention_mask`).

        Returns:
            (B, Q, C)
        """
        batch, length, _ = hidden_states.shape
        if self.is_cross_attention:
            query = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            key, value = self._cross_key_values(encoder_hidden_states, cache)
        else:
            query, key, value = self._heads(self.qkv_proj(hidden_states), 3)  # each (B, H, Q, D)
            if cache is not None:
                key, value = _self_attention_cache(cache).update(key, value, self.layer_idx)  # (B, H, K, D)
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and attention_mask is None,
        )  # (B, H, Q, D)
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.out_proj(out)


def _self_attention_cache(cache: Cache) -> Cache:
    if isinstance(cache, EncoderDecoderCache):
        return cache.self_attention_cache
    return cache


def cache_length(cache: Cache | None) -> int:
    """Number of positions already in the (self-attention) cache, as a Python int."""
    if cache is None:
        return 0
    return int(_self_attention_cache(cache).get_seq_length())


def truncate_cache(cache: Cache, length: int) -> None:
    """Drop the positions past `length` from a dynamic (self-attention) cache, e.g. the image patches of one
    denoising step after a cached prefix. transformers 5.x's `DynamicCache.crop` takes the number of positions to
    remove as a negative int (a positive one now raises)."""
    self_cache = _self_attention_cache(cache)
    extra = int(self_cache.get_seq_length()) - length
    if extra > 0:
        self_cache.crop(-extra)


def key_length(cache: Cache | None, new_length: int) -> int:
    """Keys that self-attention sees after caching `new_length` more positions: all slots of a preallocated
    (static) cache, else the cached positions plus the new ones."""
    if cache is None:
        return new_length
    self_cache = _self_attention_cache(cache)
    # a lazily built cache has no layers yet
    max_length = self_cache.get_max_length(0) if len(self_cache.layers) else -1
    return max_length if max_length is not None and max_length > 0 else int(self_cache.get_seq_length()) + new_length
