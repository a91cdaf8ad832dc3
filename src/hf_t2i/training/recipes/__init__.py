"""Recipes shipped with hf_t2i, one module per model and stage.

Each module defines a `Recipe` subclass decorated with `@register_recipe`; import it below so that
`hf-t2i train <name>` finds it (`hf_t2i.training.recipe.load_builtin_recipes` imports this package).
Keep the imports light: a recipe module should import its model lazily inside `build_model`.
"""

from . import (
    autoencoder_kl,  # noqa: F401  (autoencoder_kl)
    dalle,  # noqa: F401  (dalle_dvae, dalle_prior)
    fluid,  # noqa: F401  (fluid)
    parti,  # noqa: F401  (parti_prior)
    transfusion,  # noqa: F401  (transfusion)
    vit_vqgan,  # noqa: F401  (vit_vqgan, vit_vqgan_upsampler)
)
from .clip import ClipScorerRecipe  # noqa: F401  (clip_scorer)
