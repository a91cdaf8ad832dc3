"""Configuration of DALL-E's discrete VAE."""

from __future__ import annotations

from transformers import PreTrainedConfig


class DalleDVAEConfig(PreTrainedConfig):
    r"""Configuration of [`DalleDVAE`], the conv ResNet discrete VAE of DALL-E (Ramesh et al. 2021, section 2.1).

    The defaults build a small model for 64x64 images. `DalleDVAEConfig.paper()` gives OpenAI's released
    256x256 -> 32x32, 8192-code model (whose weights `conversion_scripts/convert_dalle_dvae_to_hf.py` converts).

    Args:
        image_size (`int`, *optional*, defaults to 64): side of the square input images.
        num_channels (`int`, *optional*, defaults to 3): image channels.
        vocab_size (`int`, *optional*, defaults to 1024): codebook size K (number of image tokens).
        hidden_size (`int`, *optional*, defaults to 64): `n_hid`, the width of the first group.
        channel_multipliers (`list[int]`, *optional*, defaults to `[1, 2, 4]`): width of each group in units of
            `hidden_size`. The encoder max-pools by 2 between groups, so the grid side is
            `image_size / 2 ** (len(channel_multipliers) - 1)`. The paper uses `[1, 2, 4, 8]`.
        num_blocks_per_group (`int`, *optional*, defaults to 2): residual blocks per group.
        decoder_init_channels (`int`, *optional*, defaults to 128): `n_init`, width of the decoder's 1x1 input conv.
        reconstruction_loss (`str`, *optional*, defaults to `"logit_laplace"`): `"logit_laplace"` (the paper's) or
            `"mse"`.
        logit_laplace_eps (`float`, *optional*, defaults to 0.1): pixels are mapped to `[eps, 1 - eps]` before the
            logit-Laplace likelihood (paper section A.3).
        initializer_range (`float`, *optional*, defaults to 0.02): unused by the convs (which use fan-in init) but
            kept for transformers compatibility.
    """

    model_type = "dalle_dvae"

    def __init__(
        self,
        image_size: int = 64,
        num_channels: int = 3,
        vocab_size: int = 1024,
        hidden_size: int = 64,
        channel_multipliers: list[int] | tuple[int, ...] = (1, 2, 4),
        num_blocks_per_group: int = 2,
        decoder_init_channels: int = 128,
        reconstruction_loss: str = "logit_laplace",
        logit_laplace_eps: float = 0.1,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        channel_multipliers = list(channel_multipliers)
        if not channel_multipliers or any(m < 1 for m in channel_multipliers):
            raise ValueError(
                f"`channel_multipliers` must be a non-empty list of positive ints, got {channel_multipliers}."
            )
        downsample = 2 ** (len(channel_multipliers) - 1)
        if image_size % downsample:
            raise ValueError(
                f"`image_size` ({image_size}) must be divisible by 2 ** (len(channel_multipliers) - 1) = {downsample}."
            )
        if reconstruction_loss not in ("logit_laplace", "mse"):
            raise ValueError(f"`reconstruction_loss` must be 'logit_laplace' or 'mse', got {reconstruction_loss!r}.")
        if not 0 <= logit_laplace_eps < 0.5:
            raise ValueError(f"`logit_laplace_eps` must be in [0, 0.5), got {logit_laplace_eps}.")
        for name, value in (
            ("vocab_size", vocab_size),
            ("hidden_size", hidden_size),
            ("num_blocks_per_group", num_blocks_per_group),
        ):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        if hidden_size % 4:
            raise ValueError(
                f"`hidden_size` must be divisible by 4 (the residual branch is 1/4 wide), got {hidden_size}."
            )
        self.image_size = image_size
        self.num_channels = num_channels
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.channel_multipliers = channel_multipliers
        self.num_blocks_per_group = num_blocks_per_group
        self.decoder_init_channels = decoder_init_channels
        self.reconstruction_loss = reconstruction_loss
        self.logit_laplace_eps = logit_laplace_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def grid_size(self) -> int:
        """Side of the token grid."""
        return self.image_size // self.downsample_factor

    @classmethod
    def paper(cls, **kwargs) -> DalleDVAEConfig:
        """OpenAI's released dVAE: 256x256 -> 32x32 tokens, 8192 codes, n_hid 256, 4 groups of 2 blocks."""
        defaults = dict(
            image_size=256,
            vocab_size=8192,
            hidden_size=256,
            channel_multipliers=[1, 2, 4, 8],
            num_blocks_per_group=2,
            decoder_init_channels=128,
        )
        defaults.update(kwargs)
        return cls(**defaults)


__all__ = ["DalleDVAEConfig"]
