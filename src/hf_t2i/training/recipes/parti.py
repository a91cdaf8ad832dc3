"""Parti's prior stage (`parti_prior`): the encoder-decoder on ViT-VQGAN tokens (trained with `vit_vqgan`), cached
once with `datasets.map`; captions dropped with `caption_dropout` for classifier-free guidance.

    hf-t2i train vit_vqgan --output-dir runs/vqgan --image-size 32 --max-steps 3000
    hf-t2i train parti_prior --vqgan-path runs/vqgan/final --output-dir runs/parti --image-size 32
    hf-t2i train parti_prior ... --text-encoder minilm     # frozen all-MiniLM-L6-v2 (+ --num-aligner-layers N)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..recipe import register_recipe
from .token_prior import TextEncoderPriorRecipe, TextEncoderPriorRecipeConfig


@dataclass
class PartiPriorRecipeConfig(TextEncoderPriorRecipeConfig):
    vqgan_path: str = field(default="", metadata={"help": "a ViTVQGAN folder (the vit_vqgan recipe's final export)"})
    decoder_attention_types: str = field(
        default="", metadata={"help": "comma-separated per decoder layer (full|row|column|conv); default all full"}
    )


@register_recipe
class PartiPriorRecipe(TextEncoderPriorRecipe):
    """Train `PartiForConditionalGeneration` on cached ViT-VQGAN tokens; export a `PartiPipeline` folder."""

    name = "parti_prior"
    config_class = PartiPriorRecipeConfig
    image_tokenizer_names = ("ViTVQGAN",)
    image_tokenizer_argument = "vqgan_path"
    text_input_names = ("input_ids", "attention_mask")

    def processor_class(self):
        from ...models.parti import PartiProcessor

        return PartiProcessor

    def pipeline_class(self):
        from ...pipelines.parti.pipeline_parti import PartiPipeline

        return PartiPipeline

    def build_model(self):
        if self.pretrained_pipeline is not None:
            return self.pretrained_prior()

        from ...models.parti import PartiConfig, PartiForConditionalGeneration

        c = self.config
        vqgan = self.load_image_tokenizer()
        types = [t.strip() for t in c.decoder_attention_types.split(",")] if c.decoder_attention_types else None
        config = PartiConfig(
            vq_config=vqgan.config.to_dict(),
            **self.text_encoder_kwargs(),
            hidden_size=c.hidden_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            intermediate_size=c.intermediate_size,
            decoder_attention_types=types,
            conv_kernel_size=c.conv_kernel_size,
            hidden_dropout=c.hidden_dropout,
        )
        model = PartiForConditionalGeneration(config)
        self.load_pretrained_text_encoder(model)
        model.vqmodel.load_state_dict(vqgan.state_dict())
        model.vqmodel.requires_grad_(False)
        return model

    def prior_output(self, model, text, image_token_ids):
        return model(**text, labels=image_token_ids, use_cache=False)
