"""Configuration of Muse (Chang et al. 2023) / MaskGIT (Chang et al. 2022): a bidirectional transformer over the
discrete codes of a VQ image tokenizer, text read through cross-attention, decoded in confidence order."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig

from ...configuration_utils import (
    check_choice,
    check_heads,
    check_positive_ints,
    is_finite_number,
    text_encoder_config_from,
)
from ..image_tokenizers import DiffusersVQConfig, vq_config_from


POSITION_EMBEDDING_TYPES = ("learned", "axial")
BACKBONES = ("transformer", "uvit")
SAMPLING_RECIPES = ("maskgit", "amused")


class MuseConfig(PreTrainedConfig):
    r"""Configuration of [`MuseForConditionalGeneration`] (Muse, Chang et al. 2023, section 2; MaskGIT, Chang et al.
    2022, section 3).

    Token layout: the N = grid * grid codes of the nested VQ tokenizer (`vq_config`) in raster order. Codes are ids
    `[0, image_vocab_size)`; the [MASK] token is the extra id `mask_token_id = image_vocab_size`, so the input
    embedding has `image_vocab_size + 1` rows while the LM head predicts the `image_vocab_size` codes only.

    Text is encoded by `layers.TextEncoder` (own transformer, or a frozen pretrained one + trainable aligner blocks;
    the paper uses a frozen T5-XXL) and read by every backbone block through cross-attention. Captions are dropped
    for classifier-free guidance by the training recipe (`caption_dropout`), which owns the tokenizer and hence the
    empty caption; the model itself needs no dropout field.

    Args:
        vq_config (`DalleDVAEConfig`, `ViTVQGANConfig` or `dict`, *optional*): the image tokenizer; fixes the codebook
            size and the grid. A dict is read by its `model_type`. Default: `DalleDVAEConfig()`.
        text_vocab_size (`int`, *optional*, defaults to 4096): own text encoder's vocabulary.
        text_seq_len (`int`, *optional*, defaults to 32): text context.
        text_encoder_config (`dict` or `PreTrainedConfig`, *optional*): a pretrained encoder's transformers config
            (e.g. all-MiniLM-L6-v2's) used instead of the own encoder.
        freeze_text_encoder (`bool`, *optional*, defaults to `True`): keep the pretrained encoder frozen.
        encoder_layers, encoder_attention_heads, encoder_intermediate_size (`int`, *optional*, defaults to 4, 8,
            1024): own text-encoder sizes.
        num_aligner_layers (`int`, *optional*, defaults to 0): trainable blocks after the text encoder.
        hidden_size (`int`, *optional*, defaults to 256): backbone width.
        num_hidden_layers (`int`, *optional*, defaults to 4): backbone blocks (self-attention, cross-attention, MLP).
        num_attention_heads (`int`, *optional*, defaults to 8): backbone heads.
        intermediate_size (`int`, *optional*, defaults to 1024): backbone feed-forward width.
        hidden_act (`str`, *optional*, defaults to `"gelu"`): feed-forward activation.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): LayerNorm epsilon.
        hidden_dropout (`float`, *optional*, defaults to 0.0): residual dropout in training.
        position_embedding_type (`str`, *optional*, defaults to `"learned"`): "learned" (one vector per grid
            position, as MaskGIT) or "axial" (a row plus a column vector, `layers.AxialPositionalEmbedding`).
        num_inference_steps (`int`, *optional*, defaults to 12): default decoding iterations (Muse: 12 at 256px;
            capped at the number of image tokens).
        choice_temperature (`float`, *optional*, defaults to 4.5): default scale of the Gumbel noise added to the
            confidence when choosing which tokens to keep, annealed to 0 (MaskGIT; see `ConfidenceOrder`).
        initializer_range (`float`, *optional*, defaults to 0.02): std of the normal init.
        backbone (`str`, *optional*, defaults to `"transformer"`): "transformer" (the blocks above: learned positions,
            cross-attention to `layers.TextEncoder`) or "uvit", aMUSEd's U-ViT (Patil et al. 2024; diffusers'
            `UVit2DModel`): code embeddings without positions -> a convolutional stage (ConvNeXt blocks modulated by
            the pooled text, each followed by two cross-attentions) -> `num_hidden_layers` transformer blocks with
            adaptive norms from the pooled text and the micro-conditioning -> a mirrored convolutional stage -> a
            two-layer head. The text encoder is then a CLIP text model with projection (`text_encoder_config` a
            `CLIPTextConfig`): its penultimate hidden states are cross-attended, its projected pooled output
            conditions the norms. As in aMUSEd, the caption's padding is attended to (the CLIP encoder reads the
            padded caption without a mask); `attention_mask` is not used. The sizes below are read for "uvit" only.
        embedding_size (`int`, *optional*, defaults to 768): U-ViT: width of the code embeddings and of the head's
            inner layer (diffusers' `in_channels`).
        conv_channels (`int`, *optional*, defaults to 768): U-ViT: width of the convolutional stages (diffusers'
            `block_out_channels`).
        num_res_blocks (`int`, *optional*, defaults to 3): U-ViT: ConvNeXt blocks per convolutional stage.
        conv_attention_heads (`int`, *optional*, defaults to 12): U-ViT: heads of the stages' cross-attentions.
        downsample (`bool`, *optional*, defaults to `False`): U-ViT: halve the grid before the transformer blocks
            (a 2x2 stride-2 convolution) and double it after (a 2x2 transposed convolution); aMUSEd-512 does.
        micro_conditioning_size (`int`, *optional*, defaults to 256): U-ViT: sinusoidal features per micro-condition
            (five: width, height, crop top, crop left, aesthetic score).
        micro_conditioning_crop_coord (`list[int]`, *optional*, defaults to `[0, 0]`),
        micro_conditioning_aesthetic_score (`float`, *optional*, defaults to 6): U-ViT: the micro-conditions the model
            reads by default (the size is always `image_size`).
        use_bias (`bool`, *optional*, defaults to `False`): U-ViT: biases in its linear layers, convolutions and
            norm modulations.
        norm_elementwise_affine (`bool`, *optional*, defaults to `True`): U-ViT: learned scales in its norms.
        sampling_recipe (`str`, *optional*, defaults to `"maskgit"`): how generation draws codes and chooses the ones
            to keep. "maskgit": codes drawn (Gumbel-max) at the masked positions only, Gumbel noise on their confidence
            scaled by `choice_temperature * (1 - (k + 1) / K)`. "amused": diffusers' `AmusedScheduler`: codes drawn
            with `torch.multinomial` at every position, noise drawn at every position and scaled by
            `linspace(choice_temperature, 0, K)[k]`, the schedule in float32, so that a converted aMUSEd checkpoint
            draws the same image as diffusers' `AmusedPipeline` for the same seed.
    """

    model_type = "muse"
    sub_configs = {"vq_config": AutoConfig, "text_encoder_config": AutoConfig}

    def __init__(
        self,
        vq_config: PreTrainedConfig | dict | None = None,
        text_vocab_size: int = 4096,
        text_seq_len: int = 32,
        text_encoder_config: PreTrainedConfig | dict | None = None,
        freeze_text_encoder: bool = True,
        encoder_layers: int = 4,
        encoder_attention_heads: int = 8,
        encoder_intermediate_size: int = 1024,
        num_aligner_layers: int = 0,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 8,
        intermediate_size: int = 1024,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-5,
        hidden_dropout: float = 0.0,
        position_embedding_type: str = "learned",
        num_inference_steps: int = 12,
        choice_temperature: float = 4.5,
        initializer_range: float = 0.02,
        backbone: str = "transformer",
        embedding_size: int = 768,
        conv_channels: int = 768,
        num_res_blocks: int = 3,
        conv_attention_heads: int = 12,
        downsample: bool = False,
        micro_conditioning_size: int = 256,
        micro_conditioning_crop_coord: list[int] | tuple[int, int] = (0, 0),
        micro_conditioning_aesthetic_score: float = 6.0,
        use_bias: bool = False,
        norm_elementwise_affine: bool = True,
        sampling_recipe: str = "maskgit",
        **kwargs,
    ):
        if isinstance(vq_config, dict) and vq_config.get("model_type") == DiffusersVQConfig.model_type:
            vq_config = DiffusersVQConfig(**{k: v for k, v in vq_config.items() if k != "model_type"})
        elif not isinstance(vq_config, DiffusersVQConfig):
            vq_config = vq_config_from(vq_config)
        text_encoder_config = text_encoder_config_from(text_encoder_config)
        check_positive_ints(
            text_vocab_size=text_vocab_size,
            text_seq_len=text_seq_len,
            encoder_attention_heads=encoder_attention_heads,
            encoder_intermediate_size=encoder_intermediate_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            num_inference_steps=num_inference_steps,
        )
        for name, value in (("encoder_layers", encoder_layers), ("num_aligner_layers", num_aligner_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
        if text_encoder_config is None and encoder_layers < 1:
            raise ValueError("`encoder_layers` must be >= 1 when no pretrained `text_encoder_config` is given.")
        check_heads("hidden_size", hidden_size, "num_attention_heads", num_attention_heads)
        check_heads("hidden_size", hidden_size, "encoder_attention_heads", encoder_attention_heads)
        if not is_finite_number(layer_norm_eps) or layer_norm_eps <= 0:
            raise ValueError(f"`layer_norm_eps` must be a number > 0, got {layer_norm_eps!r}.")
        if not is_finite_number(hidden_dropout) or not 0 <= hidden_dropout < 1:
            raise ValueError(f"`hidden_dropout` must be in [0, 1), got {hidden_dropout!r}.")
        check_choice("position_embedding_type", position_embedding_type, POSITION_EMBEDDING_TYPES)
        if not is_finite_number(choice_temperature) or choice_temperature < 0:
            raise ValueError(f"`choice_temperature` must be a finite number >= 0, got {choice_temperature!r}.")
        if not is_finite_number(initializer_range) or initializer_range <= 0:
            raise ValueError(f"`initializer_range` must be a number > 0, got {initializer_range!r}.")
        check_choice("backbone", backbone, BACKBONES)
        check_choice("sampling_recipe", sampling_recipe, SAMPLING_RECIPES)
        check_positive_ints(
            embedding_size=embedding_size,
            num_res_blocks=num_res_blocks,
            micro_conditioning_size=micro_conditioning_size,
        )
        check_heads("conv_channels", conv_channels, "conv_attention_heads", conv_attention_heads)
        if micro_conditioning_size % 2:
            raise ValueError(
                f"`micro_conditioning_size` must be even (sine and cosine halves), got {micro_conditioning_size}."
            )
        crop = list(micro_conditioning_crop_coord)
        if len(crop) != 2 or not all(is_finite_number(v) for v in crop):
            raise ValueError(
                "`micro_conditioning_crop_coord` must be two numbers (top, left), got "
                f"{micro_conditioning_crop_coord!r}."
            )
        if not is_finite_number(micro_conditioning_aesthetic_score):
            raise ValueError(
                "`micro_conditioning_aesthetic_score` must be a finite number, got "
                f"{micro_conditioning_aesthetic_score!r}."
            )
        for name, value in (("downsample", downsample), ("use_bias", use_bias)):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be a bool, got {value!r}.")
        if not isinstance(norm_elementwise_affine, bool):
            raise ValueError(f"`norm_elementwise_affine` must be a bool, got {norm_elementwise_affine!r}.")
        if backbone == "uvit":
            _check_uvit(text_encoder_config, vq_config, downsample)
        kwargs.pop("mask_token_id", None)  # derived: `image_vocab_size`
        self.vq_config = vq_config
        self.text_vocab_size = text_vocab_size
        self.text_seq_len = text_seq_len
        self.text_encoder_config = text_encoder_config
        self.freeze_text_encoder = freeze_text_encoder
        self.encoder_layers = encoder_layers
        self.encoder_attention_heads = encoder_attention_heads
        self.encoder_intermediate_size = encoder_intermediate_size
        self.num_aligner_layers = num_aligner_layers
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout = hidden_dropout
        self.position_embedding_type = position_embedding_type
        self.num_inference_steps = num_inference_steps
        self.choice_temperature = float(choice_temperature)
        self.initializer_range = initializer_range
        self.backbone = backbone
        self.embedding_size = embedding_size
        self.conv_channels = conv_channels
        self.num_res_blocks = num_res_blocks
        self.conv_attention_heads = conv_attention_heads
        self.downsample = downsample
        self.micro_conditioning_size = micro_conditioning_size
        self.micro_conditioning_crop_coord = crop
        self.micro_conditioning_aesthetic_score = micro_conditioning_aesthetic_score
        self.use_bias = use_bias
        self.norm_elementwise_affine = norm_elementwise_affine
        self.sampling_recipe = sampling_recipe
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    # -- derived sizes -------------------------------------------------------------------------------------------
    @property
    def image_vocab_size(self) -> int:
        """Codes of the VQ tokenizer, the ids the LM head predicts."""
        return self.vq_config.vocab_size

    @property
    def mask_token_id(self) -> int:
        """The [MASK] input id, one past the codes."""
        return self.vq_config.vocab_size

    @property
    def image_size(self) -> int:
        return self.vq_config.image_size

    @property
    def image_grid_size(self) -> int:
        return self.vq_config.grid_size

    @property
    def num_image_tokens(self) -> int:
        return self.image_grid_size**2


def _check_uvit(text_encoder_config: PreTrainedConfig | None, vq_config: PreTrainedConfig, downsample: bool) -> None:
    """The U-ViT backbone reads a CLIP text model's penultimate states and projected pooled output."""
    if text_encoder_config is None or text_encoder_config.model_type != "clip_text_model":
        found = None if text_encoder_config is None else text_encoder_config.model_type
        raise ValueError(
            "`backbone='uvit'` needs `text_encoder_config` to be a `CLIPTextConfig` (model_type 'clip_text_model', "
            f"read by `CLIPTextModelWithProjection`), got {found!r}."
        )
    if downsample and vq_config.grid_size % 2:
        raise ValueError(
            f"`downsample=True` halves the token grid, which must then be even; the image tokenizer's grid is "
            f"{vq_config.grid_size}."
        )


__all__ = ["MuseConfig"]
