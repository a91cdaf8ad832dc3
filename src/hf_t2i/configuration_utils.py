"""Validation shared by the model configs: each raises a `ValueError` naming the field, its value and the rule."""

from __future__ import annotations

import math

from transformers import AutoConfig, PreTrainedConfig


#: how a model's learned image positions start (`position_embedding_init` of Fluid and Transfusion)
POSITION_EMBEDDING_INITS = ("normal", "sincos_2d")


def check_choice(name: str, value, choices: tuple) -> None:
    """Refuse a `value` of the setting `name` that is not one of `choices`, naming the setting, the choices and the
    value (every "must be one of" check of the package: configs, layers, losses, recipes' flags, output types)."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def check_position_embedding_init(position_embedding_init: str) -> None:
    """Refuse an unknown `position_embedding_init` (shared by the configs and the recipes' flags)."""
    check_choice("position_embedding_init", position_embedding_init, POSITION_EMBEDDING_INITS)


def is_finite_number(value) -> bool:
    """An int or float (not a bool), finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive_ints(**values: int) -> None:
    """Each keyword's value must be an int >= 1 (a bool is refused)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def check_heads(width_name: str, width: int, heads_name: str, heads: int) -> None:
    """Attention heads must split the width evenly (both must be positive ints first: a string such as "192" from a
    hand-edited config.json is reported as such, not as a failed `%`)."""
    check_positive_ints(**{width_name: width, heads_name: heads})
    if width % heads:
        raise ValueError(f"`{width_name}` ({width}) must be divisible by `{heads_name}` ({heads}).")


def text_encoder_config_from(text_encoder_config: PreTrainedConfig | dict | None) -> PreTrainedConfig | None:
    """A pretrained text encoder's config from its dict (as saved in `config.json`), which must name a `model_type`."""
    if isinstance(text_encoder_config, dict):
        if text_encoder_config.get("model_type") is None:
            raise ValueError("`text_encoder_config` must name its `model_type` (e.g. 'bert').")
        text_encoder_config = AutoConfig.for_model(**text_encoder_config)
    return text_encoder_config
