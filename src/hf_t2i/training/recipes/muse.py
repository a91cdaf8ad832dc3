"""Muse's prior stage (`muse`): the bidirectional masked-token transformer on the codes of a trained VQ tokenizer
(`DalleDVAE` from `dalle_dvae`, or `ViTVQGAN` from `vit_vqgan`), cached once with `datasets.map`. Each step masks a
cosine-schedule share of every image's codes (drawn from the training loop's generator, so a resume is exact) and
takes the cross-entropy on the masked ones; captions are dropped with `caption_dropout` for classifier-free guidance.

    hf-t2i train dalle_dvae --output-dir runs/dvae --image-size 32 --max-steps 3000
    hf-t2i train muse --vq-path runs/dvae/final --output-dir runs/muse --image-size 32
    hf-t2i train muse ... --text-encoder minilm --num-aligner-layers 2   # frozen all-MiniLM-L6-v2 + aligner

Held-out losses use a fixed seed for the masks, so they compare across evaluations and runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..recipe import register_recipe
from .token_prior import TextEncoderPriorRecipe, TextEncoderPriorRecipeConfig


EVAL_SEED = 1234


@dataclass
class MuseRecipeConfig(TextEncoderPriorRecipeConfig):
    image_size: int = field(default=32, metadata={"help": "training resolution (the VQ tokenizer's)"})
    vq_path: str = field(
        default="", metadata={"help": "a DalleDVAE / ViTVQGAN folder (dalle_dvae / vit_vqgan export)"}
    )
    position_embedding_type: str = field(default="learned", metadata={"help": "learned | axial"})
    sample_num_inference_steps: int = field(default=12, metadata={"help": "decoding iterations for grids / eval"})
    sample_choice_temperature: float = field(default=4.5, metadata={"help": "MaskGIT's confidence noise"})


@register_recipe
class MuseRecipe(TextEncoderPriorRecipe):
    """Train `MuseForConditionalGeneration` on cached VQ codes; export a `MusePipeline` folder."""

    name = "muse"
    config_class = MuseRecipeConfig
    image_tokenizer_names = ("DalleDVAE", "ViTVQGAN")
    image_tokenizer_argument = "vq_path"
    text_input_names = ("input_ids", "attention_mask")

    def __init__(self, config=None):
        super().__init__(config)
        c = self.config
        if c.position_embedding_type not in ("learned", "axial"):
            raise ValueError(
                f"`position_embedding_type` must be 'learned' or 'axial', got {c.position_embedding_type!r}."
            )
        steps = c.sample_num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"`sample_num_inference_steps` must be a positive int, got {steps!r}.")
        if not c.sample_choice_temperature >= 0:
            raise ValueError(f"`sample_choice_temperature` must be >= 0, got {c.sample_choice_temperature!r}.")

    def processor_class(self):
        from ...models.muse import MuseProcessor

        return MuseProcessor

    def pipeline_class(self):
        from ...pipelines.muse.pipeline_muse import MusePipeline

        return MusePipeline

    def model_config(self, vq_config: dict):
        """The [`MuseConfig`] of this recipe around the trained tokenizer's config."""
        from ...models.muse import MuseConfig

        c = self.config
        return MuseConfig(
            vq_config=vq_config,
            **self.text_encoder_kwargs(),
            hidden_size=c.hidden_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            intermediate_size=c.intermediate_size,
            hidden_dropout=c.hidden_dropout,
            position_embedding_type=c.position_embedding_type,
            num_inference_steps=c.sample_num_inference_steps,
            choice_temperature=c.sample_choice_temperature,
        )

    def build_model(self):
        if self.pretrained_pipeline is not None:
            return self.pretrained_prior()

        from ...models.muse import MuseForConditionalGeneration

        vq = self.load_image_tokenizer()
        model = MuseForConditionalGeneration(self.model_config(vq.config.to_dict()))
        self.load_pretrained_text_encoder(model)
        model.vqmodel.load_state_dict(vq.state_dict())
        model.vqmodel.requires_grad_(False)
        return model

    def prior_output(self, model, text, image_token_ids):
        if model.training:
            generator = self.generator
        else:  # held-out losses: the same masks at every evaluation, in every run
            generator = torch.Generator(device=image_token_ids.device).manual_seed(EVAL_SEED)
        return model(**text, image_token_ids=image_token_ids, generator=generator)

    def sample_images(self, model, step):
        c = self.config
        prompts = [p for p in c.sample_prompts.split("|") if p] or list(self._splits()[1]["text"][:8])
        return self.pipeline(model)(
            prompts,
            guidance_scale=c.sample_guidance_scale,
            num_inference_steps=min(c.sample_num_inference_steps, model.config.num_image_tokens),
            choice_temperature=c.sample_choice_temperature,
            generator=torch.Generator().manual_seed(0),
        ).images
