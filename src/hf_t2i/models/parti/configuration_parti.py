"""Configuration of the Parti prior."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig

from ...configuration_utils import check_heads, text_encoder_config_from
from ...layers.masks import SPARSE_IMAGE_ATTENTION_TYPES
from ..image_tokenizers import DiffusersVQConfig, ViTVQGANConfig


class PartiConfig(PreTrainedConfig):
    r"""Configuration of [`PartiForConditionalGeneration`] (Yu et al. 2022, section 2): a text encoder and an
    image-token decoder that cross-attends to it, with the ViT-VQGAN image tokenizer nested as `vq_config`.

    Decoder ids: image codes `[0, image_vocab_size)`, then the start token `image_vocab_size` (= `bos_token_id` =
    `decoder_start_token_id`), so `vocab_size = image_vocab_size + 1`. Converted checkpoints may use a larger
    `decoder_vocab_size` and another `image_start_token_id` (DALL·E Mega: 16416 rows, start 16383, itself a valid
    code); ids >= `image_vocab_size` are never predicted.

    The options after `initializer_range` exist for converted checkpoints (DALL·E Mega / mini, a BART-style
    NormFormer encoder-decoder) and are all off by default.

    Args:
        vq_config (`ViTVQGANConfig`, `DiffusersVQConfig` or `dict`, *optional*): the image tokenizer; fixes the
            codebook size and grid. A dict is read by its `model_type` (a ViT-VQGAN when it names none).
        text_vocab_size (`int`, *optional*, defaults to 4096): text tokenizer vocabulary (own encoder).
        text_seq_len (`int`, *optional*, defaults to 32): text context (paper: 128).
        text_encoder_config (`dict` or `PreTrainedConfig`, *optional*): a transformers config of a pretrained
            encoder (e.g. all-MiniLM-L6-v2's `BertConfig`) used instead of the own encoder.
        freeze_text_encoder (`bool`, *optional*, defaults to `True`): keep the pretrained encoder frozen.
        encoder_layers (`int`, *optional*, defaults to 4): own text-encoder blocks.
        encoder_attention_heads (`int`, *optional*, defaults to 8): own text-encoder heads.
        encoder_intermediate_size (`int`, *optional*, defaults to 1024): own text-encoder feed-forward width.
        num_aligner_layers (`int`, *optional*, defaults to 0): trainable blocks after a (frozen) encoder.
        hidden_size (`int`, *optional*, defaults to 256): model width (encoder and decoder).
        num_hidden_layers (`int`, *optional*, defaults to 4): decoder blocks.
        num_attention_heads (`int`, *optional*, defaults to 8): decoder heads.
        intermediate_size (`int`, *optional*, defaults to 1024): decoder feed-forward width.
        hidden_act (`str`, *optional*, defaults to `"gelu"`): feed-forward activation.
        decoder_attention_types (`list[str]`, *optional*): per decoder layer "full" (causal, the default), "row",
            "column" or "conv" (the paper's conv-shaped sparse attention), over the start token + image raster.
        conv_kernel_size (`int`, *optional*, defaults to 11): window of "conv" layers.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): LayerNorm epsilon.
        hidden_dropout (`float`, *optional*, defaults to 0.0): residual dropout in training.
        initializer_range (`float`, *optional*, defaults to 0.02): std of the normal init.
        use_bias (`bool`, *optional*, defaults to `True`): biases in the attention / feed-forward projections and
            the LM head.
        mlp_glu (`bool`, *optional*, defaults to `False`): gated feed-forward `fc2(act(gate(x)) * up(x))`.
        mlp_inner_norm (`bool`, *optional*, defaults to `False`): LayerNorm on the feed-forward's inner width.
        attention_post_norm (`bool`, *optional*, defaults to `False`): LayerNorm on every attention branch's output
            before the residual add (NormFormer; BART's `self_attn_layer_norm` / `encoder_attn_layer_norm`).
        embedding_norm (`bool`, *optional*, defaults to `False`): LayerNorm on the token + position embeddings of
            the own encoder and of the decoder (BART's `layernorm_embedding`).
        decoder_vocab_size (`int`, *optional*): rows of the decoder embedding and LM head; defaults to
            `image_vocab_size + 1`.
        image_start_token_id (`int`, *optional*): the decoder's start token; defaults to `image_vocab_size`.
    """

    model_type = "parti"
    sub_configs = {"vq_config": ViTVQGANConfig, "text_encoder_config": AutoConfig}

    def __init__(
        self,
        vq_config: ViTVQGANConfig | dict | None = None,
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
        decoder_attention_types: list[str] | None = None,
        conv_kernel_size: int = 11,
        layer_norm_eps: float = 1e-5,
        hidden_dropout: float = 0.0,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        use_bias: bool = True,
        mlp_glu: bool = False,
        mlp_inner_norm: bool = False,
        attention_post_norm: bool = False,
        embedding_norm: bool = False,
        decoder_vocab_size: int | None = None,
        image_start_token_id: int | None = None,
        **kwargs,
    ):
        if vq_config is None:
            vq_config = ViTVQGANConfig()
        elif isinstance(vq_config, dict):
            vq_class = DiffusersVQConfig if vq_config.get("model_type") == DiffusersVQConfig.model_type else None
            vq_config = (vq_class or ViTVQGANConfig)(**vq_config)
        text_encoder_config = text_encoder_config_from(text_encoder_config)
        decoder_attention_types = list(decoder_attention_types or ["full"] * num_hidden_layers)
        if len(decoder_attention_types) != num_hidden_layers:
            raise ValueError(
                f"`decoder_attention_types` needs one entry per decoder layer ({num_hidden_layers}), "
                f"got {len(decoder_attention_types)}."
            )
        bad = [t for t in decoder_attention_types if t not in SPARSE_IMAGE_ATTENTION_TYPES]
        if bad:
            raise ValueError(
                f"`decoder_attention_types` entries must be in {SPARSE_IMAGE_ATTENTION_TYPES}, got {bad}."
            )
        check_heads("hidden_size", hidden_size, "num_attention_heads", num_attention_heads)
        check_heads("hidden_size", hidden_size, "encoder_attention_heads", encoder_attention_heads)
        if text_encoder_config is None and encoder_layers < 1:
            raise ValueError("`encoder_layers` must be >= 1 when no pretrained `text_encoder_config` is given.")
        image_vocab_size = vq_config.vocab_size
        decoder_vocab_size = image_vocab_size + 1 if decoder_vocab_size is None else decoder_vocab_size
        if decoder_vocab_size <= image_vocab_size:
            raise ValueError(
                f"`decoder_vocab_size` ({decoder_vocab_size}) must exceed the codebook size ({image_vocab_size})."
            )
        image_start_token_id = image_vocab_size if image_start_token_id is None else image_start_token_id
        if not 0 <= image_start_token_id < decoder_vocab_size:
            raise ValueError(
                f"`image_start_token_id` ({image_start_token_id}) must lie in [0, {decoder_vocab_size}) "
                "(`decoder_vocab_size`)."
            )
        for key in ("vocab_size", "bos_token_id", "decoder_start_token_id", "is_encoder_decoder"):
            kwargs.pop(key, None)  # derived below
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
        self.decoder_attention_types = decoder_attention_types
        self.conv_kernel_size = conv_kernel_size
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout = hidden_dropout
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.use_bias = use_bias
        self.mlp_glu = mlp_glu
        self.mlp_inner_norm = mlp_inner_norm
        self.attention_post_norm = attention_post_norm
        self.embedding_norm = embedding_norm
        self.decoder_vocab_size = decoder_vocab_size
        self.image_start_token_id = image_start_token_id
        self.vocab_size = decoder_vocab_size
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(
            is_encoder_decoder=True,
            bos_token_id=image_start_token_id,
            decoder_start_token_id=image_start_token_id,
            **kwargs,
        )

    @property
    def image_vocab_size(self) -> int:
        return self.vq_config.vocab_size

    @property
    def image_grid_size(self) -> int:
        return self.vq_config.grid_size

    @property
    def num_image_tokens(self) -> int:
        return self.vq_config.grid_size**2

    @classmethod
    def paper(cls, size: str = "350M", **kwargs) -> PartiConfig:
        """The paper's sizes (table 1): 350M / 750M / 3B / 20B encoder-decoder widths and depths."""
        sizes = {
            "350M": dict(hidden_size=1024, encoder_layers=12, num_hidden_layers=12, num_attention_heads=16),
            "750M": dict(hidden_size=1024, encoder_layers=12, num_hidden_layers=36, num_attention_heads=16),
            "3B": dict(hidden_size=2048, encoder_layers=12, num_hidden_layers=36, num_attention_heads=32),
            "20B": dict(hidden_size=4096, encoder_layers=16, num_hidden_layers=64, num_attention_heads=64),
        }
        if size not in sizes:
            raise ValueError(f"`size` must be one of {sorted(sizes)}, got {size!r}.")
        defaults = dict(
            vq_config=ViTVQGANConfig.paper(),
            text_vocab_size=16000,
            text_seq_len=128,
            encoder_attention_heads=sizes[size]["num_attention_heads"],
            intermediate_size=4 * sizes[size]["hidden_size"],
            encoder_intermediate_size=4 * sizes[size]["hidden_size"],
            decoder_attention_types=None,
            **sizes[size],
        )
        defaults.update(kwargs)
        return cls(**defaults)

    def block_options(self) -> dict:
        """The [`TransformerBlock`] options of the converted-checkpoint fields (empty for the defaults)."""
        options = {}
        if not self.use_bias:
            options["bias"] = False
        if self.mlp_glu:
            options["glu"] = True
        if self.mlp_inner_norm:
            options["mlp_inner_norm"] = True
        if self.attention_post_norm:
            options.update(sandwich_norm=True, sandwich_norm_mlp=False)
        return options


__all__ = ["PartiConfig"]
