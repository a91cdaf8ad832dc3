"""The image tokenizers that the priors nest, in one place for every model family.

A prior (DALL-E, Parti, Fluid, Transfusion) turns images into tokens with a tokenizer trained first and nested in
it, the way transformers nests `JanusVQVAE` in Janus. The families reach those tokenizers through this module only,
never through each other's folders:

| tokenizer config                                        | tokenizer                         | tokens                  |
|---------------------------------------------------------|-----------------------------------|-------------------------|
| `DalleDVAEConfig`                                       | `DalleDVAE`                       | discrete ids            |
| `DallePytorchDVAEConfig`                                | `DallePytorchDVAE`                | discrete ids (converted)|
| `ViTVQGANConfig`                                        | `ViTVQGAN`                        | discrete ids            |
| `DiffusersVQConfig`                                     | diffusers `VQModel`               | discrete ids (converted)|
| a dict of diffusers `AutoencoderKL` arguments           | diffusers `AutoencoderKL`         | continuous latents      |

- `build_image_tokenizer(config)`: a freshly initialised tokenizer (its weights come with the prior's checkpoint);
- `load_image_tokenizer(path)`: a trained tokenizer from its own folder (a training stage's export);
- `is_continuous_tokenizer`, `image_tokenizer_size`: what callers need to know of any of them;
- `vq_config_from`: a nested VQ tokenizer config back from the dict a prior's `config.json` holds.
"""

from __future__ import annotations

import json
import os

from diffusers import AutoencoderKL, VQModel
from torch import nn
from transformers import PreTrainedConfig

from .dalle_dvae.configuration_dalle_dvae import DalleDVAEConfig
from .dalle_dvae.configuration_dalle_pytorch_dvae import DallePytorchDVAEConfig
from .dalle_dvae.modeling_dalle_dvae import DalleDVAE
from .dalle_dvae.modeling_dalle_pytorch_dvae import DallePytorchDVAE
from .vit_vqgan.configuration_vit_vqgan import ViTVQGANConfig
from .vit_vqgan.modeling_vit_vqgan import ViTVQGAN


class DiffusersVQConfig(PreTrainedConfig):
    r"""A diffusers `VQModel` as an image tokenizer, for converted checkpoints whose tokenizer is a
    taming-transformers VQGAN (min-dalle's DALL·E Mega / mini detokenizer) rather than a ViT-VQGAN.

    Pass it (or its dict, recognised by `model_type`) as `PartiConfig.vq_config`; the prior then nests a
    `diffusers.VQModel(**vqmodel_config)` as `vqmodel`.

    Args:
        vqmodel_config (`dict`): the diffusers `VQModel` constructor arguments (`sample_size`, `block_out_channels`,
            `num_vq_embeddings`, `vq_embed_dim`, ...).
        output_range (`list[float]`, *optional*, defaults to `[-1.0, 1.0]`): the range the VQModel decodes to;
            `decode_image_tokens` maps it linearly to the package's [-1, 1] (min-dalle's VQGAN: `[0.0, 1.0]`).
    """

    # Saved `config.json` files name this type: it keeps the name it had when Parti was its only user.
    model_type = "parti_diffusers_vq"

    def __init__(self, vqmodel_config: dict | None = None, output_range: list[float] | None = None, **kwargs):
        vqmodel_config = dict(vqmodel_config or {})
        for key in ("sample_size", "block_out_channels", "num_vq_embeddings"):
            if key not in vqmodel_config:
                raise ValueError(f"`vqmodel_config` must set `{key}` (a diffusers `VQModel` argument).")
        output_range = [float(v) for v in (output_range if output_range is not None else (-1.0, 1.0))]
        if len(output_range) != 2 or output_range[0] >= output_range[1]:
            raise ValueError(f"`output_range` must be [low, high] with low < high, got {output_range}.")
        self.vqmodel_config = vqmodel_config
        self.output_range = output_range
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return self.vqmodel_config["num_vq_embeddings"]

    @property
    def image_size(self) -> int:
        return self.vqmodel_config["sample_size"]

    @property
    def grid_size(self) -> int:
        return self.image_size // 2 ** (len(self.vqmodel_config["block_out_channels"]) - 1)

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2


