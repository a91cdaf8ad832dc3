"""`transfusion`: one transformer trained on interleaved caption / image sequences (Zhou et al. 2024).

- Images are encoded ONCE by a frozen diffusers `AutoencoderKL` (`--vae-path`, e.g. the `autoencoder_kl` recipe's
  export; its `scaling_factor` is applied) and the scaled latents are cached on disk with `datasets.map`, together with
  the caption ids (a byte-level BPE trained on the captions, plus `<boi>`, `<eoi>`, `<image>`).
- Each training example is written caption -> image (`<s> caption </s> <boi> image <eoi>`) or, with probability
  `image_first_prob` (paper: 20%), image -> caption (`<s> <boi> image <eoi> caption </s>`), the noise of those
  images limited to t < `image_first_max_timestep` (paper: 500). Captions of caption-first examples are dropped with
  probability `caption_dropout` so classifier-free guidance works. These draws come from the loop's generator.
- Loss: `L_LM + 5 * L_DDPM` (the model's forward); L_DDPM on the noise, or on the velocity with
  `--prediction-type v_prediction`. Optimiser defaults follow the paper's (AdamW beta = (0.9, 0.95),
  eps 1e-8, weight decay 0.1, clip 1.0, cosine decay to 5% of the peak) at a small model's learning rate and warm-up.

    hf-t2i train autoencoder_kl --output-dir runs/vae --image-size 32 --max-steps 3000
    hf-t2i train transfusion --vae-path runs/vae/final --image-size 32 --output-dir runs/transfusion --max-steps 6000
    hf-t2i train transfusion --pretrained-model-name-or-path transfusion --output-dir runs/more --max-steps 6000

With `--pretrained-model-name-or-path` a run fine-tunes a trained Transfusion model (a saved folder, a Hub id or a
shipped checkpoint's name): its weights, architecture, text tokenizer, text length, image size and VAE are used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..recipe import Recipe, register_recipe
from .common import (
    ImageTextDataConfig,
    cached_encode,
    fingerprint,
    frozen_part_folder,
    load_image_text_splits,
    load_pretrained,
    refuse_replace_without_pretrained,
    refuse_tokenizer_path,
    replace_image_tokenizer_field,
    training_captions,
    warn_ignored_settings,
)


#: the settings a fine-tuning run takes from the pretrained model instead of the command line
ARCHITECTURE_FIELDS = (
    "image_size",
    "patch_size",
    "patch_encoder",
    "unet_channels",
    "unet_norm_groups",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "prediction_type",
    "position_embedding_init",  # an initialisation: what the pretrained weights started from
)


@dataclass
class TransfusionRecipeConfig(ImageTextDataConfig):
    pretrained_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "fine-tune a trained Transfusion model (a folder that `hf-t2i train` or `export` wrote, a Hub id, "
            "or a shipped checkpoint's name such as 'transfusion'): its weights, architecture, text tokenizer, text "
            "length, image size and VAE are used, and the size arguments are ignored"
        },
    )
    vae_path: str = field(default="", metadata={"help": "a diffusers AutoencoderKL folder (e.g. autoencoder_kl's)"})
    replace_image_tokenizer: bool = replace_image_tokenizer_field()
    tokenizer_path: str | None = field(
        default=None, metadata={"help": "a Hugging Face tokenizer; default: train a byte-level BPE on the captions"}
    )
    text_vocab_size: int = field(default=1024, metadata={"help": "model vocabulary incl. <boi> <eoi> <image>"})
    text_seq_len: int = field(default=32, metadata={"help": "longest caption in tokens (longer ones are cut)"})
    patch_size: int = 2
    patch_encoder: str = field(default="linear", metadata={"help": "linear | unet"})
    unet_channels: int = 64
    unet_norm_groups: int = 32
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    hidden_dropout: float = 0.0
    diffusion_loss_weight: float = field(default=5.0, metadata={"help": "lambda of L_LM + lambda * L_DDPM"})
    prediction_type: str = field(
        default="epsilon",
        metadata={"help": "epsilon (the paper: predict the noise) | v_prediction (predict the velocity)"},
    )
    timestep_sampling: str = field(
        default="uniform",
        metadata={
            "help": "uniform (the paper) | high_noise (density ∝ t) | high_noise_quadratic (∝ t²): how training draws "
            "each image's timestep "
            "(TransfusionConfig.timestep_sampling); a training setting, also set on the model when fine-tuning"
        },
    )
    position_embedding_init: str = field(
        default="normal",
        metadata={
            "help": "normal | sincos_2d: how the patches' learned row + column positions start (TransfusionConfig); "
            "a new model's setting, kept from the model when fine-tuning"
        },
    )
    caption_dropout: float = field(default=0.1, metadata={"help": "probability of the empty caption (CFG)"})
    image_first_prob: float = field(default=0.2, metadata={"help": "share of image -> caption examples"})
    image_first_max_timestep: int = field(default=500, metadata={"help": "noise limit of images before captions"})
    cache_dir: str | None = field(default=None, metadata={"help": "where pre-encoded latents are cached"})
    sample_prompts: str = field(default="", metadata={"help": "'|'-separated prompts for sample grids"})
    sample_guidance_scale: float = 3.0
    sample_inference_steps: int = 30


@register_recipe
class TransfusionRecipe(Recipe):
    """Train `TransfusionForConditionalGeneration` on cached VAE latents; export a `TransfusionPipeline` folder."""

    name = "transfusion"
    config_class = TransfusionRecipeConfig
    training_defaults = {
        "learning_rate": 5e-4,
        "train_batch_size": 32,
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-8,
        "weight_decay": 0.1,
        "lr_scheduler": "cosine",
        "min_lr_ratio": 0.05,
        "lr_warmup_steps": 200,
        "max_grad_norm": 1.0,
        "ema_decay": 0.999,
    }

    def __init__(self, config=None):
        from ...configuration_utils import check_choice, check_position_embedding_init
        from ...models.transfusion.configuration_transfusion import TIMESTEP_SAMPLINGS, check_prediction_type

        super().__init__(config)
        c = self.config
        check_prediction_type(c.prediction_type)  # here too: TransfusionConfig is built only after the data loads
        check_choice("timestep_sampling", c.timestep_sampling, TIMESTEP_SAMPLINGS)
        check_position_embedding_init(c.position_embedding_init)
        self.pretrained_pipeline = None
        refuse_replace_without_pretrained(c)
        if c.pretrained_model_name_or_path:
            self._start_from_pretrained()
        if not c.vae_path:
            raise ValueError(
                "`vae_path` is required: the folder of a trained diffusers AutoencoderKL (e.g. the `autoencoder_kl` "
                "recipe's final export), unless `pretrained_model_name_or_path` names a Transfusion model to fine-tune."
            )
        for name in ("caption_dropout", "image_first_prob"):
            if not 0 <= getattr(c, name) < 1:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(c, name)}.")

    def _start_from_pretrained(self) -> None:
        """Load the model to fine-tune and take from it what must match its weights: the text tokenizer and processor,
        the text length, the sizes and, where no `vae_path` is given, its VAE, saved once into the package cache so
        that the cached latents and their fingerprint work as for a fresh run."""
        from ...pipelines.transfusion.pipeline_transfusion import TransfusionPipeline

        c = self.config
        name = c.pretrained_model_name_or_path
        refuse_tokenizer_path(c.tokenizer_path, name)
        pipe = load_pretrained(TransfusionPipeline, name, self.name)
        model, processor = pipe.model, pipe.processor
        kept = {f: getattr(model.config, f) for f in ARCHITECTURE_FIELDS}
        warn_ignored_settings(c, kept, name)
        for field_name, value in kept.items():
            setattr(c, field_name, value)
        c.text_seq_len = processor.tokenizer.model_max_length
        model.config.diffusion_loss_weight = c.diffusion_loss_weight  # training settings, not the architecture's
        model.config.timestep_sampling = c.timestep_sampling
        self.pretrained_pipeline = pipe
        self._tokenizer, self._processor, self._model_config = processor.tokenizer, processor, model.config
        c.vae_path = frozen_part_folder(
            model.vae, "vae_path", c.vae_path, self.load_vae, c.cache_dir, name, replace=c.replace_image_tokenizer
        )

    # -- model and processor ------------------------------------------------------------------------------------------
    def _splits(self):
        if not hasattr(self, "_data"):
            self._data = load_image_text_splits(self.config)
        return self._data

    def load_vae(self):
        """The trained `AutoencoderKL` in `vae_path`."""
        from ...models.image_tokenizers import is_continuous_tokenizer, load_image_tokenizer

        vae = load_image_tokenizer(self.config.vae_path)
        if not is_continuous_tokenizer(vae):
            raise ValueError(
                f"`vae_path` {self.config.vae_path!r} holds {type(vae).__name__} weights, but `{self.name}` needs "
                "an AutoencoderKL."
            )
        return vae

    def load_text_tokenizer(self):
        from transformers import AutoTokenizer

        from ...models.transfusion.processing_transfusion import IMAGE_SPECIAL_TOKENS, add_image_tokens
        from ...tokenization import train_bpe_tokenizer

        c = self.config
        if c.tokenizer_path:
            tokenizer = AutoTokenizer.from_pretrained(c.tokenizer_path, model_max_length=c.text_seq_len)
        else:
            texts = training_captions(c, self._splits()[0])
            size = c.text_vocab_size - len(IMAGE_SPECIAL_TOKENS)
            tokenizer = train_bpe_tokenizer(texts, vocab_size=size, model_max_length=c.text_seq_len)
        return add_image_tokens(tokenizer)

    def model_config(self):
        """The `TransfusionConfig` of this run (sizes from the flags, ids from the tokenizer, VAE from `vae_path`)."""
        from ...models.transfusion import TransfusionConfig

        if not hasattr(self, "_model_config"):
            c = self.config
            vae_config = self.load_vae().config
            tokenizer = self.text_tokenizer
            ids = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
            ids.update({n: tokenizer.convert_tokens_to_ids(t) for n, t in self._image_token_names().items()})
            factor = 2 ** (len(vae_config.block_out_channels) - 1)
            num_patches = (c.image_size // factor // c.patch_size) ** 2 if c.image_size % factor == 0 else 0
            self._model_config = TransfusionConfig(
                vae_config=vae_config,
                image_size=c.image_size,
                patch_size=c.patch_size,
                patch_encoder=c.patch_encoder,
                unet_channels=c.unet_channels,
                unet_norm_groups=c.unet_norm_groups,
                vocab_size=len(tokenizer),
                hidden_size=c.hidden_size,
                num_hidden_layers=c.num_hidden_layers,
                num_attention_heads=c.num_attention_heads,
                intermediate_size=c.intermediate_size,
                hidden_dropout=c.hidden_dropout,
                max_position_embeddings=c.text_seq_len + num_patches + 8,  # <s> caption </s> <boi> image <eoi>
                diffusion_loss_weight=c.diffusion_loss_weight,
                prediction_type=c.prediction_type,
                timestep_sampling=c.timestep_sampling,
                position_embedding_init=c.position_embedding_init,
                **ids,
            )
        return self._model_config

    @staticmethod
    def _image_token_names() -> dict[str, str]:
        from ...models.transfusion.processing_transfusion import BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN

        return {"boi_token_id": BOI_TOKEN, "eoi_token_id": EOI_TOKEN, "image_token_id": IMAGE_TOKEN}

    @property
    def text_tokenizer(self):
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = self.load_text_tokenizer()
        return self._tokenizer

    @property
    def processor(self):
        if not hasattr(self, "_processor"):
            from ...image_processing import T2IImageProcessor
            from ...models.transfusion import TransfusionProcessor

            image_processor = T2IImageProcessor(image_size=self.config.image_size)
            num_patches = self.model_config().num_image_tokens
            self._processor = TransfusionProcessor(image_processor, self.text_tokenizer, num_image_tokens=num_patches)
        return self._processor

    def build_model(self):
        from ...models.transfusion import TransfusionForConditionalGeneration

        if self.pretrained_pipeline is not None:
            model = self.pretrained_pipeline.model
            model.vae.requires_grad_(False)
            return model
        model = TransfusionForConditionalGeneration(self.model_config())
        model.vae.load_state_dict(self.load_vae().state_dict())
        model.vae.requires_grad_(False)
        return model

    # -- data ---------------------------------------------------------------------------------------------------------
    def _encoded(self, dataset, split: str):
        """Caption ids and scaled VAE latents of every pair, computed once and cached on disk."""
        from ...image_processing import T2IImageProcessor
        from ...models.transfusion import TransfusionForConditionalGeneration

        c = self.config
        device = self.accelerator.device if self.accelerator is not None else torch.device("cpu")
        processor = self.processor
        encoder = TransfusionForConditionalGeneration(self.model_config())
        encoder.vae.load_state_dict(self.load_vae().state_dict())
        encoder = encoder.to(device).eval()
        image_processor = T2IImageProcessor(image_size=c.image_size)

        def encode(batch):
            pixels = image_processor(batch["image"], return_tensors="pt")["pixel_values"].to(device)
            return {
                "caption_ids": processor.text_ids(batch["text"], truncation=True, argument="text"),
                "image_latents": encoder.encode_images(pixels).cpu().numpy(),
            }

        with open(os.path.join(c.vae_path, "diffusion_pytorch_model.safetensors"), "rb") as f:
            weights = f.read()
        key = fingerprint(
            weights, processor.tokenizer.backend_tokenizer.to_str(), str(c.text_seq_len), str(c.image_size)
        )
        return cached_encode(dataset, encode, c.cache_dir, "latents", f"{self.name}-{split}-{key}", batch_size=128)

    def build_train_dataset(self):
        return self._encoded(self._splits()[0], "train")

    def build_eval_dataset(self):
        return self._encoded(self._splits()[1], "eval")

    def collate_fn(self, examples):
        """Latents stacked; caption ids right-padded with -1 (the interleaved sequences are written per step, with the
        loop's generator choosing order and caption dropout)."""
        length = max(len(e["caption_ids"]) for e in examples)
        captions = torch.full((len(examples), length), -1, dtype=torch.long)
        for i, e in enumerate(examples):
            captions[i, : len(e["caption_ids"])] = torch.as_tensor(e["caption_ids"], dtype=torch.long)
        return {"caption_ids": captions, "image_latents": torch.stack([e["image_latents"] for e in examples])}

    # -- training -----------------------------------------------------------------------------------------------------
    def sequences(self, batch, generator: torch.Generator | None, num_train_timesteps: int) -> dict[str, torch.Tensor]:
        """The interleaved training batch: order and caption dropout drawn from `generator` (None: evaluation,
        every other example image-first, no dropout)."""
        c = self.config
        # the sequences are written on the host: read the captions and the draws in one transfer each, never per row
        captions = [[i for i in row if i >= 0] for row in batch["caption_ids"].tolist()]
        rows = len(captions)
        if generator is None:
            image_first, drop = [i % 2 == 1 for i in range(rows)], [False] * rows
        else:
            first = torch.rand(rows, generator=generator, device=generator.device) < c.image_first_prob
            dropped = torch.rand(rows, generator=generator, device=generator.device) < c.caption_dropout
            image_first, drop = torch.stack([first, dropped]).tolist()
        out = self.processor.build_training_batch(
            captions,
            batch["image_latents"],
            image_first=image_first,
            drop_caption=drop,
            image_first_max_timestep=c.image_first_max_timestep,
            num_train_timesteps=num_train_timesteps,
        )
        device = batch["image_latents"].device
        return {k: v.to(device) for k, v in out.items()}

    def training_step(self, model, batch, step):
        config = self.accelerator.unwrap_model(model).config if self.accelerator is not None else model.config
        if model.training:
            generator = self.generator
            inputs = self.sequences(batch, generator, config.num_train_timesteps)
        else:  # held-out loss: fixed orders and noise
            device = batch["image_latents"].device
            generator = torch.Generator(device).manual_seed(0)
            inputs = self.sequences(batch, None, config.num_train_timesteps)
        out = model(**inputs, generator=generator)
        return out.loss, {"lm_loss": out.lm_loss.detach(), "diffusion_loss": out.diffusion_loss.detach()}

    @torch.no_grad()
    def evaluate(self, model, step):
        """Held-out LM and diffusion losses (unweighted; fixed orders and noise, see `training_step`)."""
        dataset = self.build_eval_dataset()
        device = self.accelerator.device
        totals, count = {"lm_loss": 0.0, "diffusion_loss": 0.0}, 0
        for start in range(0, len(dataset), 64):
            rows = [dataset[i] for i in range(start, min(start + 64, len(dataset)))]
            batch = {k: v.to(device) for k, v in self.collate_fn(rows).items()}
            _, metrics = self.training_step(model, batch, step)
            for name in totals:
                totals[name] += metrics[name] * len(rows)
            count += len(rows)
        return {name: total / count for name, total in totals.items()}

    # -- samples and export -------------------------------------------------------------------------------------------
    def pipeline(self, model):
        from ...pipelines.transfusion.pipeline_transfusion import TransfusionPipeline

        pipe = TransfusionPipeline(model=model, processor=self.processor)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample_images(self, model, step):
        c = self.config
        prompts = [p for p in c.sample_prompts.split("|") if p] or list(self._splits()[1]["text"][:8])
        pipe = self.pipeline(model)
        return pipe(
            prompts,
            guidance_scale=c.sample_guidance_scale,
            num_inference_steps=c.sample_inference_steps,
            generator=torch.Generator().manual_seed(0),
        ).images

    def save_pretrained(self, model, output_dir):
        self.pipeline(model).save_pretrained(output_dir)


__all__ = ["TransfusionRecipe", "TransfusionRecipeConfig"]
