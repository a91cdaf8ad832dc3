"""Multi-head attention with transformers `Cache` semantics and transformers' attention-function interface.

This is the only module (with `masks.py`) that touches transformers internals: the `Cache` classes and the attention
interface move between releases, so every model goes through `Attention` and never calls either itself.

Kernels. The attention function is the one the owning model's config names, `config._attn_implementation`, chosen the
standard transformers way: `from_pretrained(..., attn_implementation="eager")` or `model.set_attn_implementation(...)`.

- "sdpa" (the default): `torch.nn.functional.scaled_dot_product_attention`, called directly by `sdpa_attention`.
- "eager": `eager_attention`, the softmax written out, which is what returns the attention weights
  (`output_attentions=True` needs it; under another implementation the weights are not computed and a warning says
  so, as transformers' own models do).
- any other name registered in transformers' `AttentionInterface` (`AttentionInterface.register(name, function)`):
  that function, with transformers' calling convention.

Masks are `(B or 1, 1 or H, Q, K)`, boolean (`True` where a query may attend to a key) or additive (0 / -inf, the form
the models build once per forward pass, see `masks.additive_mask`). With a preallocated cache, a mask narrower than
the cache (K = the filled positions, `masks.slice_mask`'s default) means "attend to the first K slots only".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging


logger = logging.get_logger(__name__)

AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
DEFAULT_ATTN_IMPLEMENTATION = "sdpa"


def eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    is_causal: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`softmax(query @ key^T * scaling + mask) @ value`, written out so that the weights can be returned.

    Args:
        module: the calling [`Attention`] (transformers' calling convention; unused).
        query: (B, H, Q, D).
        key, value: (B, H, K, D).
        attention_mask: boolean (True = attend) or additive, broadcastable to (B, H, Q, K); None = every key.
        scaling: factor of the scores (`head_dim ** -0.5`).
        dropout: dropout probability on the weights (pass 0 outside training).
        is_causal: without `attention_mask`, query i sees keys 0..i (SDPA's top-left aligned causal mask).

    Returns:
        the output (B, Q, H, D) and the weights (B, H, Q, K): the softmax probabilities (before dropout), computed
        in float32 and cast to the query's dtype; masked keys get exactly 0.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, Q, K)
    if attention_mask is None and is_causal:
        queries, keys = scores.shape[-2:]
        attention_mask = torch.ones(queries, keys, dtype=torch.bool, device=scores.device).tril()
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probabilities = F.dropout(weights, p=dropout, training=True) if dropout > 0 else weights
    output = torch.matmul(probabilities, value)  # (B, H, Q, D)
    return output.transpose(1, 2), weights


def sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """`scaled_dot_product_attention` with the arguments of [`eager_attention`]; returns (B, Q, H, D) and no weights.

    The decoding loops call attention a few thousand times per image, so this is the kernel call and nothing else
    (transformers' generic `sdpa_attention_forward`, which this stands in for, also handles grouped heads and
    export-time cases that these models never have)."""
    output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        is_causal=is_causal and attention_mask is None,
        scale=scaling,
    )  # (B, H, Q, D)
    return output.transpose(1, 2), None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding in the interleaved-pair convention: channels `(2i, 2i + 1)` of the first
    `R = cos.shape[-1]` channels are rotated by one angle (each angle's cosine and sine repeated for both channels of
    its pair); the other channels pass unchanged.

    Args:
        x: (B, H, T, D) with D >= R.
        cos, sin: (T, R) cosines and sines of the angles of the T positions.
    """
    rotated, rest = x[..., : cos.shape[-1]], x[..., cos.shape[-1] :]
    pairs = rotated.unflatten(-1, (-1, 2))  # (B, H, T, R / 2, 2)
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (B, H, T, R): (-x1, x0) per pair
    return torch.cat([rotated * cos + turned * sin, rest], dim=-1)


def attention_function(attn_implementation: str | None) -> AttentionFunction:
    """The attention function of an implementation name (see the module docstring); None means the default, SDPA.

    transformers' own SDPA function is replaced by [`sdpa_attention`] (same kernel, same result); a function that
    someone registered under "sdpa" or "eager" in `AttentionInterface` is used as registered.
    """
    attn_implementation = attn_implementation or DEFAULT_ATTN_IMPLEMENTATION
    function = ALL_ATTENTION_FUNCTIONS.get_interface(attn_implementation, eager_attention)
    return sdpa_attention if function is sdpa_attention_forward else function


def returns_attention_weights(attn_implementation: str | None) -> bool:
    """Whether an implementation computes the attention weights (eager only). Asking another one for them warns
    once and gets none, as transformers' models do (a transformers config with `output_attentions=True` refuses a
    non-eager implementation outright)."""
    if (attn_implementation or DEFAULT_ATTN_IMPLEMENTATION) == "eager":
        return True
    logger.warning_once(
        f"`output_attentions=True` needs the eager attention implementation; this model runs "
        f"{attn_implementation or DEFAULT_ATTN_IMPLEMENTATION!r}, which computes no attention weights, so none are "
        'returned. Load the model with `from_pretrained(..., attn_implementation="eager")` or call '
        '`model.set_attn_implementation("eager")` to get them.'
    )
    return False