def _diffusers_vq_model(config: DiffusersVQConfig) -> VQModel:
    return VQModel(**config.vqmodel_config)


# `model_type` of a discrete tokenizer's config -> what builds the tokenizer from that config
DISCRETE_TOKENIZERS = {
    DalleDVAEConfig.model_type: DalleDVAE,
    DallePytorchDVAEConfig.model_type: DallePytorchDVAE,
    ViTVQGANConfig.model_type: ViTVQGAN,
    DiffusersVQConfig.model_type: _diffusers_vq_model,
}
# `model_type` of the tokenizers that `load_image_tokenizer` loads from a transformers folder
TRAINED_TOKENIZERS = {
    DalleDVAEConfig.model_type: DalleDVAE,
    DallePytorchDVAEConfig.model_type: DallePytorchDVAE,
    ViTVQGANConfig.model_type: ViTVQGAN,
}
TRAINED_TOKENIZER_CONFIGS = {
    DalleDVAEConfig.model_type: DalleDVAEConfig,
    DallePytorchDVAEConfig.model_type: DallePytorchDVAEConfig,
    ViTVQGANConfig.model_type: ViTVQGANConfig,
}


def vq_config_from(vq_config: PreTrainedConfig | dict | None, name: str = "vq_config") -> PreTrainedConfig:
    """The nested VQ tokenizer config of a prior's config (Fluid's discrete tokens, Muse): a `DalleDVAEConfig` or
    `ViTVQGANConfig` as given, the dict that `config.json` holds (read by its `model_type`), or None for the default
    `DalleDVAEConfig()`."""
    if vq_config is None:
        return DalleDVAEConfig()
    if isinstance(vq_config, dict):
        config_class = TRAINED_TOKENIZER_CONFIGS.get(vq_config.get("model_type"))
        if config_class is None:
            raise ValueError(
                f"`{name}` must be a config of one of {sorted(TRAINED_TOKENIZER_CONFIGS)} (its `model_type`), got "
                f"{vq_config.get('model_type')!r}."
            )
        return config_class(**{k: v for k, v in vq_config.items() if k != "model_type"})
    if not isinstance(vq_config, tuple(TRAINED_TOKENIZER_CONFIGS.values())):
        raise ValueError(f"`{name}` must be a DalleDVAEConfig or ViTVQGANConfig, got {type(vq_config).__name__}.")
    return vq_config


def build_image_tokenizer(config: PreTrainedConfig | dict) -> nn.Module:
    """A freshly initialised image tokenizer from the config a prior nests (its weights come with the prior's), frozen
    (`requires_grad=False`): a prior is trained on the tokens of an already trained tokenizer (DALL-E's stage 2,
    Parti's, Fluid's and Transfusion's frozen VAE), so its parameters are never optimised with the prior's.

    Args:
        config: a discrete tokenizer's config (`DalleDVAEConfig`, `ViTVQGANConfig`, `DiffusersVQConfig`), or a dict of
            diffusers `AutoencoderKL` arguments (the `vae_config` of Fluid and Transfusion) for continuous latents.
    """
    if isinstance(config, dict):
        return AutoencoderKL.from_config(config).requires_grad_(False)
    builder = DISCRETE_TOKENIZERS.get(getattr(config, "model_type", None))
    if builder is None:
        raise ValueError(
            f"No image tokenizer is built from a {type(config).__name__}: pass a config of one of "
            f"{sorted(DISCRETE_TOKENIZERS)} (its `model_type`) or a dict of diffusers `AutoencoderKL` arguments."
        )
    return builder(config).requires_grad_(False)


