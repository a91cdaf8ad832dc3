"""Configuration of Fluid (Fan et al. 2024): one model family for the paper's 2x2 study, continuous or discrete image
tokens generated in random or raster order."""

from __future__ import annotations

import inspect
from typing import Any

from transformers import AutoConfig, PreTrainedConfig

from ...configuration_utils import (
    check_choice,
    check_heads,
    check_position_embedding_init,
    check_positive_ints,
    text_encoder_config_from,
)
from ...layers.diffusion_head import BETA_SCHEDULES, TIMESTEP_SPACINGS
from ..image_tokenizers import vq_config_from


TOKEN_TYPES = ("continuous", "discrete")
GENERATION_ORDERS = ("random", "raster")


def small_vae_config(image_size: int = 32) -> dict[str, Any]:
    """A small diffusers `AutoencoderKL` for 32px images: 3 resolutions (x4 down), 4 latent channels, so 32px images
    give 8x8x4 latents, i.e. 4x4 tokens of 16 values with `patch_size=2`."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 16,
        "sample_size": image_size,
        "scaling_factor": 1.0,
        "shift_factor": None,
        "mid_block_add_attention": False,
    }


def _vae_defaults() -> dict[str, Any]:
    from diffusers import AutoencoderKL

    parameters = inspect.signature(AutoencoderKL.__init__).parameters
    return {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}


def clean_vae_config(vae_config: dict[str, Any]) -> dict[str, Any]:
    """An `AutoencoderKL` config (e.g. `vae.config`) without diffusers' bookkeeping keys, tuples as lists (JSON)."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in dict(vae_config).items()
        if not k.startswith("_") and k in _vae_defaults()
    }


