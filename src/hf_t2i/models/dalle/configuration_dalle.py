"""Configuration of the DALL-E prior."""

from __future__ import annotations

from transformers import PreTrainedConfig

from ...configuration_utils import check_choice, check_heads
from ...layers.masks import SPARSE_IMAGE_ATTENTION_TYPES
from ..image_tokenizers import DalleDVAEConfig, DallePytorchDVAEConfig


POSITION_EMBEDDING_TYPES = ("learned", "rotary")


def paper_attention_types(num_layers: int) -> list[str]:
    """DALL-E's layer pattern (appendix B.1): column attention in layers i with (i - 2) % 4 == 0 (1-indexed), row
    attention elsewhere, convolutional attention in the last layer."""
    types = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, num_layers + 1)]
    types[-1] = "conv"
    return types


class DalleConfig(PreTrainedConfig):
    r"""Configuration of [`DalleForConditionalGeneration`]: a decoder-only transformer over `[text ; image tokens]`
    (Ramesh et al. 2021, section 2.2), with its image tokenizer's configuration nested as `vq_config`.

    Token ids live in one space: text ids in `[0, text_vocab_size)`, image token `k` is `text_vocab_size + k`.
    The text context is always `text_seq_len` long; padding positions each get their own learned embedding.

    Args:
        vq_config (`DalleDVAEConfig`, `DallePytorchDVAEConfig` or `dict`, *optional*): the image tokenizer, OpenAI's
            dVAE (default) or DALLE-pytorch's own `DiscreteVAE` (converted checkpoints); a dict is read by its
            `model_type`. It fixes `image_vocab_size` (its `vocab_size`) and the image grid (its `grid_size`).
        text_vocab_size (`int`, *optional*, defaults to 4096): text tokenizer vocabulary size (paper: 16384).
        text_seq_len (`int`, *optional*, defaults to 32): text context length (paper: 256).
        text_pad_token_id (`int`, *optional*, defaults to 0): the tokenizer's padding id; each padded position uses
            its own learned embedding instead.
        hidden_size (`int`, *optional*, defaults to 256): model width.
        num_hidden_layers (`int`, *optional*, defaults to 4): transformer blocks.
        num_attention_heads (`int`, *optional*, defaults to 8): attention heads.
        intermediate_size (`int`, *optional*, defaults to 1024): feed-forward width.
        hidden_act (`str`, *optional*, defaults to `"gelu"`): feed-forward activation.
        glu (`bool`, *optional*, defaults to `False`): gated feed-forward (GEGLU with `"gelu"`).
        attention_types (`list[str]`, *optional*): per layer one of `"full"`, `"row"`, `"column"`, `"conv"`, or
            DALLE-pytorch's `"axial_row"` (the current row so far) and `"conv_corner"` (its `conv_like`: the window
            whose bottom-right corner is the query); see `layers.masks.sparse_image_mask`. Defaults to the paper's
            pattern (`paper_attention_types`).
        conv_kernel_size (`int`, *optional*, defaults to 11): side of the causal window of `"conv"` and
            `"conv_corner"` layers (DALLE-pytorch's `conv_like`: 5).
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): LayerNorm epsilon.
        attention_dropout (`float`, *optional*, defaults to 0.0): attention-probability dropout in training.
        hidden_dropout (`float`, *optional*, defaults to 0.0): residual-branch and embedding dropout in training.
        text_loss_weight (`float`, *optional*, defaults to 0.125): weight of the text cross-entropy (paper: 1/8).
        image_loss_weight (`float`, *optional*, defaults to 0.875): weight of the image cross-entropy (paper: 7/8).
        initializer_range (`float`, *optional*, defaults to 0.02): std of the normal init of linear and embedding
            weights.
        sandwich_norm (`bool`, *optional*, defaults to `False`): a LayerNorm on each attention / feed-forward output
            before the residual add (CogView's sandwich norm; DALLE-pytorch's `sandwich_norm=True`).
        layer_scale_init (`float`, *optional*): when set, each residual branch is multiplied by a learned per-channel
            scale initialised to this value (LayerScale, which every DALLE-pytorch >= 1.0 model has).
        position_embedding_type (`str`, *optional*, defaults to `"learned"`): `"learned"`: a learned 1-D embedding of
            text positions and a learned row + column embedding of image positions, added to the inputs (the paper).
            `"rotary"`: no position embeddings are added; every layer rotates its queries, keys AND values with
            DALLE-pytorch's (`rotary_emb=True`) layout of three equal channel groups per head (see
            `dalle_rotary_angles`): a 1-D text group (text positions 0, 1, ...; every image position 8192), then a
            row and a column group of pixel frequencies (image rows / columns on [-1, 1]; text positions at -10).
        shift_tokens (`bool`, *optional*, defaults to `False`): DALLE-pytorch's token shifting (`shift_tokens=True`,
            its default): after each sub-layer's LayerNorm, text positions take their first half of the channels
            from the previous position, image tokens their first quarter from the token above and the second
            quarter from the token to the left (see `models.dalle.token_shift`). Decoding then keeps the last image
            row of every sub-layer's input in the cache: the config sets `layer_types` to transformers' `"hybrid"`
            layers with `number_of_conv_states = 2`, so caches built from it (`DynamicCache(config=...)`,
            `StaticCache(config=...)`, `generate()`'s) hold those states next to the keys and values.
    """

    model_type = "dalle"
    sub_configs = {"vq_config": DalleDVAEConfig}

    def __init__(
        self,
        vq_config: DalleDVAEConfig | dict | None = None,
        text_vocab_size: int = 4096,
        text_seq_len: int = 32,
        text_pad_token_id: int = 0,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 8,
        intermediate_size: int = 1024,
        hidden_act: str = "gelu",
        glu: bool = False,
        attention_types: list[str] | None = None,
        conv_kernel_size: int = 11,
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        text_loss_weight: float = 0.125,
        image_loss_weight: float = 0.875,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        sandwich_norm: bool = False,
        layer_scale_init: float | None = None,
        position_embedding_type: str = "learned",
        shift_tokens: bool = False,
        **kwargs,
    ):
        if vq_config is None:
            vq_config = DalleDVAEConfig()
        elif isinstance(vq_config, dict):
            pytorch_dvae = vq_config.get("model_type") == DallePytorchDVAEConfig.model_type
            vq_config = (DallePytorchDVAEConfig if pytorch_dvae else DalleDVAEConfig)(**vq_config)
        elif not isinstance(vq_config, (DalleDVAEConfig, DallePytorchDVAEConfig)):
            raise TypeError(
                "`vq_config` must be a DalleDVAEConfig, a DallePytorchDVAEConfig or a dict, got "
                f"{type(vq_config).__name__}."
            )
        if attention_types is None:
            attention_types = paper_attention_types(num_hidden_layers)
        attention_types = list(attention_types)
        if len(attention_types) != num_hidden_layers:
            raise ValueError(
                f"`attention_types` needs one entry per layer ({num_hidden_layers}), got {len(attention_types)}."
            )
        bad = [t for t in attention_types if t not in SPARSE_IMAGE_ATTENTION_TYPES]
        if bad:
            raise ValueError(f"`attention_types` entries must be in {SPARSE_IMAGE_ATTENTION_TYPES}, got {bad}.")
        check_heads("hidden_size", hidden_size, "num_attention_heads", num_attention_heads)
        check_choice("position_embedding_type", position_embedding_type, POSITION_EMBEDDING_TYPES)
        if position_embedding_type == "rotary" and hidden_size // num_attention_heads < 6:
            raise ValueError(
                f"`position_embedding_type='rotary'` rotates three groups of at least 2 channels per head, so heads "
                f"need >= 6 channels; got hidden_size / num_attention_heads = {hidden_size // num_attention_heads}."
            )
        if not 0 <= text_pad_token_id < text_vocab_size:
            raise ValueError(
                f"`text_pad_token_id` ({text_pad_token_id}) must be in [0, text_vocab_size={text_vocab_size})."
            )
        if conv_kernel_size < 1 or conv_kernel_size % 2 == 0:
            raise ValueError(f"`conv_kernel_size` must be a positive odd number, got {conv_kernel_size}.")
        for name, value in (("text_seq_len", text_seq_len), ("num_hidden_layers", num_hidden_layers)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        if shift_tokens and hidden_size < 2:
            raise ValueError(
                "`shift_tokens=True` shifts two quarters of the channels: `hidden_size` must be >= 2, got "
                f"{hidden_size}."
            )
        for derived in ("vocab_size", "layer_types", "number_of_conv_states"):  # set below
            kwargs.pop(derived, None)
        self.vq_config = vq_config
        self.text_vocab_size = text_vocab_size
        self.text_seq_len = text_seq_len
        self.text_pad_token_id = text_pad_token_id
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.glu = glu
        self.attention_types = attention_types
        self.conv_kernel_size = conv_kernel_size
        self.layer_norm_eps = layer_norm_eps
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.text_loss_weight = text_loss_weight
        self.image_loss_weight = image_loss_weight
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.sandwich_norm = sandwich_norm
        self.layer_scale_init = layer_scale_init
        self.position_embedding_type = position_embedding_type
        self.shift_tokens = shift_tokens
        if shift_tokens:  # what transformers' caches read to keep conv states (the shifted channels) per layer
            self.layer_types = ["hybrid"] * num_hidden_layers
            self.number_of_conv_states = 2  # one per sub-layer: self-attention, feed-forward
        # Derived from the image tokenizer; stored so generation utilities that read `vocab_size` find it.
        self.vocab_size = text_vocab_size + vq_config.vocab_size
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @property
    def image_vocab_size(self) -> int:
        return self.vq_config.vocab_size

    @property
    def image_grid_size(self) -> int:
        return self.vq_config.grid_size

    @property
    def num_image_tokens(self) -> int:
        return self.vq_config.grid_size**2

    @property
    def max_position_embeddings(self) -> int:
        return self.text_seq_len + self.num_image_tokens

    @classmethod
    def paper(cls, **kwargs) -> DalleConfig:
        """The 12B model of the paper: 64 layers, 62 heads of 64, text 256 x 16384, image 32x32 x 8192."""
        defaults = dict(
            vq_config=DalleDVAEConfig.paper(),
            text_vocab_size=16384,
            text_seq_len=256,
            hidden_size=62 * 64,
            num_hidden_layers=64,
            num_attention_heads=62,
            intermediate_size=4 * 62 * 64,
            conv_kernel_size=11,
        )
        defaults.update(kwargs)
        return cls(**defaults)


__all__ = ["DalleConfig", "paper_attention_types"]
