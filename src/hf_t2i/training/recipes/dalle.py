"""DALL-E's two training stages (Ramesh et al. 2021, section 2):

- `dalle_dvae`: the discrete VAE on images, Gumbel-softmax temperature annealed 1 -> 1/16 along a half cosine
  and KL weight beta = 6.6 (appendix A.2). The paper raises beta from 0 over the first 5000 updates; on our small
  models that warm-up lets the encoder collapse onto one or two codes within ~30 Adam steps (measured on shapes
  at 32 px: KL pinned at 64 ln 1024, 2 codes used), while beta = 6.6 from the first step keeps the codebook in use,
  so `kl_warmup_steps` defaults to 0. `--pretrained-model-name-or-path DIR --no-train-encoder` continues a trained
  dVAE with its encoder frozen, training the decoder on the argmax codes that `encode` gives the prior instead of
  Gumbel samples (not in the paper; with a spread-out posterior the two differ at most positions).
- `dalle_prior`: the transformer on `[caption BPE ; image tokens]`, with the image tokens of every training image
  pre-encoded ONCE by the frozen dVAE (argmax, no Gumbel noise) and cached on disk with `datasets.map`.
  Captions are dropped with probability `caption_dropout` so classifier-free guidance works at sampling time.

    hf-t2i train dalle_dvae --output-dir runs/dvae --max-steps 4000
    hf-t2i train dalle_prior --dvae-path runs/dvae/final --output-dir runs/prior --max-steps 6000
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..recipe import Recipe, register_recipe
from .common import (
    ImageTextDataConfig,
    cosine_ramp,
    load_image_text_splits,
    pretrained_tokenizer,
    reconstruction_metrics_on,
    stack_column,
    with_pixel_values,
)
from .token_prior import TokenPriorRecipe, TokenPriorRecipeConfig


# ----------------------------------------------------------------------------------------------------- stage 1
@dataclass
class DalleDVAERecipeConfig(ImageTextDataConfig):
    vocab_size: int = field(default=1024, metadata={"help": "codebook size K"})
    hidden_size: int = field(default=64, metadata={"help": "n_hid, width of the first group"})
    channel_multipliers: str = field(default="1,2,4", metadata={"help": "group widths; grid = size / 2**(n-1)"})
    num_blocks_per_group: int = 2
    reconstruction_loss: str = field(default="logit_laplace", metadata={"help": "logit_laplace | mse"})
    temperature_start: float = 1.0
    temperature_end: float = field(default=1 / 16, metadata={"help": "final Gumbel-softmax temperature"})
    temperature_anneal_steps: int = 2500
    kl_weight: float = field(default=6.6, metadata={"help": "final KL weight beta"})
    kl_warmup_steps: int = field(default=0, metadata={"help": "steps to raise beta from 0 (0: constant beta)"})
    straight_through: bool = field(default=False, metadata={"help": "decode hard one-hot codes in training"})
    diversity_weight: float = field(
        default=0.0, metadata={"help": "weight of the codebook-usage entropy term (0 = the paper; see DalleDVAE)"}
    )
    pretrained_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "continue from a trained DalleDVAE (a folder that `hf-t2i train` wrote, or a Hub id): its weights, "
            "architecture and image size are used, and the size arguments are ignored"
        },
    )
    train_encoder: bool = field(
        default=True,
        metadata={
            "help": "train the encoder too; --no-train-encoder freezes it and fine-tunes the decoder alone on the "
            "argmax codes that `encode` gives the prior (no Gumbel noise), from --pretrained-model-name-or-path"
        },
    )


@register_recipe
class DalleDVAERecipe(Recipe):
    """Stage 1: train `DalleDVAE` on images."""

    name = "dalle_dvae"
    config_class = DalleDVAERecipeConfig
    training_defaults = {
        "learning_rate": 5e-4,
        "train_batch_size": 32,
        "max_grad_norm": 1.0,
        "ema_decay": 0.999,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 100,
    }

    def __init__(self, config=None):
        super().__init__(config)
        from ...models.dalle_dvae import DalleDVAE

        self.pretrained_model = pretrained_tokenizer(self.config, DalleDVAE, self.name, self._architecture)

    @staticmethod
    def _architecture(model) -> dict:
        """The settings a fine-tuning run takes from the pretrained dVAE (architecture and image size)."""
        m = model.config
        return {
            "image_size": m.image_size,
            "vocab_size": m.vocab_size,
            "hidden_size": m.hidden_size,
            "channel_multipliers": ",".join(str(k) for k in m.channel_multipliers),
            "num_blocks_per_group": m.num_blocks_per_group,
            "reconstruction_loss": m.reconstruction_loss,
        }

    def build_model(self):
        from ...models.dalle_dvae import DalleDVAE, DalleDVAEConfig

        c = self.config
        if self.pretrained_model is not None:
            model = self.pretrained_model
            model.encoder.requires_grad_(c.train_encoder)
            return model
        multipliers = [int(m) for m in c.channel_multipliers.split(",")]
        config = DalleDVAEConfig(
            image_size=c.image_size,
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            channel_multipliers=multipliers,
            num_blocks_per_group=c.num_blocks_per_group,
            reconstruction_loss=c.reconstruction_loss,
        )
        return DalleDVAE(config)

    def _splits(self):
        if not hasattr(self, "_data"):
            self._data = load_image_text_splits(self.config)
        return self._data

    def build_train_dataset(self):
        return with_pixel_values(self._splits()[0], self.config.image_size)

    def build_eval_dataset(self):
        return with_pixel_values(self._splits()[1], self.config.image_size)

    def schedules(self, step: int) -> tuple[float, float]:
        c = self.config
        temperature = cosine_ramp(step, c.temperature_anneal_steps, c.temperature_start, c.temperature_end)
        kl_weight = cosine_ramp(step, c.kl_warmup_steps, 0.0, c.kl_weight)
        return temperature, kl_weight

    def training_step(self, model, batch, step):
        temperature, kl_weight = self.schedules(step)
        diversity_weight = self.config.diversity_weight
        if not self.config.train_encoder:  # the KL and diversity terms act on the encoder alone: nothing to train
            kl_weight = diversity_weight = 0.0
        generator = self.generator if model.training else None
        out = model(
            batch["pixel_values"],
            temperature=temperature,
            kl_weight=kl_weight,
            generator=generator,
            straight_through=self.config.straight_through,
            diversity_weight=diversity_weight,
            sample_codes=self.config.train_encoder,
        )
        metrics = {
            "reconstruction_loss": out.reconstruction_loss.detach(),
            "kl": out.kl_loss.detach(),
            "diversity_loss": out.diversity_loss.detach(),
            "temperature": temperature,
            "kl_weight": kl_weight,
        }
        return out.loss, metrics

    def evaluate(self, model, step):
        return reconstruction_metrics_on(model, self.build_eval_dataset())

    def sample_images(self, model, step):
        from ...image_processing import T2IImageProcessor

        pixels = stack_column([self.build_eval_dataset()[i] for i in range(8)], "pixel_values")
        pixels = pixels.to(self.accelerator.device)
        reconstruction = model.decode(model.encode(pixels))
        return T2IImageProcessor.postprocess(torch.cat([pixels, reconstruction]), "pil")


# ----------------------------------------------------------------------------------------------------- stage 2
@dataclass
class DallePriorRecipeConfig(TokenPriorRecipeConfig):
    dvae_path: str = field(default="", metadata={"help": "a DalleDVAE folder (stage 1's final export)"})
    attention_types: str = field(default="", metadata={"help": "comma-separated per layer; default: the paper's"})


@register_recipe
class DallePriorRecipe(TokenPriorRecipe):
    """Stage 2: train `DalleForConditionalGeneration` on cached image tokens; export a `DallePipeline` folder."""

    name = "dalle_prior"
    config_class = DallePriorRecipeConfig
    image_tokenizer_names = ("DalleDVAE",)
    image_tokenizer_argument = "dvae_path"
    logged_losses = ("text_loss", "image_loss")

    def processor_class(self):
        from ...models.dalle.processing_dalle import DalleProcessor

        return DalleProcessor

    def pipeline_class(self):
        from ...pipelines.dalle.pipeline_dalle import DallePipeline

        return DallePipeline

    def build_model(self):
        if self.pretrained_pipeline is not None:
            return self.pretrained_prior()

        from ...models.dalle import DalleConfig, DalleForConditionalGeneration

        c = self.config
        dvae = self.load_image_tokenizer()
        tokenizer = self.processor.tokenizer
        config = DalleConfig(
            vq_config=dvae.config.to_dict(),
            text_vocab_size=len(tokenizer),
            text_seq_len=c.text_seq_len,
            text_pad_token_id=tokenizer.pad_token_id,
            hidden_size=c.hidden_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            intermediate_size=c.intermediate_size,
            attention_types=[t.strip() for t in c.attention_types.split(",")] if c.attention_types else None,
            conv_kernel_size=c.conv_kernel_size,
            hidden_dropout=c.hidden_dropout,
        )
        model = DalleForConditionalGeneration(config)
        model.vqmodel.load_state_dict(dvae.state_dict())
        model.vqmodel.requires_grad_(False)
        return model

    def prior_output(self, model, text, image_token_ids):
        text_vocab_size = self.accelerator.unwrap_model(model).config.text_vocab_size
        ids = torch.cat([text["input_ids"], image_token_ids + text_vocab_size], dim=1)
        return model(input_ids=ids, labels=ids, use_cache=False)