class Attention(nn.Module):
    """Self- or cross-attention with a fused input projection; the kernel is the one `config` names.

    Self-attention projects queries, keys and values with one matrix (`qkv_proj`); cross-attention projects queries
    from the hidden states (`q_proj`) and keys/values from the encoder states (`kv_proj`). With a cache, self-attention
    appends its keys/values (`Cache.update`); cross-attention computes them once per prompt and reads them back on
    every later step. The kernel is looked up at every call, so `model.set_attn_implementation(...)` takes effect
    at once.

    Args:
        hidden_size: width of the queries and of the output.
        num_heads: number of attention heads; `hidden_size` must be divisible by it.
        layer_idx: index of the layer in the cache.
        is_cross_attention: attend to `encoder_hidden_states` instead of the hidden states.
        kv_input_size: width of `encoder_hidden_states` (cross-attention only; defaults to `hidden_size`).
        bias: whether the projections have a bias.
        dropout: attention-probability dropout used in training.
        config: the config of the model this layer belongs to; its `_attn_implementation` picks the attention
            function (see the module docstring). None: SDPA.
        rotate_values: with rotary `position_embeddings`, rotate the values too, not only queries and keys
            (DALLE-pytorch's rotary embedding does; the outputs then stay rotated).
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
        config: PreTrainedConfig | None = None,
        rotate_values: bool = False,
    ):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"`hidden_size` ({hidden_size}) must be divisible by `num_attention_heads` ({num_heads})."
            )
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.dropout = dropout
        self.config = config
        self.rotate_values = rotate_values
        if is_cross_attention:
            self.q_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
            self.kv_proj = nn.Linear(kv_input_size or hidden_size, 2 * hidden_size, bias=bias)
        else:
            self.qkv_proj = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=bias)

    @property
    def attn_implementation(self) -> str:
        """The name of the attention function this layer calls ("sdpa", "eager", ...)."""
        # the attribute behind the config's `_attn_implementation` property: read at every call, and a third of the
        # property's cost (config attribute access is slow, and decoding reads this thousands of times per image)
        implementation = self.config._attn_implementation_internal if self.config is not None else None
        return implementation or DEFAULT_ATTN_IMPLEMENTATION

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
        output_attentions: bool = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            hidden_states: (B, Q, C) queries' inputs.
            attention_mask: boolean (True = attend) or additive, (B or 1, 1 or H, Q, K); `None` = full (or causal if
                `is_causal`). With a cache, K may be less than the cached keys: only the first K are attended to.
            cache: a transformers `Cache` (an `EncoderDecoderCache` when this layer cross-attends).
            encoder_hidden_states: (B, K, C_kv) keys/values' inputs for cross-attention.
            is_causal: without `attention_mask`, a causal mask (only without a cache offset).
            output_attentions: return the attention weights (eager implementation only: another one warns and returns
                none).
            position_embeddings: rotary `(cos, sin)`, each (Q, R), of the new positions (self-attention only; see
                [`apply_rotary`]): queries and keys (and values with `rotate_values`) are rotated before the keys and
                values enter the cache.

        Returns:
            the output (B, Q, C) and the attention weights (B, H, Q, K) (None unless `output_attentions` under the
            eager implementation).
        """
        implementation = self.attn_implementation
        if output_attentions:
            output_attentions = returns_attention_weights(implementation)
        batch, length, _ = hidden_states.shape
        if self.is_cross_attention:
            query = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            key, value = self._cross_key_values(encoder_hidden_states, cache)
        else:
            query, key, value = self._heads(self.qkv_proj(hidden_states), 3)  # each (B, H, Q, D)
            if position_embeddings is not None:
                cos, sin = position_embeddings
                query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
                if self.rotate_values:
                    value = apply_rotary(value, cos, sin)
            if cache is not None:
                key, value = _self_attention_cache(cache).update(key, value, self.layer_idx)  # (B, H, K, D)
                if attention_mask is not None and attention_mask.shape[-1] < key.shape[-2]:
                    # a preallocated cache returns every slot; the mask covers the filled ones (`slice_mask`), and
                    # the empty slots would only cost time (half the attention of a decode step on average)
                    key, value = key[:, :, : attention_mask.shape[-1]], value[:, :, : attention_mask.shape[-1]]
        out, weights = attention_function(implementation)(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, Q, H, D), (B, H, Q, K) or None
        out = self.out_proj(out.reshape(batch, length, self.num_heads * self.head_dim))
        return out, (weights if output_attentions else None)


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
