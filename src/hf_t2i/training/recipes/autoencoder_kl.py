"""`autoencoder_kl`: a small diffusers `AutoencoderKL` trained on our data, the continuous image tokenizer of Fluid and
Transfusion (no pretrained VAE can be had offline; at 32-64 px a small one trains in minutes).

Loss: L1 or L2 reconstruction of a posterior sample + `kl_weight` x KL(q(z|x) || N(0, I)) (Stable Diffusion's VAE
uses ~1e-6 with L1 + LPIPS + GAN; without the GAN a somewhat larger weight keeps the latents tidy), + optionally
`perceptual_weight` x the Inception-stem perceptual loss of the ViT-VQGAN recipe.

At export the recipe measures the std of the posterior means on training images and stores
`scaling_factor = 1 / std` in the VAE config (as diffusers' SD VAEs carry 0.18215), so `(z - shift) * scaling_factor`
has unit variance: what Fluid's and Transfusion's diffusion losses assume. Held-out MSE and PSNR are reported.

    hf-t2i train autoencoder_kl --output-dir runs/vae --image-size 32 --max-steps 3000
    hf-t2i train fluid --vae-path runs/vae/final ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..recipe import Recipe, register_recipe
from .common import ImageTextDataConfig, first_rows, load_image_text_splits, with_pixel_values


@dataclass
class AutoencoderKLRecipeConfig(ImageTextDataConfig):
    image_size: int = field(default=32, metadata={"help": "training resolution (square)"})
    block_out_channels: str = field(
        default="32,64,64", metadata={"help": "comma-separated widths; len - 1 halvings (32px, 3 widths -> 8x8)"}
    )
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 16
    mid_block_attention: bool = field(default=False, metadata={"help": "self-attention in the middle blocks"})
    reconstruction_loss: str = field(default="l1", metadata={"help": "l1 | l2"})
    kl_weight: float = field(default=1e-4, metadata={"help": "weight of the KL term (per latent value)"})
    perceptual_weight: float = field(default=0.0, metadata={"help": "Inception-stem perceptual loss weight (0: off)"})
    scale_num_images: int = field(default=1024, metadata={"help": "training images used to measure the latent std"})


class AutoencoderKLWithLoss(nn.Module):
    """The VAE with its training loss in `forward`, so DDP sees one forward call per step. `vae` is what is saved."""

    def __init__(self, vae, config: AutoencoderKLRecipeConfig, perceptual: nn.Module | None = None):
        super().__init__()
        self.vae = vae
        self.recipe_config = config
        self.perceptual = perceptual

    def forward(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        posterior = self.vae.encode(pixel_values).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator)).sample
        error = reconstruction - pixel_values
        rec = error.abs().mean() if self.recipe_config.reconstruction_loss == "l1" else error.pow(2).mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent value
        loss = rec + self.recipe_config.kl_weight * kl
        out = {"reconstruction_loss": rec, "kl": kl}
        if self.perceptual is not None and self.recipe_config.perceptual_weight > 0:
            out["perceptual_loss"] = self.perceptual(reconstruction, pixel_values)
            loss = loss + self.recipe_config.perceptual_weight * out["perceptual_loss"]
        out["loss"] = loss
        return out


def psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error on [-1, 1] pixels (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@register_recipe
class AutoencoderKLRecipe(Recipe):
    """Train a diffusers `AutoencoderKL`; export it with its latent `scaling_factor`."""

    name = "autoencoder_kl"
    config_class = AutoencoderKLRecipeConfig
    training_defaults = {
        "learning_rate": 1e-3,
        "train_batch_size": 32,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 100,
        "max_grad_norm": 1.0,
        "ema_decay": 0.999,
    }

    def __init__(self, config=None):
        super().__init__(config)
        c = self.config
        if c.reconstruction_loss not in ("l1", "l2"):
            raise ValueError(f"`reconstruction_loss` must be 'l1' or 'l2', got {c.reconstruction_loss!r}.")
        if c.kl_weight < 0 or c.perceptual_weight < 0:
            raise ValueError(
                f"`kl_weight` and `perceptual_weight` must be >= 0, got {c.kl_weight} and {c.perceptual_weight}."
            )
        widths = self.widths
        if any(w % c.norm_num_groups for w in widths):
            raise ValueError(
                f"Every `block_out_channels` entry ({widths}) must be divisible by `norm_num_groups` ({c.norm_num_groups})."
            )
        if c.image_size % 2 ** (len(widths) - 1):
            raise ValueError(f"`image_size` ({c.image_size}) must be divisible by 2 ** (len(block_out_channels) - 1).")

    @property
    def widths(self) -> list[int]:
        try:
            return [int(w) for w in self.config.block_out_channels.split(",") if w.strip()]
        except ValueError as error:
            raise ValueError(
                f"`block_out_channels` must be comma-separated ints such as '32,64,64', got {self.config.block_out_channels!r}."
            ) from error

    def vae_config(self) -> dict:
        from ...models.fluid.configuration_fluid import small_vae_config

        c = self.config
        widths = self.widths
        config = small_vae_config(c.image_size)
        config.update(
            block_out_channels=widths,
            down_block_types=["DownEncoderBlock2D"] * len(widths),
            up_block_types=["UpDecoderBlock2D"] * len(widths),
            latent_channels=c.latent_channels,
            layers_per_block=c.layers_per_block,
            norm_num_groups=c.norm_num_groups,
            mid_block_add_attention=c.mid_block_attention,
        )
        return config

    def build_model(self):
        from diffusers import AutoencoderKL

        perceptual = None
        if self.config.perceptual_weight > 0:
            from ..losses.perceptual import InceptionPerceptualLoss

            perceptual = InceptionPerceptualLoss.from_pretrained_inception()
        return AutoencoderKLWithLoss(AutoencoderKL(**self.vae_config()), self.config, perceptual)

    def _splits(self):
        if not hasattr(self, "_data"):
            self._data = load_image_text_splits(self.config)
        return self._data

    def build_train_dataset(self):
        return with_pixel_values(self._splits()[0], self.config.image_size)

    def build_eval_dataset(self):
        return with_pixel_values(self._splits()[1], self.config.image_size)

    def training_step(self, model, batch, step):
        out = model(batch["pixel_values"], generator=self.generator)
        return out["loss"], {k: v.detach() for k, v in out.items() if k != "loss"}

    @torch.no_grad()
    def _rows(self, dataset, limit: int):
        device = self.accelerator.device if self.accelerator is not None else torch.device("cpu")
        for start in range(0, min(len(dataset), limit), 64):
            yield dataset[start : min(start + 64, limit)]["pixel_values"].to(device)

    @torch.no_grad()
    def evaluate(self, model, step):
        """Held-out reconstruction MSE / PSNR of the posterior mean, and the latents' std."""
        vae = model.vae
        total, count = 0.0, 0
        for pixels in self._rows(self.build_eval_dataset(), 10**9):
            reconstruction = vae.decode(vae.encode(pixels).latent_dist.mode()).sample.clamp(-1, 1)
            total += F.mse_loss(reconstruction, pixels, reduction="sum").item()
            count += pixels.numel()
        mse = total / count
        return {"mse": mse, "psnr": psnr(mse), "latent_std": self.latent_std(vae)}

    @torch.no_grad()
    def latent_std(self, vae) -> float:
        """Std of the posterior means over `scale_num_images` training images (all latent values pooled)."""
        c = self.config
        sample = with_pixel_values(first_rows(self._splits()[0], c.scale_num_images), c.image_size)
        latents = [vae.encode(p).latent_dist.mode().float() for p in self._rows(sample, c.scale_num_images)]
        return torch.cat([z.flatten() for z in latents]).std().item()

    def sample_images(self, model, step):
        """Eval images (top row) over their reconstructions (bottom row)."""
        from ...image_processing import T2IImageProcessor

        pixels = next(self._rows(self.build_eval_dataset(), 8))
        vae = model.vae
        with torch.no_grad():
            reconstruction = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
        return T2IImageProcessor.postprocess(torch.cat([pixels, reconstruction]), "pil")

    def save_pretrained(self, model, output_dir):
        """Export the `AutoencoderKL` alone, with `scaling_factor = 1 / latent std` in its config."""
        vae = model.vae
        vae.register_to_config(scaling_factor=1.0 / max(self.latent_std(vae), 1e-6), shift_factor=None)
        vae.save_pretrained(output_dir)
