"""Decoding strategies, written once for every family.

- [`SamplingConfig`]: how tokens are drawn and how guidance is applied, validated once;
- [`ClassifierFreeGuidance`]: batch doubling, the scale schedule, the combine of the two branches;
- [`AutoregressiveDecoder`]: raster decoding with a KV cache, one token per step;
- [`MaskedDecoder`] (in `generation.masked`): iterative decoding with a pluggable reveal rule (random order,
  raster order);
- token draws through an explicit `torch.Generator` (`sample_tokens`, `rand_like_on`);
- stock `model.generate()` for the raster priors ([`ImageGenerationMixin`]: one image per call, guidance included).

Models expose the per-step computation ([`ImageGenerator`], the protocol every prior implements); pipelines run the
loops with the progress bar and the callbacks.
"""

from .autoregressive import AutoregressiveDecoder, decode_autoregressive
from .config import SamplingConfig, TokenSampler
from .guidance import GUIDANCE_SCHEDULES, MAX_GUIDANCE_SCALE, ClassifierFreeGuidance
from .protocol import ImageGenerator
from .sampling import rand_like_on, sample_tokens
from .stock_generate import ImageGenerationMixin, ImageGuidanceLogitsProcessor, image_generation_config


__all__ = [
    "GUIDANCE_SCHEDULES",
    "MAX_GUIDANCE_SCALE",
    "AutoregressiveDecoder",
    "ClassifierFreeGuidance",
    "ImageGenerationMixin",
    "ImageGenerator",
    "ImageGuidanceLogitsProcessor",
    "SamplingConfig",
    "TokenSampler",
    "decode_autoregressive",
    "image_generation_config",
    "rand_like_on",
    "sample_tokens",
]
