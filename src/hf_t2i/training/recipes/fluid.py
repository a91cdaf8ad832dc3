"""Fluid's prior stage (`fluid`), any cell of the paper's 2x2 study: continuous tokens from a trained
`AutoencoderKL` (the `autoencoder_kl` recipe) or discrete ids from a trained `DalleDVAE` / `ViTVQGAN`, generated in
random or raster order. Tokens are computed once per image and cached on disk (`datasets.map`); captions are dropped
with `caption_dropout` for classifier-free guidance.

    hf-t2i train autoencoder_kl --output-dir runs/vae --image-size 32
    hf-t2i train fluid --vae-path runs/vae/final --output-dir runs/fluid --image-size 32          # continuous, random
    hf-t2i train fluid --vae-path runs/vae/final --generation-order raster ...                       # continuous, raster
    hf-t2i train fluid --token-type discrete --vq-path runs/dvae/final --output-dir runs/fluid-d ... # discrete
    hf-t2i train fluid ... --text-encoder minilm --num-aligner-layers 2   # frozen all-MiniLM-L6-v2 + aligner
    hf-t2i train fluid --vae-path runs/vae/final ... --snr-gamma 5   # Min-SNR-5 weighting of the head's loss

Continuous tokens are the posterior means of the VAE (MAR re-samples cached moments each epoch; at these sizes the
posterior std is small). Held-out losses are computed with a fixed seed for the mask and diffusion noise, so they
compare across runs and cells (they are the plain epsilon-MSE also with `--snr-gamma`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..recipe import register_recipe
from .common import cached_encode, fingerprint, warn_ignored_settings
from .token_prior import TextEncoderPriorRecipe, TextEncoderPriorRecipeConfig


EVAL_SEED = 1234


@dataclass
class FluidRecipeConfig(TextEncoderPriorRecipeConfig):
    image_size: int = field(default=32, metadata={"help": "training resolution (the image tokenizer's)"})
    token_type: str = field(default="continuous", metadata={"help": "continuous (AutoencoderKL) | discrete (VQ)"})
    generation_order: str = field(default="random", metadata={"help": "random | raster"})
    vae_path: str = field(
        default="", metadata={"help": "an AutoencoderKL folder (the autoencoder_kl recipe's export)"}
    )
    vq_path: str = field(default="", metadata={"help": "a DalleDVAE / ViTVQGAN folder (discrete tokens)"})
    patch_size: int = field(default=2, metadata={"help": "latent patch grouped into one continuous token"})
    diffusion_head_layers: int = 3
    diffusion_head_width: int = field(default=0, metadata={"help": "0: the backbone width"})
    num_train_timesteps: int = 1000
    num_diffusion_steps: int = field(default=100, metadata={"help": "head steps when sampling (grids, eval)"})
    diffusion_batch_mul: int = 4
    snr_gamma: float = field(
        default=0.0,
        metadata={
            "help": "Min-SNR-gamma weighting of the head's training loss (e.g. 5.0; 0: the plain epsilon loss). "
            "A training setting: it also applies when fine-tuning with --pretrained-model-name-or-path"
        },
    )
    sample_num_inference_steps: int = field(default=64, metadata={"help": "random-order iterations for grids/eval"})
    position_embedding_init: str = field(
        default="normal",
        metadata={
            "help": "normal | sincos_2d: how the backbone's learned image positions start (FluidConfig); a new "
            "model's setting, kept from the model when fine-tuning"
        },
    )


@register_recipe
class FluidRecipe(TextEncoderPriorRecipe):
    """Train `FluidForConditionalGeneration` on cached image tokens; export a `FluidPipeline` folder."""

    name = "fluid"
    config_class = FluidRecipeConfig
    text_input_names = ("input_ids", "attention_mask")
    training_defaults = {
        **TextEncoderPriorRecipe.training_defaults,
        "adam_beta2": 0.95,  # paper: AdamW (0.9, 0.95), wd 0.02
        "weight_decay": 0.02,
    }

    def __init__(self, config=None):
        c = config if config is not None else FluidRecipeConfig()
        if isinstance(c, FluidRecipeConfig):
            if c.token_type not in ("continuous", "discrete"):
                raise ValueError(f"`token_type` must be 'continuous' or 'discrete', got {c.token_type!r}.")
            if c.generation_order not in ("random", "raster"):
                raise ValueError(f"`generation_order` must be 'random' or 'raster', got {c.generation_order!r}.")
            from ...configuration_utils import check_position_embedding_init

            check_position_embedding_init(c.position_embedding_init)  # before the data loads, not at build_model
            if not c.snr_gamma >= 0:
                raise ValueError(f"`snr_gamma` must be >= 0 (0: no weighting; e.g. 5.0), got {c.snr_gamma!r}.")
            if c.snr_gamma and c.token_type != "continuous":
                raise ValueError(
                    f"`snr_gamma` weights the diffusion head's loss of continuous tokens; `token_type` is "
                    f"{c.token_type!r} (a cross-entropy): leave `snr_gamma` at 0."
                )
        continuous = c.token_type == "continuous"
        self.image_tokenizer_argument = "vae_path" if continuous else "vq_path"
        self.image_tokenizer_names = ("AutoencoderKL",) if continuous else ("DalleDVAE", "ViTVQGAN")
        super().__init__(config)

    def processor_class(self):
        from ...models.fluid import FluidProcessor

        return FluidProcessor

    def pipeline_class(self):
        from ...pipelines.fluid.pipeline_fluid import FluidPipeline

        return FluidPipeline

    # -- image tokenizer -------------------------------------------------------------------------------------------
    @property
    def continuous(self) -> bool:
        return self.config.token_type == "continuous"

    def image_tokenizer_of(self, model):
        return model.image_tokenizer()

    def check_pretrained(self, model):
        c, found = self.config, model.config
        for name in ("token_type", "generation_order"):
            if getattr(c, name) != getattr(found, name):
                raise ValueError(
                    f"`{name}` is {getattr(c, name)!r}, but the pretrained Fluid model {c.pretrained_model_name_or_path!r}"
                    f" was trained with {getattr(found, name)!r}: pass `{name}={getattr(found, name)!r}`."
                )
        # an initialisation: what the pretrained weights started from, so this run's value has nothing to act on
        kept = {"position_embedding_init": found.position_embedding_init}
        warn_ignored_settings(c, kept, c.pretrained_model_name_or_path)
        if found.is_class_conditional:
            raise ValueError(
                f"{c.pretrained_model_name_or_path!r} is a class-conditional Fluid model; `fluid` fine-tunes "
                "text-to-image models."
            )

    def _tokenizer_weights(self) -> bytes:
        for name in ("model.safetensors", "diffusion_pytorch_model.safetensors"):
            path = os.path.join(self.image_tokenizer_path, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    return f.read()
        raise ValueError(
            f"`{self.image_tokenizer_argument}` {self.image_tokenizer_path!r} has no safetensors weights."
        )

    def build_model(self):
        model = self.pretrained_prior() if self.pretrained_pipeline is not None else self._new_model()
        model.config.snr_gamma = self.config.snr_gamma or None  # a training setting of this run, as in config.json
        return model

    def _new_model(self):
        from ...models.fluid import FluidConfig, FluidForConditionalGeneration

        c = self.config
        tokenizer = self.load_image_tokenizer()
        config = FluidConfig(
            token_type=c.token_type,
            generation_order=c.generation_order,
            vae_config=dict(tokenizer.config) if self.continuous else None,
            vq_config=None if self.continuous else tokenizer.config.to_dict(),
            patch_size=c.patch_size,
            **self.text_encoder_kwargs(),
            hidden_size=c.hidden_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            intermediate_size=c.intermediate_size,
            hidden_dropout=c.hidden_dropout,
            diffusion_head_layers=c.diffusion_head_layers,
            diffusion_head_width=c.diffusion_head_width or None,
            num_train_timesteps=c.num_train_timesteps,
            num_diffusion_steps=c.num_diffusion_steps,
            diffusion_batch_mul=c.diffusion_batch_mul,
            position_embedding_init=c.position_embedding_init,
        )
        model = FluidForConditionalGeneration(config)
        self.load_pretrained_text_encoder(model)
        model.image_tokenizer().load_state_dict(tokenizer.state_dict())
        model.image_tokenizer().requires_grad_(False)
        return model

    # -- data ------------------------------------------------------------------------------------------------------
    def _encoded(self, dataset, split: str):
        """Caption inputs and image tokens (scaled latent patches or ids) of every pair, cached on disk. The tokens
        are stored in the `image_token_ids` column the shared prior recipe reads (floats for continuous tokens)."""
        from ...image_processing import T2IImageProcessor
        from ...layers import patchify

        c = self.config
        device = self.accelerator.device if self.accelerator is not None else torch.device("cpu")
        tokenizer = self.load_image_tokenizer().to(device).eval()
        processor = self.processor
        image_processor = T2IImageProcessor(image_size=c.image_size)

        @torch.no_grad()
        def encode(batch):
            pixels = image_processor(batch["image"], return_tensors="pt")["pixel_values"].to(device)
            text = processor(text=batch["text"], truncation=True)
            out = {name: text[name].tolist() for name in self.text_input_names}
            if self.continuous:
                latents = tokenizer.encode(pixels).latent_dist.mode()
                latents = (latents - (tokenizer.config.shift_factor or 0.0)) * tokenizer.config.scaling_factor
                out["image_token_ids"] = patchify(latents, c.patch_size).cpu().tolist()  # (B, N, D)
            else:
                out["image_token_ids"] = tokenizer.encode(pixels).cpu().tolist()
            return out

        key = fingerprint(
            self._tokenizer_weights(),
            processor.tokenizer.backend_tokenizer.to_str(),
            str(c.text_seq_len),
            str(c.patch_size if self.continuous else 0),
            ",".join(self.text_input_names),
        )
        name = f"{self.name}-{c.token_type}-{split}-{key}"
        return cached_encode(dataset, encode, c.cache_dir, "tokens", name, batch_size=256)

    # -- training --------------------------------------------------------------------------------------------------
    def prior_output(self, model, text, image_tokens):
        if model.training:
            generator = self.generator
        else:  # held-out losses: the same masks and noise at every evaluation, in every run
            device = image_tokens.device
            generator = torch.Generator(device=device).manual_seed(EVAL_SEED)
        return model(**text, image_tokens=image_tokens, generator=generator, use_cache=False)

    def sample_images(self, model, step):
        c = self.config
        prompts = [p for p in c.sample_prompts.split("|") if p] or list(self._splits()[1]["text"][:8])
        steps = (
            None
            if c.generation_order == "raster"
            else min(c.sample_num_inference_steps, model.config.num_image_tokens)
        )
        return self.pipeline(model)(
            prompts,
            guidance_scale=c.sample_guidance_scale,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
        ).images
