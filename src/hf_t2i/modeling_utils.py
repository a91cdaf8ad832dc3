"""Pieces shared by the `<Name>PreTrainedModel` classes of the text-to-image transformers."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel


@torch.no_grad()
def init_transformer_weights(
    module: nn.Module, std: float, owner: PreTrainedModel, nested: tuple[type[PreTrainedModel], ...] = ()
) -> bool:
    """The GPT-2 style init of DALL-E, Parti, Fluid and Transfusion, one `_init_weights(module)` step.

    Linear and Embedding weights ~ N(0, std) with zero Linear biases; affine LayerNorms get ones and zeros; a nested
    pretrained model that is an instance of `nested` (an image tokenizer, a text encoder) but not `owner` itself
    runs its own `_init_weights` over its modules.

    Args:
        module: the module being visited.
        std: the config's `initializer_range`.
        owner: the model whose `_init_weights` is calling.
        nested: the pretrained-model classes that keep their own init.

    Returns:
        Whether `module` was one of these kinds; the caller initialises the others (its own parameters).
    """
    if isinstance(module, nested) and module is not owner:
        module.apply(module._init_weights)
    elif isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.normal_(0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        module.weight.fill_(1.0)
        module.bias.zero_()
    else:
        return False
    return True
