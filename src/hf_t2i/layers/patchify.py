"""Grouping image latents into tokens and back (Fluid's 2x2 latent tokens, Transfusion's patches)."""

from __future__ import annotations

import torch


def patchify(latents: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Flatten non-overlapping `patch_size` x `patch_size` patches of a latent map into tokens.

    Args:
        latents: (B, C, H, W), with H and W multiples of `patch_size`.
        patch_size: side of a patch in latent pixels.

    Returns:
        (B, H/p * W/p, C * p * p) in raster order; each token is laid out channel-major, `(C, p, p)`.
    """
    batch, channels, height, width = latents.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"Latent size {height}x{width} is not a multiple of `patch_size`={patch_size}; "
            "choose an image size whose latent size is divisible by the patch size."
        )
    rows, cols = height // patch_size, width // patch_size
    patches = latents.reshape(batch, channels, rows, patch_size, cols, patch_size)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, p, p)
    return patches.reshape(batch, rows * cols, channels * patch_size * patch_size)


def unpatchify(tokens: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `patchify`.

    Args:
        tokens: (B, N, C * p * p) with N = (height / p) * (width / p).
        patch_size: side of a patch in latent pixels.
        height, width: size of the latent map to rebuild.

    Returns:
        (B, C, height, width).
    """
    batch, num_tokens, token_dim = tokens.shape
    rows, cols = height // patch_size, width // patch_size
    if rows * cols != num_tokens or token_dim % (patch_size * patch_size):
        raise ValueError(
            f"Cannot unpatchify {num_tokens} tokens of width {token_dim} into a {height}x{width} map with "
            f"`patch_size`={patch_size}."
        )
    channels = token_dim // (patch_size * patch_size)
    patches = tokens.reshape(batch, rows, cols, channels, patch_size, patch_size)
    patches = patches.permute(0, 3, 1, 4, 2, 5)  # (B, C, rows, p, cols, p)
    return patches.reshape(batch, channels, height, width)
