"""Configuration of DALLE-pytorch's own discrete VAE (its `DiscreteVAE`, what its `train_vae.py` trains)."""

from __future__ import annotations

from transformers import PreTrainedConfig


class DallePytorchDVAEConfig(PreTrainedConfig):
    r"""Configuration of [`DallePytorchDVAE`]: DALLE-pytorch's `DiscreteVAE`, a strided-conv encoder to logits over
    a codebook, a codebook embedding and a transposed-conv decoder, trained with the Gumbel-softmax relaxation. The
    argument names of DALLE-pytorch's constructor are given for each field.

    Args:
        image_size (`int`, *optional*, defaults to 64): side of the square input images (`image_size`).
        num_channels (`int`, *optional*, defaults to 3): image channels (`channels`).
        vocab_size (`int`, *optional*, defaults to 512): codebook size (`num_tokens`).
        codebook_dim (`int`, *optional*, defaults to 512): width of the codebook vectors (`codebook_dim`).
        num_layers (`int`, *optional*, defaults to 3): stride-2 convs of the encoder (transposed ones of the
            decoder); the token grid side is `image_size / 2 ** num_layers` (`num_layers`).
        num_resnet_blocks (`int`, *optional*, defaults to 0): residual blocks after the encoder's convs and before
            the decoder's (`num_resnet_blocks`).
        hidden_size (`int`, *optional*, defaults to 64): width of every conv (`hidden_dim`).
        normalization_mean (`list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`), normalization_std
            (`list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`): DALLE-pytorch normalises [0, 1] images by
            these before encoding, and the decoder predicts images in that normalised space (`normalization`). The
            defaults make the normalised space the package's [-1, 1].
        gumbel_temperature (`float`, *optional*, defaults to 0.9): Gumbel-softmax temperature of `forward`
            (`temperature`; renamed: transformers reserves `temperature` for generation settings).
        straight_through (`bool`, *optional*, defaults to `False`): decode the hard one-hot of the relaxed sample in
            `forward` (`straight_through`).
        kl_div_loss_weight (`float`, *optional*, defaults to 0.0): weight of KL(q || uniform) in the loss
            (`kl_div_loss_weight`).
        reconstruction_loss (`str`, *optional*, defaults to `"mse"`): `"mse"`, or `"smooth_l1"`
            (`smooth_l1_loss=True`).
        initializer_range (`float`, *optional*, defaults to 0.02): kept for transformers compatibility; the layers
            keep PyTorch's default init, as DALLE-pytorch's.
    """

    model_type = "dalle_pytorch_dvae"

    def __init__(
        self,
        image_size: int = 64,
        num_channels: int = 3,
        vocab_size: int = 512,
        codebook_dim: int = 512,
        num_layers: int = 3,
        num_resnet_blocks: int = 0,
        hidden_size: int = 64,
        normalization_mean: list[float] | tuple[float, ...] | None = None,
        normalization_std: list[float] | tuple[float, ...] | None = None,
        gumbel_temperature: float = 0.9,
        straight_through: bool = False,
        kl_div_loss_weight: float = 0.0,
        reconstruction_loss: str = "mse",
        initializer_range: float = 0.02,
        **kwargs,
    ):
        for name, value in (
            ("image_size", image_size),
            ("num_channels", num_channels),
            ("vocab_size", vocab_size),
            ("codebook_dim", codebook_dim),
            ("num_layers", num_layers),
            ("hidden_size", hidden_size),
        ):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        if num_resnet_blocks < 0:
            raise ValueError(f"`num_resnet_blocks` must be >= 0, got {num_resnet_blocks}.")
        if image_size % 2**num_layers:
            raise ValueError(
                f"`image_size` ({image_size}) must be divisible by 2 ** num_layers = {2**num_layers}: each of the "
                "`num_layers` stride-2 convs halves the image."
            )
        mean = [float(v) for v in (normalization_mean if normalization_mean is not None else [0.5] * num_channels)]
        std = [float(v) for v in (normalization_std if normalization_std is not None else [0.5] * num_channels)]
        if len(mean) != num_channels or len(std) != num_channels or min(std) <= 0:
            raise ValueError(
                f"`normalization_mean` and `normalization_std` need one value per channel ({num_channels}) and "
                f"positive stds, got {mean} and {std}."
            )
        if reconstruction_loss not in ("mse", "smooth_l1"):
            raise ValueError(f"`reconstruction_loss` must be 'mse' or 'smooth_l1', got {reconstruction_loss!r}.")
        if gumbel_temperature <= 0:
            raise ValueError(f"`gumbel_temperature` must be > 0, got {gumbel_temperature}.")
        self.image_size = image_size
        self.num_channels = num_channels
        self.vocab_size = vocab_size
        self.codebook_dim = codebook_dim
        self.num_layers = num_layers
        self.num_resnet_blocks = num_resnet_blocks
        self.hidden_size = hidden_size
        self.normalization_mean = mean
        self.normalization_std = std
        self.gumbel_temperature = gumbel_temperature
        self.straight_through = straight_through
        self.kl_div_loss_weight = kl_div_loss_weight
        self.reconstruction_loss = reconstruction_loss
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def downsample_factor(self) -> int:
        return 2**self.num_layers

    @property
    def grid_size(self) -> int:
        """Side of the token grid."""
        return self.image_size // self.downsample_factor


__all__ = ["DallePytorchDVAEConfig"]