def _load_autoencoder_kl_strictly(path: str) -> AutoencoderKL:
    """diffusers' `from_pretrained` initialises missing tensors randomly and drops extra ones with only a log line;
    a tokenizer whose weights do not match its config would then encode garbage. Refuse that, naming the keys."""
    try:
        vae, info = AutoencoderKL.from_pretrained(path, output_loading_info=True)
    except (ValueError, RuntimeError, OSError) as error:
        raise ValueError(f"Cannot load the AutoencoderKL in {path!r}: {error}") from None
    problems = {
        name: sorted(info.get(key) or ())
        for name, key in (
            ("missing", "missing_keys"),
            ("unexpected", "unexpected_keys"),
            ("mismatched", "mismatched_keys"),
        )
        if info.get(key)
    }
    if problems:
        listed = "; ".join(
            f"{name}: {', '.join(map(str, keys[:5]))}{' ...' if len(keys) > 5 else ''}"
            for name, keys in problems.items()
        )
        raise ValueError(
            f"The weights in {path!r} do not match its config.json ({listed}); restore the folder as saved by "
            "`AutoencoderKL.save_pretrained`."
        )
    return vae.eval()


def load_image_tokenizer(path: str | os.PathLike) -> nn.Module:
    """A trained image tokenizer saved in `path`, in eval mode: a diffusers `AutoencoderKL` folder (its config names
    `_class_name`), or a `DalleDVAE` / `ViTVQGAN` folder (its config names `model_type`)."""
    path = os.fspath(path)
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"{path!r} has no config.json: pass the folder of a saved image tokenizer.")
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON ({error}); restore the saved image tokenizer.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} must hold a JSON object, got {type(config).__name__}.")
    if config.get("_class_name") == AutoencoderKL.__name__:
        return _load_autoencoder_kl_strictly(path)
    model_class = TRAINED_TOKENIZERS.get(config.get("model_type"))
    if model_class is None:
        found = config.get("_class_name") or config.get("model_type")
        raise ValueError(
            f"{path!r} holds a {found!r} model, not an image tokenizer: pass the folder of a trained "
            f"AutoencoderKL or of one of {sorted(TRAINED_TOKENIZERS)}."
        )
    return model_class.from_pretrained(path).eval()


def is_continuous_tokenizer(tokenizer: nn.Module) -> bool:
    """A diffusers `AutoencoderKL`: `encode` returns a latent distribution, not ids."""
    return isinstance(tokenizer, AutoencoderKL)


def image_tokenizer_size(tokenizer: nn.Module) -> int:
    """The square image side the tokenizer was built for (diffusers calls it `sample_size`)."""
    return tokenizer.config.sample_size if is_continuous_tokenizer(tokenizer) else tokenizer.config.image_size


def config_differences(model: nn.Module, other: nn.Module) -> list[str]:
    """The config fields (bookkeeping such as `_name_or_path`, `dtype` and `auto_map` aside) whose values differ
    between two models of one class (transformers or diffusers configs), or ['class'] when the classes differ. Equal
    configs of one class build the same parameters, so the two models' weights load into each other."""
    if type(model) is not type(other):
        return ["class"]

    def fields(config) -> dict:
        return dict(config.to_dict() if hasattr(config, "to_dict") else config)

    ours, theirs = fields(model.config), fields(other.config)
    keys = {key for key in ours.keys() | theirs.keys() if not key.startswith("_")}
    keys -= {"torch_dtype", "dtype", "transformers_version", "architectures", "auto_map"}
    return sorted(key for key in keys if ours.get(key) != theirs.get(key))


__all__ = [
    "DalleDVAE",
    "DalleDVAEConfig",
    "DallePytorchDVAE",
    "DallePytorchDVAEConfig",
    "DiffusersVQConfig",
    "ViTVQGAN",
    "ViTVQGANConfig",
    "build_image_tokenizer",
    "image_tokenizer_size",
    "vq_config_from",
    "is_continuous_tokenizer",
    "load_image_tokenizer",
    "config_differences",
]
