"""Configuration of Transfusion (Zhou et al. 2024, arXiv 2408.11039)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from ...configuration_utils import check_choice, check_heads, check_position_embedding_init


PATCH_ENCODERS = ("linear", "unet")
PREDICTION_TYPES = ("epsilon", "v_prediction")
# the non-uniform samplings draw t = floor(T * u ** (1 / k)): a density proportional to t ** (k - 1)
HIGH_NOISE_POWERS = {"high_noise": 2, "high_noise_quadratic": 3}
TIMESTEP_SAMPLINGS = ("uniform", *HIGH_NOISE_POWERS)


def check_prediction_type(prediction_type: str) -> None:
    """Refuse a `prediction_type` the model cannot train on (shared by the config and the recipe's flag)."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)


# A small diffusers `AutoencoderKL` (factor 4, 4 latent channels): the default when no trained VAE is given. Real
# checkpoints copy the config of the VAE they were trained with (e.g. the `autoencoder_kl` recipe's).
DEFAULT_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 1.0,
}


def _clean_vae_config(vae_config: Any) -> dict:
    """A diffusers config (FrozenDict) or dict -> a plain JSON-able dict without diffusers' private keys."""
    config = dict(vae_config)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if not k.startswith("_")}


class TransfusionConfig(PreTrainedConfig):
    r"""Configuration of [`TransfusionForConditionalGeneration`]: ONE transformer over mixed sequences of text tokens
    and image patches, trained with next-token prediction on text and DDPM noise prediction on images.

    Sequence layout (section 2): text ids, and each image as `<boi> <image> x N <eoi>`, where the N `image_token_id`
    placeholders are replaced by the patches of the image's VAE latent. Attention is causal over the sequence and
    bidirectional among the patches of one image.

    Args:
        vae_config (`dict`, *optional*): the config of the diffusers `AutoencoderKL` nested in the model (latent
            channels, downsampling factor = 2 ** (len(block_out_channels) - 1), `scaling_factor`).
        image_size (`int`, *optional*, defaults to 64): image side in pixels.
        patch_size (`int`, *optional*, defaults to 2): side of a latent patch; the latent side
            (`image_size` / VAE factor) must be a multiple of it.
        patch_encoder (`str`, *optional*, defaults to `"linear"`): `"linear"` (a linear layer per patch plus a
            timestep embedding added to every patch) or `"unet"` (U-Net down blocks with timestep-conditioned ResNets
            before the transformer and up blocks with skip connections after it; section 3.2).
        unet_channels (`int`, *optional*, defaults to 64): channels of the U-Net patch blocks.
        unet_norm_groups (`int`, *optional*, defaults to 32): GroupNorm groups of the U-Net blocks (divides
            `unet_channels`).
        vocab_size (`int`, *optional*, defaults to 4096): text vocabulary (embedding rows and LM-head outputs),
            including the special tokens below.
        pad_token_id, bos_token_id, eos_token_id (`int`): the tokenizer's special ids.
        boi_token_id, eoi_token_id (`int`): begin / end of image tokens.
        image_token_id (`int`): placeholder id of an image patch position (never embedded, never predicted).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, glu, layer_norm_eps:
            transformer sizes (pre-LayerNorm blocks).
        max_position_embeddings (`int`, *optional*, defaults to 512): learned 1-D positions (text and patches alike;
            patches also get a learned row + column embedding).
        attention_dropout, hidden_dropout (`float`): dropouts in training.
        diffusion_loss_weight (`float`, *optional*, defaults to 5.0): lambda in `L = L_LM + lambda * L_DDPM`.
        num_train_timesteps (`int`, *optional*, defaults to 1000): DDPM training steps.
        beta_schedule (`str`, *optional*, defaults to `"squaredcos_cap_v2"`): diffusers' name of the cosine
            schedule.
        prediction_type (`str`, *optional*, defaults to `"epsilon"`): what the patch head predicts and the DDPM loss
            compares: `"epsilon"`, the noise (the paper), or `"v_prediction"`, the velocity
            `sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * latents` (Salimans & Ho 2022), whose loss weighs the
            clean latent's error by SNR + 1 instead of SNR, so the high-noise steps that lay out the picture keep
            their weight. Diffusers schedulers read it from the saved scheduler config.
        timestep_sampling (`str`, *optional*, defaults to `"uniform"`): how training draws each image's timestep
            below its limit T: `"uniform"` (the paper) or `"high_noise"`, a density rising linearly from 0 at t = 0
            to twice the uniform one at T (t = floor(T * sqrt(u)), u uniform), which trains 64 % of the images at
            t >= 0.6 T instead of 40 %: more of the training where the layout of the picture forms; or
            `"high_noise_quadratic"`, a density proportional to t^2 (t = floor(T * u^(1/3))), 78 % at t >= 0.6 T.
            A training setting: sampling does not read it, and evaluation (`model.eval()`) draws uniformly, so
            held-out losses compare between settings.
        initializer_range (`float`, *optional*, defaults to 0.02): std of the normal init.
        position_embedding_init (`str`, *optional*, defaults to `"normal"`): how the patches' learned row + column
            embeddings start: "normal" (N(0, `initializer_range`), as every other embedding) or "sincos_2d" (their
            sum is the 2-D sin-cos table of the patch grid, values in [-1, 1], as MAE / DiT's fixed positions, so
            attention can find a patch's neighbours from the first step; needs `hidden_size` divisible by 4). Only
            the start differs: the tables are trained parameters either way, and checkpoints load the same.
    """

    model_type = "transfusion"

    def __init__(
        self,
        vae_config: dict | None = None,
        image_size: int = 64,
        patch_size: int = 2,
        patch_encoder: str = "linear",
        unet_channels: int = 64,
        unet_norm_groups: int = 32,
        vocab_size: int = 4096,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        boi_token_id: int | None = 3,
        eoi_token_id: int | None = 4,
        image_token_id: int | None = 5,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 8,
        intermediate_size: int = 1024,
        hidden_act: str = "gelu",
        glu: bool = False,
        layer_norm_eps: float = 1e-5,
        max_position_embeddings: int = 512,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        diffusion_loss_weight: float = 5.0,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "epsilon",
        timestep_sampling: str = "uniform",
        initializer_range: float = 0.02,
        position_embedding_init: str = "normal",
        use_cache: bool = True,
        **kwargs,
    ):
        vae_config = _clean_vae_config(DEFAULT_VAE_CONFIG if vae_config is None else vae_config)
        check_choice("patch_encoder", patch_encoder, PATCH_ENCODERS)
        for name, value in (
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("vocab_size", vocab_size),
            ("num_hidden_layers", num_hidden_layers),
            ("max_position_embeddings", max_position_embeddings),
            ("num_train_timesteps", num_train_timesteps),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        check_heads("hidden_size", hidden_size, "num_attention_heads", num_attention_heads)
        factor = 2 ** (len(vae_config.get("block_out_channels", [0])) - 1)
        if image_size % factor:
            raise ValueError(
                f"`image_size` ({image_size}) must be a multiple of the VAE's downsampling factor ({factor})."
            )
        latent_size = image_size // factor
        if latent_size % patch_size:
            raise ValueError(
                f"`image_size` ({image_size}) gives a {latent_size}x{latent_size} latent (VAE factor {factor}), which "
                f"is not a multiple of `patch_size` ({patch_size}); pick an image size that is a multiple of "
                f"{factor * patch_size}."
            )
        if patch_encoder == "unet":
            if patch_size & (patch_size - 1):
                raise ValueError(f"`patch_size` must be a power of 2 with the U-Net patch encoder, got {patch_size}.")
            if unet_channels % unet_norm_groups:
                raise ValueError(
                    f"`unet_channels` ({unet_channels}) must be divisible by `unet_norm_groups` ({unet_norm_groups})."
                )
        special = {
            "pad_token_id": pad_token_id,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "boi_token_id": boi_token_id,
            "eoi_token_id": eoi_token_id,
            "image_token_id": image_token_id,
        }
        for name in ("boi_token_id", "eoi_token_id", "image_token_id"):
            if special[name] is None:
                raise ValueError(
                    f"`{name}` is required: Transfusion marks every image with <boi> <image>... <eoi>. Add the "
                    "tokens to the tokenizer (TransfusionProcessor does) and pass their ids."
                )
        for name, value in special.items():
            if value is not None and not (isinstance(value, int) and 0 <= value < vocab_size):
                raise ValueError(f"`{name}` must be an id in [0, vocab_size={vocab_size}), got {value!r}.")
        marks = [special[n] for n in ("boi_token_id", "eoi_token_id", "image_token_id")]
        others = [
            v
            for n, v in special.items()
            if v is not None and n not in ("boi_token_id", "eoi_token_id", "image_token_id")
        ]
        if len(set(marks)) != 3 or set(marks) & set(others):
            raise ValueError(f"The special token ids must be distinct from each other, got {special}.")
        check_prediction_type(prediction_type)
        check_choice("timestep_sampling", timestep_sampling, TIMESTEP_SAMPLINGS)
        check_position_embedding_init(position_embedding_init)
        if position_embedding_init == "sincos_2d" and hidden_size % 4:
            raise ValueError(
                f"`position_embedding_init='sincos_2d'` needs `hidden_size` divisible by 4, got {hidden_size}."
            )
        if diffusion_loss_weight < 0:
            raise ValueError(f"`diffusion_loss_weight` must be >= 0, got {diffusion_loss_weight}.")
        grid = latent_size // patch_size
        if max_position_embeddings < grid * grid + 2:
            raise ValueError(
                f"`max_position_embeddings` ({max_position_embeddings}) cannot hold one image of {grid * grid} patches "
                "with its <boi> / <eoi>; raise it."
            )
        self.vae_config = vae_config
        self.image_size = image_size
        self.patch_size = patch_size
        self.patch_encoder = patch_encoder
        self.unet_channels = unet_channels
        self.unet_norm_groups = unet_norm_groups
        self.vocab_size = vocab_size
        self.boi_token_id = boi_token_id
        self.eoi_token_id = eoi_token_id
        self.image_token_id = image_token_id
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.glu = glu
        self.layer_norm_eps = layer_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.diffusion_loss_weight = diffusion_loss_weight
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.prediction_type = prediction_type
        self.timestep_sampling = timestep_sampling
        self.initializer_range = initializer_range
        self.position_embedding_init = position_embedding_init
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)

    # -- derived sizes --------------------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae_config.get("latent_channels", 4)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor

    @property
    def patch_grid_size(self) -> int:
        return self.latent_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        """Patches per image, N."""
        return self.patch_grid_size**2

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * self.patch_size**2

    def scheduler_config(self) -> dict:
        """The diffusers scheduler settings the model was trained with (cosine DDPM, its prediction type, no
        clipping: scaled VAE latents are not bounded to [-1, 1])."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "prediction_type": self.prediction_type,
            "clip_sample": False,
        }


__all__ = [
    "PATCH_ENCODERS",
    "HIGH_NOISE_POWERS",
    "PREDICTION_TYPES",
    "TIMESTEP_SAMPLINGS",
    "TransfusionConfig",
    "check_prediction_type",
]
