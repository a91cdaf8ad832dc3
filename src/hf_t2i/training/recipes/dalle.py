"""DALL-E's two training stages (Ramesh et al. 2021, section 2):

- `dalle_dvae`: the discrete VAE on images, Gumbel-softmax temperature annealed 1 -> 1/16 along a half cosine
  and KL weight beta = 6.6 (appendix A.2). The paper raises beta from 0 over the first 5000 updates; on our small
  models that warm-up lets the encoder collapse onto one or two codes within ~30 Adam steps (measured on shapes
  at 32 px: KL pinned at 64 ln 1024, 2 codes used), while beta = 6.6 from the first step keeps the codebook in use,
  so `kl_warmup_steps` defaults to 0.
- `dalle_prior`: the transformer on `[caption BPE ; image tokens]`, with the image tokens of every training image
  pre-encoded ONCE by the frozen dVAE (argmax, no Gumbel noise) and cached on disk with `datasets.map`.
  Captions are dropped with probability `caption_dropout` so classifier-free guidance works at sampling time.

    hf-t2i train dalle_dvae --output-dir runs/dvae --max-steps 4000
    hf-t2i train dalle_prior --dvae-path runs/dvae/final --output-dir runs/prior --max-steps 6000
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from ..data_utils import cached_map
from ..recipe import Recipe, register_recipe
from .common import (
    ImageTextDataConfig,
    cosine_ramp,
    default_cache_dir,
    fingerprint,
    load_image_text_splits,
    stack_column,
    with_pixel_values,
)


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

    def build_model(self):
        from ...models.dalle_dvae import DalleDVAE, DalleDVAEConfig

        c = self.config
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
        generator = self.generator if model.training else None
        out = model(
            batch["pixel_values"],
            temperature=temperature,
            kl_weight=kl_weight,
            generator=generator,
            straight_through=self.config.straight_through,
        )
        metrics = {
            "reconstruction_loss": out.reconstruction_loss.item(),
            "kl": out.kl_loss.item(),
            "temperature": temperature,
            "kl_weight": kl_weight,
        }
        return out.loss, metrics

    def evaluate(self, model, step):
        return dvae_reconstruction_metrics(model, self.build_eval_dataset(), self.accelerator.device)

    def sample_images(self, model, step):
        from ...image_processing import T2IImageProcessor

        pixels = stack_column([self.build_eval_dataset()[i] for i in range(8)], "pixel_values")
        pixels = pixels.to(self.accelerator.device)
        reconstruction = model.decode(model.encode(pixels))
        return T2IImageProcessor.postprocess(torch.cat([pixels, reconstruction]), "pil")


@torch.no_grad()
def dvae_reconstruction_metrics(model, dataset, device, batch_size: int = 64) -> dict[str, float]:
    """Held-out reconstruction through hard codes (encode -> argmax -> decode), as the prior will see them.

    Returns `mse` (pixels in [0, 1]), `psnr` (dB), the codebook `perplexity` (exp of the entropy of code usage) and
    the fraction of codes used.
    """
    squared, pixels_seen, counts = 0.0, 0, torch.zeros(model.config.vocab_size, dtype=torch.float64)
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        pixels = stack_column(rows, "pixel_values").to(device)
        ids = model.encode(pixels)
        reconstruction = model.decode(ids)
        squared += (((reconstruction - pixels.float()) / 2) ** 2).sum().item()
        pixels_seen += pixels.numel()
        counts += torch.bincount(ids.flatten().cpu(), minlength=model.config.vocab_size).double()
    mse = squared / pixels_seen
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    return {
        "mse": mse,
        "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
        "perplexity": math.exp(entropy),
        "codebook_usage": (counts > 0).double().mean().item(),
    }


# ----------------------------------------------------------------------------------------------------- stage 2
@dataclass
class DallePriorRecipeConfig(ImageTextDataConfig):
    dvae_path: str = field(default="", metadata={"help": "a DalleDVAE folder (stage 1's final export)"})
    tokenizer_path: str | None = field(
        default=None, metadata={"help": "a Hugging Face tokenizer; default: train a byte-level BPE on the captions"}
    )
    text_vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary trained on the captions"})
    text_seq_len: int = 32
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    attention_types: str = field(default="", metadata={"help": "comma-separated per layer; default: the paper's"})
    conv_kernel_size: int = 11
    hidden_dropout: float = 0.0
    caption_dropout: float = field(default=0.1, metadata={"help": "probability of training on the empty caption"})
    cache_dir: str | None = field(default=None, metadata={"help": "where pre-encoded tokens are cached"})
    sample_prompts: str = field(default="", metadata={"help": "'|'-separated prompts for sample grids"})
    sample_guidance_scale: float = 3.0
    eval_num_images: int = field(
        default=0, metadata={"help": "images generated for hf_t2i.evaluation metrics at each eval (0: off)"}
    )
    eval_metrics: str = field(default="", metadata={"help": "e.g. 'compositional' or 'fid,compositional'; '' = all"})


@register_recipe
class DallePriorRecipe(Recipe):
    """Stage 2: train `DalleForConditionalGeneration` on cached image tokens; export a `DallePipeline` folder."""

    name = "dalle_prior"
    config_class = DallePriorRecipeConfig
    training_defaults = {
        "learning_rate": 5e-4,
        "train_batch_size": 32,
        "weight_decay": 0.01,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 200,
        "max_grad_norm": 1.0,
        "ema_decay": 0.999,
    }

    def __init__(self, config=None):
        super().__init__(config)
        if not self.config.dvae_path:
            raise ValueError("`dvae_path` is required: pass the folder of a trained DalleDVAE (stage 1).")
        if not 0 <= self.config.caption_dropout < 1:
            raise ValueError(f"`caption_dropout` must be in [0, 1), got {self.config.caption_dropout}.")

    # -- data and processor -------------------------------------------------------------------------------------
    def _splits(self):
        if not hasattr(self, "_data"):
            self._data = load_image_text_splits(self.config)
        return self._data

    @property
    def processor(self):
        """The `DalleProcessor`: the given tokenizer, or a byte-level BPE trained on the training captions."""
        if not hasattr(self, "_processor"):
            from transformers import AutoTokenizer

            from ...image_processing import T2IImageProcessor
            from ...models.dalle.processing_dalle import DalleProcessor
            from ...tokenization import train_bpe_tokenizer

            c = self.config
            if c.tokenizer_path:
                tokenizer = AutoTokenizer.from_pretrained(c.tokenizer_path, model_max_length=c.text_seq_len)
            else:
                tokenizer = train_bpe_tokenizer(
                    self._splits()[0]["text"], vocab_size=c.text_vocab_size, model_max_length=c.text_seq_len
                )
            self._processor = DalleProcessor(T2IImageProcessor(image_size=c.image_size), tokenizer)
        return self._processor

    def _load_dvae(self):
        from ...models.dalle_dvae import DalleDVAE

        dvae = DalleDVAE.from_pretrained(self.config.dvae_path)
        if dvae.config.image_size != self.config.image_size:
            raise ValueError(
                f"`image_size` ({self.config.image_size}) differs from the dVAE's ({dvae.config.image_size})."
            )
        return dvae

    def _encoded(self, dataset, split: str):
        """Caption ids and image tokens of every pair, computed once and cached on disk."""
        from ...image_processing import T2IImageProcessor

        c = self.config
        device = self.accelerator.device if self.accelerator is not None else torch.device("cpu")
        dvae = self._load_dvae().to(device).eval()
        processor = self.processor
        image_processor = T2IImageProcessor(image_size=c.image_size)

        def encode(batch):
            pixels = image_processor(batch["image"], return_tensors="pt")["pixel_values"].to(device)
            text = processor(text=batch["text"], truncation=True).input_ids
            return {"input_ids": text.tolist(), "image_token_ids": dvae.encode(pixels).cpu().tolist()}

        with open(os.path.join(c.dvae_path, "model.safetensors"), "rb") as f:
            weights = f.read()
        key = fingerprint(weights, processor.tokenizer.backend_tokenizer.to_str(), str(c.text_seq_len))
        encoded = cached_map(
            dataset,
            encode,
            c.cache_dir or os.path.join(default_cache_dir(), "tokens"),
            f"dalle-{split}-{key}",
            batched=True,
            batch_size=256,
            remove_columns=dataset.column_names,
        )
        return encoded.with_format("torch")

    def build_train_dataset(self):
        return self._encoded(self._splits()[0], "train")

    def build_eval_dataset(self):
        return self._encoded(self._splits()[1], "eval")

    # -- model ----------------------------------------------------------------------------------------------------
    def build_model(self):
        from ...models.dalle import DalleConfig, DalleForConditionalGeneration

        c = self.config
        dvae = self._load_dvae()
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

    def _empty_caption(self, device) -> torch.Tensor:
        if not hasattr(self, "_empty"):
            self._empty = self.processor(text=[""]).input_ids
        return self._empty.to(device)

    def training_step(self, model, batch, step):
        text, image = batch["input_ids"], batch["image_token_ids"]
        if model.training and self.config.caption_dropout > 0:
            drop = (
                torch.rand(text.shape[0], generator=self.generator, device=self.generator.device)
                < self.config.caption_dropout
            )
            text = torch.where(drop.to(text.device)[:, None], self._empty_caption(text.device), text)
        text_vocab_size = self.accelerator.unwrap_model(model).config.text_vocab_size
        ids = torch.cat([text, image + text_vocab_size], dim=1)
        out = model(input_ids=ids, labels=ids, use_cache=False)
        return out.loss, {"text_loss": out.text_loss.item(), "image_loss": out.image_loss.item()}

    def evaluate(self, model, step):
        """Held-out text and image cross-entropy (unweighted), the numbers the model card reports."""
        dataset = self.build_eval_dataset()
        device = self.accelerator.device
        totals, count = {"text_loss": 0.0, "image_loss": 0.0}, 0
        for start in range(0, len(dataset), 64):
            rows = dataset[start : start + 64]
            ids = model.build_sequence(rows["input_ids"].to(device), rows["image_token_ids"].to(device))
            out = model(input_ids=ids, labels=ids, use_cache=False)
            totals["text_loss"] += out.text_loss.item() * ids.shape[0]
            totals["image_loss"] += out.image_loss.item() * ids.shape[0]
            count += ids.shape[0]
        metrics = {k: v / count for k, v in totals.items()}
        if self.config.eval_num_images:
            from ...evaluation import evaluate_for_training

            metrics.update(
                evaluate_for_training(
                    self._pipeline(model),
                    self.config.dataset,
                    num_images=self.config.eval_num_images,
                    metrics=self.config.eval_metrics or None,
                    data_dir=self.config.data_dir,
                    data_seed=self.config.data_seed,
                    guidance_scale=self.config.sample_guidance_scale,
                )
            )
        return metrics

    def _pipeline(self, model):
        from ...pipelines.dalle.pipeline_dalle import DallePipeline

        pipe = DallePipeline(model=model, processor=self.processor)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample_images(self, model, step):
        prompts = [p for p in self.config.sample_prompts.split("|") if p] or list(self._splits()[1]["text"][:8])
        generator = torch.Generator().manual_seed(0)
        pipe = self._pipeline(model)
        return pipe(prompts, guidance_scale=self.config.sample_guidance_scale, generator=generator).images

    def save_pretrained(self, model, output_dir):
        self._pipeline(model).save_pretrained(output_dir)
