"""Parti's prior stage (`parti_prior`): the encoder-decoder on ViT-VQGAN tokens (trained with `vit_vqgan`), cached
once with `datasets.map`; captions dropped with `caption_dropout` for classifier-free guidance.

    hf-t2i train vit_vqgan --output-dir runs/vqgan --image-size 32 --max-steps 3000
    hf-t2i train parti_prior --vqgan-path runs/vqgan/final --output-dir runs/parti --image-size 32
    hf-t2i train parti_prior ... --text-encoder minilm     # frozen all-MiniLM-L6-v2 (+ --num-aligner-layers N)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..recipe import register_recipe
from .token_prior import TokenPriorRecipe, TokenPriorRecipeConfig


@dataclass
class PartiPriorRecipeConfig(TokenPriorRecipeConfig):
    vqgan_path: str = field(default="", metadata={"help": "a ViTVQGAN folder (the vit_vqgan recipe's final export)"})
    text_encoder: str = field(
        default="own",
        metadata={"help": "'own' (trained), 'minilm' (frozen all-MiniLM-L6-v2) or a transformers folder"},
    )
    encoder_layers: int = 4
    encoder_attention_heads: int = 8
    encoder_intermediate_size: int = 1024
    num_aligner_layers: int = field(default=0, metadata={"help": "trainable blocks after a frozen text encoder"})
    decoder_attention_types: str = field(
        default="", metadata={"help": "comma-separated per decoder layer (full|row|column|conv); default all full"}
    )


@register_recipe
class PartiPriorRecipe(TokenPriorRecipe):
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

    @property
    def pretrained_text_encoder(self) -> str | None:
        """Folder of the pretrained text encoder, or None for an encoder trained with the model."""
        from ...layers.text_encoder import minilm_path

        choice = self.config.text_encoder
        return None if choice == "own" else minilm_path() if choice == "minilm" else choice

    def load_text_tokenizer(self):
        if self.pretrained_text_encoder is None:
            return super().load_text_tokenizer()
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.pretrained_text_encoder, model_max_length=self.config.text_seq_len)

    def build_model(self):
        from transformers import AutoConfig

        from ...models.parti import PartiConfig, PartiForConditionalGeneration

        c = self.config
        vqgan = self.load_image_tokenizer()
        pretrained = self.pretrained_text_encoder
        types = [t.strip() for t in c.decoder_attention_types.split(",")] if c.decoder_attention_types else None
        config = PartiConfig(
            vq_config=vqgan.config.to_dict(),
            text_vocab_size=len(self.processor.tokenizer),
            text_seq_len=c.text_seq_len,
            text_encoder_config=AutoConfig.from_pretrained(pretrained).to_dict() if pretrained else None,
            encoder_layers=c.encoder_layers,
            encoder_attention_heads=c.encoder_attention_heads,
            encoder_intermediate_size=c.encoder_intermediate_size,
            num_aligner_layers=c.num_aligner_layers,
            hidden_size=c.hidden_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            intermediate_size=c.intermediate_size,
            decoder_attention_types=types,
            conv_kernel_size=c.conv_kernel_size,
            hidden_dropout=c.hidden_dropout,
        )
        model = PartiForConditionalGeneration(config)
        if pretrained:
            model.load_text_encoder(pretrained)
        model.vqmodel.load_state_dict(vqgan.state_dict())
        model.vqmodel.requires_grad_(False)
        return model

    def prior_output(self, model, text, image_token_ids):
        return model(**text, labels=image_token_ids, use_cache=False)
