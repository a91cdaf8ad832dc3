"""Configurations of ViT-VQGAN, Parti's image tokenizer, and of its learned super-resolution decoder."""

from __future__ import annotations

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from ...configuration_utils import check_heads, check_positive_ints


def _check_losses(l2_loss_weight: float, logit_laplace_loss_weight: float, logit_laplace_eps: float) -> None:
    if l2_loss_weight < 0 or logit_laplace_loss_weight < 0:
        raise ValueError(
            f"`l2_loss_weight` and `logit_laplace_loss_weight` must be >= 0, got {l2_loss_weight} and "
            f"{logit_laplace_loss_weight}."
        )
    if l2_loss_weight == 0 and logit_laplace_loss_weight == 0:
        raise ValueError("One of `l2_loss_weight` and `logit_laplace_loss_weight` must be > 0.")
    if not 0 < logit_laplace_eps < 0.5:
        raise ValueError(f"`logit_laplace_eps` must be in (0, 0.5), got {logit_laplace_eps}.")


class ViTVQGANConfig(PreTrainedConfig):
    r"""Configuration of [`ViTVQGAN`] (Yu et al. 2021, "Vector-quantized Image Modeling with Improved VQGAN"), the
    image tokenizer of Parti (Yu et al. 2022, section 2.1).

    The image is cut into non-overlapping `patch_size` patches; a ViT encoder maps them to a `grid_size` x
    `grid_size` grid of `code_dim`-dimensional latents, each replaced by its nearest l2-normalised code among
    `vocab_size` (section 3.2, factorised codes); a ViT decoder maps the codes back to patches of pixels.

    The defaults build a small model for 64x64 images (16x16 tokens). `ViTVQGANConfig.paper()` gives the paper's
    256x256 -> 32x32 tokenizer with 8192 codes and ViT-VQGAN-Base sizes.

    Args:
        image_size (`int`, *optional*, defaults to 64): side of the square input images.
        num_channels (`int`, *optional*, defaults to 3): image channels.
        patch_size (`int`, *optional*, defaults to 4): side of a patch; one token per patch, so the token grid is
            `image_size / patch_size` on a side. The paper uses 8.
        hidden_size (`int`, *optional*, defaults to 128): encoder width.
        num_hidden_layers (`int`, *optional*, defaults to 2): encoder transformer blocks.
        num_attention_heads (`int`, *optional*, defaults to 4): encoder attention heads.
        intermediate_size (`int`, *optional*, defaults to 512): encoder feed-forward inner width.
        decoder_hidden_size (`int`, *optional*): decoder width (defaults to `hidden_size`). Parti fine-tunes a larger
            decoder on a frozen encoder and codebook (section 2.1).
        decoder_num_hidden_layers (`int`, *optional*): decoder blocks (defaults to `num_hidden_layers`).
        decoder_num_attention_heads (`int`, *optional*): decoder heads (defaults to `num_attention_heads`).
        decoder_intermediate_size (`int`, *optional*): decoder feed-forward width (defaults to `intermediate_size`).
        hidden_act (`str`, *optional*, defaults to `"gelu"`): feed-forward activation (a transformers name).
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): LayerNorm epsilon.
        vocab_size (`int`, *optional*, defaults to 1024): codebook size K (number of image tokens).
        code_dim (`int`, *optional*, defaults to 32): dimension of the factorised lookup space (paper: 32).
        commitment_cost (`float`, *optional*, defaults to 0.25): beta, weight of the commitment loss.
        usage_decay (`float`, *optional*, defaults to 0.99): decay of the moving average of code usage that decides
            which codes are dead.
        l2_loss_weight (`float`, *optional*, defaults to 1.0): weight of the pixel L2 loss (paper: 1.0).
        logit_laplace_loss_weight (`float`, *optional*, defaults to 0.0): weight of the logit-Laplace NLL (paper:
            0.1). The decoder always predicts logit-Laplace statistics (a mean and a log-scale per pixel), so this
            weight can change between runs without changing the checkpoint layout.
        logit_laplace_eps (`float`, *optional*, defaults to 0.1): pixels are mapped to `[eps, 1 - eps]` for the
            logit-Laplace likelihood (DALL-E appendix A.3); decoded pixels are `unmap(sigmoid(mean))`.
        initializer_range (`float`, *optional*, defaults to 0.02): std of the normal init of linear layers and
            position embeddings.
    """

    model_type = "vit_vqgan"
    #: the settings that size the decoder alone: a tokenizer that differs only in them encodes alike (Parti, section
    #: 2.1, trains a larger decoder on the frozen encoder and codebook; see `ViTVQGAN.with_decoder`)
    decoder_settings = (
        "decoder_hidden_size",
        "decoder_num_hidden_layers",
        "decoder_num_attention_heads",
        "decoder_intermediate_size",
    )

    def __init__(
        self,
        image_size: int = 64,
        num_channels: int = 3,
        patch_size: int = 4,
        hidden_size: int = 128,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int = 512,
        decoder_hidden_size: int | None = None,
        decoder_num_hidden_layers: int | None = None,
        decoder_num_attention_heads: int | None = None,
        decoder_intermediate_size: int | None = None,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-5,
        vocab_size: int = 1024,
        code_dim: int = 32,
        commitment_cost: float = 0.25,
        usage_decay: float = 0.99,
        l2_loss_weight: float = 1.0,
        logit_laplace_loss_weight: float = 0.0,
        logit_laplace_eps: float = 0.1,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        decoder_hidden_size = hidden_size if decoder_hidden_size is None else decoder_hidden_size
        decoder_num_hidden_layers = (
            num_hidden_layers if decoder_num_hidden_layers is None else decoder_num_hidden_layers
        )
        if decoder_num_attention_heads is None:
            decoder_num_attention_heads = num_attention_heads
        if decoder_intermediate_size is None:
            decoder_intermediate_size = intermediate_size
        check_positive_ints(
            image_size=image_size,
            num_channels=num_channels,
            patch_size=patch_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            decoder_hidden_size=decoder_hidden_size,
            decoder_num_hidden_layers=decoder_num_hidden_layers,
            decoder_num_attention_heads=decoder_num_attention_heads,
            decoder_intermediate_size=decoder_intermediate_size,
            code_dim=code_dim,
        )
        if image_size % patch_size:
            raise ValueError(
                f"`image_size` ({image_size}) must be divisible by `patch_size` ({patch_size}): the encoder cuts the "
                "image into non-overlapping patches."
            )
        check_heads("hidden_size", hidden_size, "num_attention_heads", num_attention_heads)
        check_heads(
            "decoder_hidden_size", decoder_hidden_size, "decoder_num_attention_heads", decoder_num_attention_heads
        )
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"`vocab_size` (the codebook size) must be an int >= 2, got {vocab_size!r}.")
        if hidden_act not in ACT2FN:
            raise ValueError(f"`hidden_act` must be a transformers activation name, got {hidden_act!r}.")
        if commitment_cost < 0:
            raise ValueError(f"`commitment_cost` must be >= 0, got {commitment_cost}.")
        if not 0 <= usage_decay < 1:
            raise ValueError(f"`usage_decay` must be in [0, 1), got {usage_decay}.")
        _check_losses(l2_loss_weight, logit_laplace_loss_weight, logit_laplace_eps)
        self.image_size = image_size
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.vocab_size = vocab_size
        self.code_dim = code_dim
        self.commitment_cost = commitment_cost
        self.usage_decay = usage_decay
        self.l2_loss_weight = l2_loss_weight
        self.logit_laplace_loss_weight = logit_laplace_loss_weight
        self.logit_laplace_eps = logit_laplace_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def grid_size(self) -> int:
        """Side of the token grid."""
        return self.image_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2

    @classmethod
    def paper(cls, **kwargs) -> ViTVQGANConfig:
        """The paper's tokenizer: 256x256 -> 32x32 tokens (patch 8), 8192 codes of dimension 32, ViT-VQGAN-Base
        encoder and decoder (12 blocks, 12 heads, width 768, MLP 3072; table 1), losses L2 1.0 + logit-Laplace 0.1
        (section 3.3; perceptual and adversarial terms live in the training module).

        Parti's tokenizer is ViT-VQGAN-Small (8 blocks, 8 heads, 512, 2048) with, after a first stage, a Large decoder
        (32 blocks, 16 heads, 1280, 5120): pass those sizes as keyword overrides."""
        defaults = dict(
            image_size=256,
            patch_size=8,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            vocab_size=8192,
            code_dim=32,
            l2_loss_weight=1.0,
            logit_laplace_loss_weight=0.1,
        )
        defaults.update(kwargs)
        return cls(**defaults)


