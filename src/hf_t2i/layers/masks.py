"""Attention-mask builders. Every mask is boolean, `True` where query `i` may attend to key `j`, shaped `(S, S)`
over a whole sequence; `slice_mask` cuts the rows and columns one forward pass needs (cache offset included).

Sequence layouts:
    - `causal_mask`: a plain decoder.
    - `sparse_image_mask`: DALL-E (Ramesh et al. 2021, appendix B.1): a causal text prefix that every image token
      sees, then an image raster of `height x width` tokens under one of the Sparse Transformer patterns
      "full" (causal), "row", "column" or "conv", or one of DALLE-pytorch's "axial_row" and "conv_corner".
    - `causal_with_bidirectional_spans`: Transfusion (Zhou et al. 2024, section 2.3): causal over the sequence, and
      bidirectional inside each image span (batched, spans numbered by `image_span_ids`).
"""

from __future__ import annotations

import torch

from ..configuration_utils import check_choice


SPARSE_IMAGE_ATTENTION_TYPES = ("full", "row", "column", "conv", "axial_row", "conv_corner")


def causal_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(S, S) lower-triangular mask."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def sparse_image_mask(
    attention_type: str,
    text_length: int,
    height: int,
    width: int,
    conv_kernel_size: int = 11,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """DALL-E's sparse masks over `[text ; image raster]`, shaped (S, S) with S = text_length + height * width.

    Text positions are causal among themselves; every image position sees the whole text. Among image positions
    (raster index i = r * width + c, always causal, j <= i):

    - "full": every earlier image position.
    - "row": the previous `width` positions (the Sparse Transformer's local window: the current row so far and the
      tail of the row above), as in the paper's figure 11a.
    - "column": the earlier positions of the same column.
    - "conv": a causal `conv_kernel_size x conv_kernel_size` neighbourhood: rows r - k//2 .. r and columns
      c - k//2 .. c + k//2.
    - "axial_row": the earlier positions of the same row (DALLE-pytorch's `axial_row`).
    - "conv_corner": the `k x k` window whose bottom-right corner is the query: rows r - k + 1 .. r and columns
      c - k + 1 .. c (DALLE-pytorch's `conv_like`, k = `conv_kernel_size`).
    """
    check_choice("attention_type", attention_type, SPARSE_IMAGE_ATTENTION_TYPES)
    if conv_kernel_size < 1 or conv_kernel_size % 2 == 0:
        raise ValueError(f"`conv_kernel_size` must be a positive odd number, got {conv_kernel_size}.")
    num_image = height * width
    length = text_length + num_image
    mask = causal_mask(length, device)
    index = torch.arange(num_image, device=device)
    row, col = index // width, index % width
    i, j = index[:, None], index[None, :]
    if attention_type == "full":
        image = j <= i
    elif attention_type == "row":
        image = (j <= i) & (i - j <= width)
    elif attention_type == "column":
        image = (j <= i) & (col[:, None] == col[None, :])
    elif attention_type == "axial_row":
        image = (j <= i) & (row[:, None] == row[None, :])
    elif attention_type == "conv_corner":
        rows_up, cols_left = row[:, None] - row[None, :], col[:, None] - col[None, :]
        image = (rows_up >= 0) & (rows_up < conv_kernel_size) & (cols_left >= 0) & (cols_left < conv_kernel_size)
    else:
        half = conv_kernel_size // 2
        image = (j <= i) & (row[:, None] - row[None, :] <= half) & ((col[:, None] - col[None, :]).abs() <= half)
    mask[text_length:, text_length:] = image
    return mask


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask -> float mask of 0 (attend) and -inf (masked), the form SDPA adds to the scores directly
    (a boolean mask is converted on every call)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def slice_mask(mask: torch.Tensor, query_start: int, query_length: int, key_length: int | None = None) -> torch.Tensor:
    """Rows `[query_start, query_start + query_length)` and the first `key_length` columns of an (S, S) boolean or
    additive mask, as (1, 1, Q, K). Columns past S are masked out.

    `key_length` defaults to `query_start + query_length`, the positions a cache holds once the queries are in it:
    the keys a decoding step attends to (`Attention` keeps that many of a preallocated cache's slots)."""
    if key_length is None:
        key_length = query_start + query_length
    rows = mask[query_start : query_start + query_length]
    if rows.shape[0] != query_length:
        raise ValueError(
            f"Positions {query_start}..{query_start + query_length - 1} exceed the model's context of {mask.shape[0]}."
        )
    if key_length <= rows.shape[1]:
        rows = rows[:, :key_length]
    else:
        masked = False if rows.dtype == torch.bool else float("-inf")
        rows = torch.cat([rows, rows.new_full((query_length, key_length - rows.shape[1]), masked)], dim=1)
    return rows[None, None]


def image_span_ids(is_image: torch.Tensor) -> torch.Tensor:
    """(B, T) boolean "this position is an image patch" -> (B, T) span ids: 0 for non-image positions, and
    1, 2, ... numbering the maximal runs of image positions, in row-major order over the whole batch (so ids are
    unique across rows)."""
    starts = is_image.clone()
    starts[:, 1:] &= ~is_image[:, :-1]
    return starts.flatten().cumsum(0).view_as(is_image) * is_image


def causal_with_bidirectional_spans(
    span_ids: torch.Tensor, past_length: int = 0, key_padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Batched Transfusion mask (Zhou et al. 2024, section 2.3) for the `T` new positions of a forward pass.

    Query `i` sees key `j` when `j <= i` (causal) or when both lie in the same span (`span_ids[i] == span_ids[j] > 0`,
    bidirectional inside an image). All `past_length` cached positions precede the new ones, so every query sees them
    (a span is never split between the cache and the new positions).

    Args:
        span_ids: (B, T) ids from `image_span_ids`: 0 = causal token, k > 0 = the k-th bidirectional span.
        past_length: cached positions before the new ones.
        key_padding_mask: optional (B, past_length + T), 1 / True = a real token, 0 = padding. Padded keys are
            hidden from every query; each query still sees itself, so a padded row never has an empty softmax.

    Returns:
        (B, 1, T, past_length + T) boolean, True = attend.
    """
    batch, length = span_ids.shape
    device = span_ids.device
    same_span = (span_ids[:, :, None] == span_ids[:, None, :]) & (span_ids[:, :, None] > 0)  # (B, T, T)
    new = causal_mask(length, device)[None] | same_span
    mask = torch.cat([torch.ones(batch, length, past_length, dtype=torch.bool, device=device), new], dim=-1)
    if key_padding_mask is not None:
        if key_padding_mask.shape != (batch, past_length + length):
            raise ValueError(
                f"`attention_mask` must cover the cached and the new positions, shape {(batch, past_length + length)}, "
                f"got {tuple(key_padding_mask.shape)}."
            )
        mask = mask & key_padding_mask.bool()[:, None, :]
        mask[:, :, past_length:] |= torch.eye(length, dtype=torch.bool, device=device)[None]
    return mask[:, None]
