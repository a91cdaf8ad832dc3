"""DALLE-pytorch's token shifting (`shift_tokens=True`, its default), as `DalleConfig(shift_tokens=True)` computes it.

Before each self-attention and each feed-forward, after the sub-layer's LayerNorm, some channels of every position
are replaced by the same channels of an earlier position (zeros where there is none):

- text positions (the <bos> and the caption): the first `ceil(C / 2)` channels come from the previous position;
- image position `k` (row `k // W`, column `k % W` of the `W x W` grid): the first quarter of the channels
  (`ceil(C / 4)`, as `torch.chunk(4)` splits them) comes from the token one row above (`k - W`, zeros in row 0) and
  the second quarter from the token to the left (`k - 1`, zeros in column 0). An image token never reads the text.

So each position reads at most `W` positions back. While decoding, every layer keeps the shifted channels of the
last `W` positions per sub-layer: the conv states of transformers' "hybrid" cache layers, which the config asks
for (`layer_types`, `number_of_conv_states`), so a `DynamicCache` or `StaticCache` built from the config carries
them next to the keys and values (and beam search, batch expansion and `reset()` handle them as they handle
the KV cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache


def shifted_channels(hidden_size: int) -> tuple[int, int, int]:
    """`(quarter, half, kept)`: the channels an image token takes from above (`[0, quarter)`) and from the left
    (`[quarter, kept)`), the ones a text token takes from the previous position (`[0, half)`), as `chunk(4)` and
    `chunk(2)` split `hidden_size`; `kept` channels per position are all a later position ever reads."""
    quarter, half = -(-hidden_size // 4), -(-hidden_size // 2)
    return quarter, half, min(2 * quarter, hidden_size)


def shift_tokens(x: torch.Tensor, context: torch.Tensor, start: int, text_length: int, grid_size: int) -> torch.Tensor:
    """Shift the normalised sub-layer inputs `x` of positions `start .. start + T - 1`.

    Args:
        x: (B, T, C) normalised inputs.
        context: (B, W + T, kept) the first `kept` channels (see `shifted_channels`) of positions
            `start - W .. start + T - 1`, W = `grid_size`; zeros for positions before 0.
        start: the position of `x[:, 0]`.
        text_length: number of text positions (the <bos> included).
        grid_size: side W of the image token grid.

    Returns:
        (B, T, C) the shifted inputs.
    """
    length = x.shape[1]
    quarter, half, kept = shifted_channels(x.shape[-1])
    previous = context[:, grid_size - 1 : grid_size - 1 + length]  # (B, T, kept): position p - 1
    above = context[:, :length]  # (B, T, kept): position p - W
    positions = torch.arange(start, start + length, device=x.device)
    image_index = positions - text_length  # (T,) raster index k of image positions, negative for text
    text = torch.cat([torch.where((positions >= 1)[:, None], previous[..., :half], 0), x[..., half:]], dim=-1)
    top = torch.where((image_index >= grid_size)[:, None], above[..., :quarter], 0)
    left = torch.where((image_index % grid_size != 0)[:, None], previous[..., quarter:kept], 0)
    image = torch.cat([top, left, x[..., kept:]], dim=-1)
    return torch.where((image_index < 0)[:, None], text, image)


class DalleTokenShift:
    """The `token_shift` hook of one forward pass (see `layers.TransformerBlock.forward`): shifts each normalised
    sub-layer input with `shift_tokens`, reading and updating the cache's conv states when there is a cache.

    Args:
        start: position of the first new token.
        text_length, grid_size: as in `shift_tokens`.
        cache: the forward's cache, built from a config with `shift_tokens=True` (its layers keep conv states), or
            None for a forward without cache.
    """

    def __init__(self, start: int, text_length: int, grid_size: int, cache: Cache | None):
        self.start, self.text_length, self.grid_size, self.cache = start, text_length, grid_size, cache

    @staticmethod
    def check_cache(cache: Cache | None, num_layers: int) -> None:
        """A cache without conv states cannot hold what decoding needs: say how to build one that does."""
        if cache is None:
            return
        layers = getattr(cache, "layers", [])
        if len(layers) != num_layers or not all(hasattr(layer, "update_conv_state") for layer in layers):
            raise ValueError(
                "DalleConfig(shift_tokens=True) keeps the last image row of every sub-layer's input in the cache next "
                f"to the keys and values; got a {type(cache).__name__} without such states. Build it from the model's "
                "config: `DynamicCache(config=model.config)` or `StaticCache(config=model.config, max_cache_len=...)`."
            )

    def __call__(self, x: torch.Tensor, layer_idx: int, sub_layer: int) -> torch.Tensor:
        length, width = x.shape[1], self.grid_size
        kept = x[..., : shifted_channels(x.shape[-1])[2]]  # (B, T, kept)
        if self.cache is None:
            context = kept
        else:
            # (B, kept, P + T): the last W positions kept before this call (P = W; none on the first call) + the new
            context = self.cache.update_conv_state(
                kept.transpose(1, 2), layer_idx, state_idx=sub_layer, conv_kernel_size=width
            ).transpose(1, 2)
        context = F.pad(context, (0, 0, width + length - context.shape[1], 0))  # (B, W + T, kept), zeros before 0
        return shift_tokens(x, context, self.start, self.text_length, width)


__all__ = ["DalleTokenShift", "shift_tokens", "shifted_channels"]