class ViTVQGANUpsamplerConfig(PreTrainedConfig):
    r"""Configuration of [`ViTVQGANUpsampler`]: Parti's optional super-resolution stage, a second and larger ViT
    decoder that maps the SAME image tokens as the tokenizer to `scale_factor` times its resolution. It is trained
    with the tokenizer's encoder and codebook frozen and holds its own copy of the codebook.

    Build it from a tokenizer config with [`ViTVQGANUpsamplerConfig.from_tokenizer_config`], which copies the fields
    that fix the token interface (`image_size`, `patch_size`, `num_channels`, `vocab_size`, `code_dim`).

    Args:
        image_size (`int`, *optional*, defaults to 64): the tokenizer's input resolution.
        patch_size (`int`, *optional*, defaults to 4): the tokenizer's patch size (fixes the token grid).
        num_channels (`int`, *optional*, defaults to 3): image channels.
        vocab_size (`int`, *optional*, defaults to 1024): the tokenizer's codebook size.
        code_dim (`int`, *optional*, defaults to 32): the tokenizer's code dimension.
        scale_factor (`int`, *optional*, defaults to 2): output resolution / input resolution; each token decodes to
            a patch of `patch_size * scale_factor` pixels on a side.
        hidden_size (`int`, *optional*, defaults to 256): decoder width.
        num_hidden_layers (`int`, *optional*, defaults to 4): decoder blocks.
        num_attention_heads (`int`, *optional*, defaults to 8): decoder heads.
        intermediate_size (`int`, *optional*, defaults to 1024): decoder feed-forward width.
        hidden_act, layer_norm_eps, l2_loss_weight, logit_laplace_loss_weight, logit_laplace_eps, initializer_range:
            as in [`ViTVQGANConfig`].
    """

    model_type = "vit_vqgan_upsampler"

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 4,
        num_channels: int = 3,
        vocab_size: int = 1024,
        code_dim: int = 32,
        scale_factor: int = 2,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 8,
        intermediate_size: int = 1024,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-5,
        l2_loss_weight: float = 1.0,
        logit_laplace_loss_weight: float = 0.0,
        logit_laplace_eps: float = 0.1,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        check_positive_ints(
            image_size=image_size,
            patch_size=patch_size,
            num_channels=num_channels,
            code_dim=code_dim,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
        )
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, int) or scale_factor < 2:
            raise ValueError(f"`scale_factor` must be an int >= 2, got {scale_factor!r}.")
        if image_size % patch_size:
            raise ValueError(f"`image_size` ({image_size}) must be divisible by `patch_size` ({patch_size}).")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"`vocab_size` (the codebook size) must be an int >= 2, got {vocab_size!r}.")
        check_heads("hidden_size", hidden_size, "num_attention_heads", num_attention_heads)
        if hidden_act not in ACT2FN:
            raise ValueError(f"`hidden_act` must be a transformers activation name, got {hidden_act!r}.")
        _check_losses(l2_loss_weight, logit_laplace_loss_weight, logit_laplace_eps)
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.vocab_size = vocab_size
        self.code_dim = code_dim
        self.scale_factor = scale_factor
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.l2_loss_weight = l2_loss_weight
        self.logit_laplace_loss_weight = logit_laplace_loss_weight
        self.logit_laplace_eps = logit_laplace_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def output_size(self) -> int:
        """Side of the decoded images."""
        return self.image_size * self.scale_factor

    @property
    def output_patch_size(self) -> int:
        """Pixels per token on a side in the output."""
        return self.patch_size * self.scale_factor

    @classmethod
    def from_tokenizer_config(cls, tokenizer_config: ViTVQGANConfig, **kwargs) -> ViTVQGANUpsamplerConfig:
        """An upsampler for the tokens of `tokenizer_config`; `kwargs` set the decoder's own fields."""
        if not isinstance(tokenizer_config, ViTVQGANConfig):
            raise TypeError(f"`tokenizer_config` must be a ViTVQGANConfig, got {type(tokenizer_config).__name__}.")
        tied = {
            name: getattr(tokenizer_config, name)
            for name in ("image_size", "patch_size", "num_channels", "vocab_size", "code_dim", "logit_laplace_eps")
        }
        clash = sorted(set(tied) & set(kwargs) - {"logit_laplace_eps"})
        if clash:
            raise ValueError(f"{clash} are fixed by the tokenizer's config; do not pass them.")
        return cls(**{**tied, **kwargs})


__all__ = ["ViTVQGANConfig", "ViTVQGANUpsamplerConfig"]
