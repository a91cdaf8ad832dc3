"""Positional and timestep embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn


class AxialPositionalEmbedding(nn.Module):
    """Learned 2-D positions for an image raster: a row embedding plus a column embedding (as in DALL-E).

    Args:
        height: rows of the token grid.
        width: columns of the token grid.
        dim: embedding width.
    """

    def __init__(self, height: int, width: int, dim: int):
        super().__init__()
        self.height, self.width = height, width
        self.row = nn.Embedding(height, dim)
        self.col = nn.Embedding(width, dim)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """index: raster positions (any shape) in [0, height * width) -> (*index.shape, dim)."""
        return self.row(index // self.width) + self.col(index % self.width)

    @torch.no_grad()
    def init_sincos_(self, table: nn.Embedding | None = None) -> None:
        """Start the tables so that `row(r) + col(c)` is the 2-D sin-cos feature of cell (r, c), exactly
        `sincos_2d_embedding(height, width, dim)`: the rows' sinusoids fill the first half of the channels, the
        columns' the second, zeros elsewhere. Both tables stay trained parameters.

        Args:
            table: only this one of the two (`self.row` or `self.col`, as a model's per-module weight init visits
                them); default: both.
        """
        dim = self.row.embedding_dim
        if dim % 4:
            raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}.")
        half = dim // 2
        for this, size, channels in (
            (self.row, self.height, slice(0, half)),
            (self.col, self.width, slice(half, dim)),
        ):
            if table is None or table is this:
                values = torch.zeros(size, dim)
                values[:, channels] = sinusoidal_embedding(torch.arange(size), half)
                this.weight.copy_(values.to(this.weight))


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal features of (possibly fractional) positions or diffusion timesteps.

    Args:
        positions: (N,) values.
        dim: output width (even).

    Returns:
        (N, dim) float32, `[cos | sin]` halves.
    """
    if dim % 2:
        raise ValueError(f"`dim` must be even for sinusoidal embeddings, got {dim}.")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    args = positions.float()[:, None] * freqs[None]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d_embedding(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sinusoidal features of a `height` x `width` grid in raster order (MAE / DiT's 2-D sin-cos positions):
    the first half of the channels encode the row, the second half the column, each as `sinusoidal_embedding`.
    Nearby cells get similar vectors, which is what lets attention find a token's neighbours from the start.

    Returns:
        (height * width, dim) float32, values in [-1, 1].
    """
    if dim % 4:
        raise ValueError(f"`dim` must be divisible by 4 for 2-D sin-cos positions, got {dim}.")
    rows = torch.arange(height).repeat_interleave(width)  # raster index r * W + c -> r
    cols = torch.arange(width).repeat(height)  # -> c
    return torch.cat([sinusoidal_embedding(rows, dim // 2), sinusoidal_embedding(cols, dim // 2)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Sinusoidal timestep features followed by a two-layer MLP (as in DDPM / DiT)."""

    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """timesteps: (N,) -> (N, dim)."""
        features = sinusoidal_embedding(timesteps, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))
