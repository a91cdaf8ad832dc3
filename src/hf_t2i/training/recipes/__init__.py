"""Recipes shipped with hf_t2i, one module per model and stage.

Each module defines a `Recipe` subclass decorated with `@register_recipe`; import it below so that
`hf-t2i train <name>` finds it (`hf_t2i.training.recipe.load_builtin_recipes` imports this package).
Keep the imports light: a recipe module imports its model, processor, pipeline, image tokenizer and losses inside
the methods that use them (`build_model`, `processor_class`, `pipeline_class`, ...), never at module level: at module
level a recipe imports the training loop's pieces only (`..recipe`, `.common`, `.token_prior`).
"""

from . import (
    autoencoder_kl,  # noqa: F401  (autoencoder_kl)
    dalle,  # noqa: F401  (dalle_dvae, dalle_prior)
    fluid,  # noqa: F401  (fluid)
    muse,  # noqa: F401  (muse)
    parti,  # noqa: F401  (parti_prior)
    transfusion,  # noqa: F401  (transfusion)
    vit_vqgan,  # noqa: F401  (vit_vqgan, vit_vqgan_upsampler)
)
from .clip import ClipScorerRecipe  # noqa: F401  (clip_scorer)
