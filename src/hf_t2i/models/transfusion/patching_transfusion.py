"""Transfusion's two ways of turning a (noisy) VAE latent into transformer tokens and back (section 3.2).

- "linear": patchify the latent, a linear layer per patch, plus a timestep embedding added to every patch vector;
  on the way out, a linear layer back to patch values and unpatchify.
- "unet": U-Net down blocks (timestep-conditioned ResNets from diffusers, one 2x downsampling per halving of
  `patch_size`) compress the latent to the patch grid, a 1x1 convolution maps to the transformer width; the up blocks
  mirror them (nearest 2x upsampling + convolution) with skip connections from the down path and predict the noise at the latent's resolution.

Both return the predicted noise epsilon at latent resolution, (I, C, h, w).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from ...layers import TimestepEmbedding, patchify, unpatchify
from .configuration_transfusion import TransfusionConfig


class LinearPatchEmbedding(nn.Module):
    """Latent (I, C, h, w) at timestep t -> tokens (I, N, hidden): `linear(patch) + time_embed(t)`."""

    def __init__(self, config: TransfusionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.proj = nn.Linear(config.patch_dim, config.hidden_size)
        self.time_embed = TimestepEmbedding(config.hidden_size)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, None]:
        tokens = self.proj(patchify(latents, self.patch_size))  # (I, N, hidden)
        return tokens + self.time_embed(timesteps)[:, None], None


class LinearPatchHead(nn.Module):
    """Tokens (I, N, hidden) -> noise prediction (I, C, h, w)."""

    def __init__(self, config: TransfusionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.latent_size = config.latent_size
        self.proj = nn.Linear(config.hidden_size, config.patch_dim)

    def forward(self, tokens: torch.Tensor, state: None, timesteps: torch.Tensor) -> torch.Tensor:
        return unpatchify(self.proj(tokens), self.patch_size, self.latent_size, self.latent_size)


class UNetPatchEmbedding(nn.Module):
    """U-Net down path: conv_in, then per level a ResNet (timestep-conditioned) and a 2x downsampling, then a ResNet
    and a 1x1 projection to the transformer width. Keeps the skips and the timestep embedding for the up path."""

    def __init__(self, config: TransfusionConfig):
        super().__init__()
        channels, groups = config.unet_channels, config.unet_norm_groups
        self.temb_channels = 4 * channels
        self.time_embed = TimestepEmbedding(self.temb_channels)
        self.conv_in = nn.Conv2d(config.latent_channels, channels, 3, padding=1)
        levels = int(math.log2(config.patch_size))
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels=channels, temb_channels=self.temb_channels, groups=groups) for _ in range(levels)
        )
        # strided 3x3 convolutions (diffusers' Downsample2D registers its conv under two names, which safetensors
        # refuses as shared tensors)
        self.downsamplers = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(levels))
        self.mid = ResnetBlock2D(in_channels=channels, temb_channels=self.temb_channels, groups=groups)
        self.proj_out = nn.Conv2d(channels, config.hidden_size, 1)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, dict]:
        temb = self.time_embed(timesteps)  # (I, 4 * channels)
        h = self.conv_in(latents)
        skips = []
        for resnet, down in zip(self.resnets, self.downsamplers):
            h = resnet(h, temb)
            skips.append(h)
            h = down(h)
        h = self.proj_out(self.mid(h, temb))  # (I, hidden, g, g)
        tokens = h.flatten(2).transpose(1, 2)  # (I, N, hidden), raster order
        return tokens, {"skips": skips, "temb": temb}


class UNetPatchHead(nn.Module):
    """U-Net up path: 1x1 projection from the transformer width, a ResNet, then per level a 2x upsampling and a
    ResNet over `[h ; skip]`, then GroupNorm, SiLU and conv_out to the latent channels."""

    def __init__(self, config: TransfusionConfig):
        super().__init__()
        channels, groups = config.unet_channels, config.unet_norm_groups
        temb_channels = 4 * channels
        self.grid = config.patch_grid_size
        self.proj_in = nn.Conv2d(config.hidden_size, channels, 1)
        self.mid = ResnetBlock2D(in_channels=channels, temb_channels=temb_channels, groups=groups)
        levels = int(math.log2(config.patch_size))
        self.upsamplers = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(levels))
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels=2 * channels, out_channels=channels, temb_channels=temb_channels, groups=groups)
            for _ in range(levels)
        )
        self.norm_out = nn.GroupNorm(groups, channels)
        self.conv_out = nn.Conv2d(channels, config.latent_channels, 3, padding=1)

    def forward(self, tokens: torch.Tensor, state: dict, timesteps: torch.Tensor) -> torch.Tensor:
        batch, _, hidden = tokens.shape
        h = tokens.transpose(1, 2).reshape(batch, hidden, self.grid, self.grid)  # (I, hidden, g, g)
        temb = state["temb"]
        h = self.mid(self.proj_in(h), temb)
        for up, resnet, skip in zip(self.upsamplers, self.resnets, reversed(state["skips"])):
            h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # 2x nearest, then a 3x3 convolution
            h = resnet(torch.cat([h, skip], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(h)))


def build_patch_modules(config: TransfusionConfig) -> tuple[nn.Module, nn.Module]:
    """(embedding, head) for `config.patch_encoder`."""
    if config.patch_encoder == "unet":
        return UNetPatchEmbedding(config), UNetPatchHead(config)
    return LinearPatchEmbedding(config), LinearPatchHead(config)


__all__ = ["LinearPatchEmbedding", "LinearPatchHead", "UNetPatchEmbedding", "UNetPatchHead", "build_patch_modules"]
