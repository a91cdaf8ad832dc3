"""A small StyleGAN2-style discriminator (Karras et al. 2020, "residual" D) and the GAN losses of ViT-VQGAN training.

ViT-VQGAN (section 3.3) trains its tokenizer against a StyleGAN discriminator. This one keeps what matters at small
resolutions and drops what needs custom kernels: from-RGB 1x1 conv, residual blocks `(conv3x3, lrelu, conv3x3,
lrelu, avg-pool 2) + (avg-pool 2, conv1x1)` scaled by 1/sqrt(2), channels doubling as the resolution halves, a
minibatch standard-deviation feature, a 3x3 conv and two linear layers to one logit per image. Not kept: equalised
learning rate, blurred (FIR) resampling, R1 regularisation.

It is a training-only network: it lives in `ViTVQGANForAdversarialTraining`, never in a `ViTVQGAN` checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


GAN_LOSSES = ("non_saturating", "hinge")


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append one channel holding, for each image, the mean standard deviation of the features over its group of
    `group_size` images (StyleGAN's minibatch-stddev layer; lets D see the variety of a batch).

    The group is the largest divisor of the batch size that is <= `group_size`; image n is in column n % M of the
    (G, M) grouping, as in StyleGAN2. (B, C, H, W) -> (B, C + 1, H, W)."""
    batch, channels, height, width = x.shape
    group = max(d for d in range(1, min(group_size, batch) + 1) if batch % d == 0)
    y = x.float().view(group, -1, channels, height, width)  # (G, M, C, H, W)
    y = (y - y.mean(dim=0)).pow(2).mean(dim=0).add(1e-8).sqrt()  # (M, C, H, W)
    y = y.mean(dim=(1, 2, 3))  # (M,)
    y = y.view(1, -1, 1, 1, 1).expand(group, -1, 1, height, width).reshape(batch, 1, height, width)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual down-sampling block: (B, C_in, H, W) -> (B, C_out, H / 2, W / 2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.avg_pool2d(F.leaky_relu(self.conv2(h), 0.2), 2)
        return (h + self.skip(F.avg_pool2d(x, 2))) / math.sqrt(2)


class StyleGANDiscriminator(nn.Module):
    """(B, C, S, S) images in [-1, 1] -> (B,) real/fake logits.

    Args:
        image_size: side S of the images; blocks halve it while it is even and above 4.
        num_channels: image channels.
        base_channels: width at full resolution; doubles at each block up to `max_channels`.
        max_channels: widest layer.
        mbstd_group_size: group size of the minibatch-stddev feature (0 disables it).
    """

    def __init__(
        self,
        image_size: int,
        num_channels: int = 3,
        base_channels: int = 32,
        max_channels: int = 256,
        mbstd_group_size: int = 4,
    ):
        super().__init__()
        for name, value in (
            ("image_size", image_size),
            ("num_channels", num_channels),
            ("base_channels", base_channels),
            ("max_channels", max_channels),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if image_size < 4:
            raise ValueError(f"`image_size` must be >= 4, got {image_size}.")
        if mbstd_group_size < 0:
            raise ValueError(f"`mbstd_group_size` must be >= 0 (0 disables it), got {mbstd_group_size}.")
        self.image_size, self.mbstd_group_size = image_size, mbstd_group_size
        self.from_rgb = nn.Conv2d(num_channels, min(base_channels, max_channels), 1)
        blocks, size, width = [], image_size, min(base_channels, max_channels)
        while size > 4 and size % 2 == 0:
            out = min(width * 2, max_channels)
            blocks.append(DiscriminatorBlock(width, out))
            size, width = size // 2, out
        self.blocks = nn.ModuleList(blocks)
        self.final_conv = nn.Conv2d(width + (1 if mbstd_group_size else 0), width, 3, padding=1)
        self.final_linear = nn.Linear(width * size * size, width)
        self.output = nn.Linear(width, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"`pixel_values` must be (batch, channels, {self.image_size}, {self.image_size}), "
                f"got {tuple(pixel_values.shape)}."
            )
        x = F.leaky_relu(self.from_rgb(pixel_values), 0.2)  # (B, C0, S, S)
        for block in self.blocks:
            x = block(x)  # (B, C_i, S / 2^i, S / 2^i)
        if self.mbstd_group_size:
            x = minibatch_stddev(x, self.mbstd_group_size)
        x = F.leaky_relu(self.final_conv(x), 0.2)
        x = F.leaky_relu(self.final_linear(x.flatten(1)), 0.2)  # (B, width)
        return self.output(x).squeeze(-1)  # (B,)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """D's loss: non-saturating `softplus(-D(x)) + softplus(D(x_hat))`, or hinge `relu(1 - D(x)) + relu(1 + D(x_hat))`."""
    if kind == "non_saturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"`gan_loss` must be one of {GAN_LOSSES}, got {kind!r}.")


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """G's loss: non-saturating `softplus(-D(x_hat))`, or hinge `-D(x_hat)`."""
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"`gan_loss` must be one of {GAN_LOSSES}, got {kind!r}.")


__all__ = ["GAN_LOSSES", "StyleGANDiscriminator", "discriminator_loss", "generator_loss", "minibatch_stddev"]