class FluidConfig(PreTrainedConfig):
    r"""Configuration of [`FluidForConditionalGeneration`] (Fan et al. 2024, section 3).

    One model family covers the paper's four cells:

    | `token_type` | image tokens | head, loss |
    |---|---|---|
    | "continuous" | `AutoencoderKL` latents grouped `patch_size` x `patch_size`, scaled by the VAE's `scaling_factor` | per-token diffusion MLP, DDPM epsilon loss |
    | "discrete" | ids of a VQ tokenizer (`DalleDVAE` or `ViTVQGAN`) | linear head, cross-entropy |

    | `generation_order` | attention | training | sampling |
    |---|---|---|---|
    | "random" | bidirectional | a random subset of tokens (ratio from a cosine schedule) replaced by [MASK], loss on them | reveal tokens in a random order over `num_inference_steps` iterations (cosine schedule) |
    | "raster" | causal (KV cache) | next-token prediction from a [START] embedding | one token per step |

    Text is encoded by `layers.TextEncoder` (own transformer, or a frozen pretrained one + trainable aligner blocks)
    and read by every backbone block through cross-attention.

    With `num_classes` the model is class-conditional instead, with MAR's layout (Li et al. 2024, LTH14/mar; random
    order only): an MAE encoder (`encoder_layers` blocks) reads `buffer_size` copies of the class embedding followed
    by the VISIBLE tokens only (masked ones are dropped, not replaced), and a decoder (`num_hidden_layers` blocks)
    reads the encoder's outputs scattered back among [MASK] embeddings; no text, no cross-attention.

    Args:
        token_type (`str`, *optional*, defaults to `"continuous"`): "continuous" or "discrete".
        generation_order (`str`, *optional*, defaults to `"random"`): "random" or "raster".
        vae_config (`dict`, *optional*): the diffusers `AutoencoderKL` config (continuous); default
            `small_vae_config()`. Its `scaling_factor` (and `shift_factor`) map latents to unit variance.
        patch_size (`int`, *optional*, defaults to 2): latents grouped into `patch_size` x `patch_size` tokens.
        vq_config (`DalleDVAEConfig`, `ViTVQGANConfig` or `dict`, *optional*): the VQ tokenizer (discrete).
        text_vocab_size (`int`, *optional*, defaults to 4096): own text encoder's vocabulary.
        text_seq_len (`int`, *optional*, defaults to 32): text context.
        text_encoder_config (`dict` or `PreTrainedConfig`, *optional*): a pretrained encoder's transformers config
            (e.g. all-MiniLM-L6-v2's; the paper uses T5-XXL) used instead of the own encoder.
        freeze_text_encoder (`bool`, *optional*, defaults to `True`): keep the pretrained encoder frozen.
        encoder_layers, encoder_attention_heads, encoder_intermediate_size (`int`, *optional*, defaults to 4, 8,
            1024): own text-encoder sizes; with `num_classes`, the MAE encoder's blocks, heads and feed-forward width
            (MAR's `encoder_depth`, `encoder_num_heads`, width `hidden_size`).
        num_aligner_layers (`int`, *optional*, defaults to 0): trainable blocks after the text encoder (paper: 6).
        hidden_size (`int`, *optional*, defaults to 256): backbone width.
        num_hidden_layers (`int`, *optional*, defaults to 4): backbone blocks (self-attn, cross-attn, MLP); with
            `num_classes`, the MAE decoder's blocks (self-attn, MLP).
        num_attention_heads (`int`, *optional*, defaults to 8): backbone heads.
        intermediate_size (`int`, *optional*, defaults to 1024): backbone feed-forward width.
        hidden_act (`str`, *optional*, defaults to `"gelu"`): feed-forward activation.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): LayerNorm epsilon.
        hidden_dropout (`float`, *optional*, defaults to 0.0): residual dropout in training.
        diffusion_head_layers (`int`, *optional*, defaults to 3): residual blocks of the diffusion head (paper: 6).
        diffusion_head_width (`int`, *optional*): width of the diffusion head (default: `hidden_size`, as the paper).
        num_train_timesteps (`int`, *optional*, defaults to 1000): DDPM training steps.
        beta_schedule (`str`, *optional*, defaults to `"squaredcos_cap_v2"`): diffusers' name of the cosine schedule.
        num_diffusion_steps (`int`, *optional*, defaults to 100): default reverse steps of the head at sampling.
        diffusion_batch_mul (`int`, *optional*, defaults to 4): noise draws per token in one training step (MAR).
        snr_gamma (`float`, *optional*): Min-SNR-γ weighting of the head's training loss (Hang et al. 2023; diffusers'
            training scripts' `--snr_gamma`): each draw's ε-MSE is multiplied by `min(SNR_t, γ) / SNR_t`, which
            lowers the weight of the low-noise steps, where the noisy token nearly gives the answer away and the
            backbone's condition matters least. Default: the plain ε-loss (MAR, Fluid). Held-out losses (eval mode)
            are always the plain ε-MSE, so runs with and without it compare.
        diffusion_head_frequency_dim (`int`, *optional*): sinusoidal timestep features of the head (default: its
            width; MAR: 256).
        diffusion_head_learned_variance (`bool`, *optional*, defaults to `False`): the head also predicts the
            variance (IDDPM's "learned_range", trained with the hybrid loss; MAR's `learn_sigma`).
        diffusion_head_norm_affine (`bool`, *optional*, defaults to `False`): learned LayerNorm scale and bias in the
            head's residual blocks (MAR's `in_ln`).
        diffusion_timestep_spacing (`str`, *optional*, defaults to `"leading"`): which training steps the head's
            sampler visits ("leading": 990, ..., 0; "linspace": 999, 989, ..., 0, MAR's respacing; "trailing").
        num_classes (`int`, *optional*): [`MarConfig`] only: the number of classes of a class-conditional model.
        class_dropout_prob (`float`, *optional*, defaults to 0.1): class-conditional training replaces the class by
            the learned null class with this probability (for classifier-free guidance).
        buffer_size (`int`, *optional*, defaults to 64): class-conditional: positions holding the class embedding
            in front of the image tokens (MAR's buffer).
        initializer_range (`float`, *optional*, defaults to 0.02): std of the normal init.
        position_embedding_init (`str`, *optional*, defaults to `"normal"`): how the backbone's learned image
            position embeddings start (text-conditional models): "normal" (N(0, `initializer_range`), as every other
            embedding, and MAR) or "sincos_2d" (the 2-D sin-cos table of the token grid, values in [-1, 1], as MAE /
            DiT's fixed positions; needs `hidden_size` divisible by 4). Only the start differs: the table is a
            trained parameter either way, and checkpoints load the same.
    """

    model_type = "fluid"
    sub_configs = {"vq_config": AutoConfig, "text_encoder_config": AutoConfig}
    #: MAR's class-conditional layout (`MarConfig`), the only one that takes `num_classes`
    _mar_layout = False

    def __init__(
        self,
        token_type: str = "continuous",
        generation_order: str = "random",
        vae_config: dict | None = None,
        patch_size: int = 2,
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
        diffusion_head_layers: int = 3,
        diffusion_head_width: int | None = None,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        num_diffusion_steps: int = 100,
        diffusion_batch_mul: int = 4,
        snr_gamma: float | None = None,
        diffusion_head_frequency_dim: int | None = None,
        diffusion_head_learned_variance: bool = False,
        diffusion_head_norm_affine: bool = False,
        diffusion_timestep_spacing: str = "leading",
        num_classes: int | None = None,
        class_dropout_prob: float = 0.1,
        buffer_size: int = 64,
        initializer_range: float = 0.02,
        position_embedding_init: str = "normal",
        use_cache: bool = True,
        **kwargs,
    ):
        check_choice("token_type", token_type, TOKEN_TYPES)
        check_choice("generation_order", generation_order, GENERATION_ORDERS)
        if token_type == "continuous":
            vae_config = clean_vae_config(vae_config if vae_config is not None else small_vae_config())
            vq_config = None
        else:
            vq_config = vq_config_from(vq_config)
            vae_config = None
        text_encoder_config = text_encoder_config_from(text_encoder_config)
        check_positive_ints(
            patch_size=patch_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            diffusion_head_layers=diffusion_head_layers,
            num_train_timesteps=num_train_timesteps,
            num_diffusion_steps=num_diffusion_steps,
            diffusion_batch_mul=diffusion_batch_mul,
        )
        check_heads("hidden_size", hidden_size, "num_attention_heads", num_attention_heads)
        check_heads("hidden_size", hidden_size, "encoder_attention_heads", encoder_attention_heads)
        if text_encoder_config is None and encoder_layers < 1:
            raise ValueError("`encoder_layers` must be >= 1 when no pretrained `text_encoder_config` is given.")
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        if num_diffusion_steps > num_train_timesteps:
            raise ValueError(
                f"`num_diffusion_steps` ({num_diffusion_steps}) must be <= `num_train_timesteps` ({num_train_timesteps})."
            )
        if snr_gamma is not None and (
            isinstance(snr_gamma, bool) or not isinstance(snr_gamma, (int, float)) or not snr_gamma > 0
        ):
            raise ValueError(
                f"`snr_gamma` must be a number > 0 (diffusers' scripts recommend 5.0) or None, got {snr_gamma!r}."
            )
        diffusion_head_width = diffusion_head_width or hidden_size
        if diffusion_head_width % 2:
            raise ValueError(f"`diffusion_head_width` must be even, got {diffusion_head_width}.")
        frequency_dim = diffusion_head_frequency_dim
        if frequency_dim is not None and (
            not isinstance(frequency_dim, int) or frequency_dim < 2 or frequency_dim % 2
        ):
            raise ValueError(f"`diffusion_head_frequency_dim` must be an even int >= 2, got {frequency_dim!r}.")
        check_choice("diffusion_timestep_spacing", diffusion_timestep_spacing, TIMESTEP_SPACINGS)
        check_position_embedding_init(position_embedding_init)
        if position_embedding_init == "sincos_2d" and (hidden_size % 4 or num_classes is not None):
            raise ValueError(
                "`position_embedding_init='sincos_2d'` needs `hidden_size` divisible by 4 (got "
                f"{hidden_size}) and a text-conditional model (MAR's layout keeps its own position tables)."
            )
        if num_classes is not None and not self._mar_layout:
            raise ValueError(
                f"`num_classes` ({num_classes}) makes a class-conditional model with MAR's layout, which has its own "
                "config: use `MarConfig(num_classes=...)` (model_type 'mar') and `MarForConditionalGeneration`."
            )
        if self._mar_layout and num_classes is None:
            raise ValueError("`MarConfig` needs `num_classes`, the number of classes it generates.")
        if num_classes is not None:
            check_positive_ints(num_classes=num_classes, buffer_size=buffer_size, encoder_layers=encoder_layers)
            if generation_order != "random":
                raise ValueError(
                    "Class-conditional Fluid (`num_classes`, MAR's masked encoder-decoder) generates in random order; "
                    f"got `generation_order={generation_order!r}`."
                )
            if text_encoder_config is not None:
                raise ValueError(
                    "Class-conditional Fluid (`num_classes`) has no text encoder: drop `text_encoder_config`."
                )
            if not 0 <= class_dropout_prob < 1:
                raise ValueError(f"`class_dropout_prob` must be in [0, 1), got {class_dropout_prob!r}.")
        self.token_type = token_type
        self.generation_order = generation_order
        self.vae_config = vae_config
        self.patch_size = patch_size
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
        self.diffusion_head_layers = diffusion_head_layers
        self.diffusion_head_width = diffusion_head_width
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.num_diffusion_steps = num_diffusion_steps
        self.diffusion_batch_mul = diffusion_batch_mul
        self.snr_gamma = None if snr_gamma is None else float(snr_gamma)
        self.diffusion_head_frequency_dim = diffusion_head_frequency_dim
        self.diffusion_head_learned_variance = diffusion_head_learned_variance
        self.diffusion_head_norm_affine = diffusion_head_norm_affine
        self.diffusion_timestep_spacing = diffusion_timestep_spacing
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob
        self.buffer_size = buffer_size
        self.initializer_range = initializer_range
        self.position_embedding_init = position_embedding_init
        self.use_cache = use_cache
        if token_type == "continuous":
            self._check_latent_grid()
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def _vae(self, name: str):
        return self.vae_config.get(name, _vae_defaults()[name])

    def _check_latent_grid(self) -> None:
        size, factor = self._vae("sample_size"), self.vae_downsample_factor
        if size % factor or (size // factor) % self.patch_size:
            raise ValueError(
                f"The VAE's `sample_size` ({size}) must be divisible by its downsampling ({factor}) times "
                f"`patch_size` ({self.patch_size}) so that latents group into whole tokens."
            )

    # -- derived sizes -------------------------------------------------------------------------------------------
    @property
    def is_continuous(self) -> bool:
        return self.token_type == "continuous"

    @property
    def is_class_conditional(self) -> bool:
        return self.num_classes is not None

    @property
    def is_causal(self) -> bool:
        return self.generation_order == "raster"

    @property
    def vae_downsample_factor(self) -> int:
        return 2 ** (len(self._vae("block_out_channels")) - 1)

    @property
    def image_size(self) -> int:
        return self._vae("sample_size") if self.is_continuous else self.vq_config.image_size

    @property
    def latent_size(self) -> int:
        """Side of the VAE latent map (continuous only)."""
        return self.image_size // self.vae_downsample_factor

    @property
    def image_grid_size(self) -> int:
        return self.latent_size // self.patch_size if self.is_continuous else self.vq_config.grid_size

    @property
    def num_image_tokens(self) -> int:
        return self.image_grid_size**2

    @property
    def token_dim(self) -> int:
        """Values per continuous token: latent channels x patch area."""
        return self._vae("latent_channels") * self.patch_size**2

    @property
    def image_vocab_size(self) -> int:
        return self.vq_config.vocab_size

    @classmethod
    def paper(cls, **kwargs) -> FluidConfig:
        """The paper's defaults around a model size (section 4.1): 256px, SD-VAE-like 32x32x4 latents grouped 2x2
        into 256 tokens of 16 values, 6 aligner blocks after a frozen text encoder, 6-layer diffusion head as wide as
        the backbone, 1000 cosine training steps, 100 sampling steps. Pass the backbone sizes (e.g. `hidden_size`,
        `num_hidden_layers`) and the `text_encoder_config` as keyword arguments."""
        vae = small_vae_config(256)
        vae.update(block_out_channels=[128, 256, 512, 512], norm_num_groups=32, layers_per_block=2)
        vae.update(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
        vae.update(mid_block_add_attention=True)
        defaults = dict(
            vae_config=vae,
            patch_size=2,
            text_seq_len=128,
            num_aligner_layers=6,
            diffusion_head_layers=6,
            num_train_timesteps=1000,
            num_diffusion_steps=100,
        )
        defaults.update(kwargs)
        return cls(**defaults)


class MarConfig(FluidConfig):
    r"""Configuration of a class-conditional MAR prior (Li et al. 2024, "Autoregressive Image Generation without Vector
    Quantization"; LTH14/mar): the fields of [`FluidConfig`] with MAR's masked encoder-decoder layout
    ([`FluidMAEModel`]): `num_classes` class embeddings plus a learned null class for guidance, `buffer_size`
    positions holding the class embedding in front of the image tokens, random generation order, no text encoder.

    Its own `model_type` lets the Auto classes round-trip it: `AutoModel.from_config(MarConfig(...))` is a
    [`FluidMAEModel`], and `AutoModelForTextToImage` a [`MarForConditionalGeneration`].

    Args:
        num_classes (`int`, *optional*, defaults to 1000): classes the model generates (ImageNet's 1000 for the
            released MAR checkpoints).
        (every other argument as in [`FluidConfig`])
    """

    model_type = "mar"
    _mar_layout = True

    def __init__(self, num_classes: int = 1000, **kwargs):
        super().__init__(num_classes=num_classes, **kwargs)


__all__ = ["FluidConfig", "MarConfig", "small_vae_config"]
