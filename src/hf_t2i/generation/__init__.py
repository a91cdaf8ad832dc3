"""Decoding strategies, written once for every family.

- [`SamplingConfig`]: how tokens are drawn and how guidance is applied, validated once;
- [`ClassifierFreeGuidance`]: batch doubling, the scale schedule, the combine of the two branches;
- [`AutoregressiveDecoder`]: raster decoding with a KV cache, one token per step;
- token draws through an explicit `torch.Generator` (`sample_tokens`, `rand_like_on`).

Models expose the per-step computation; pipelines run the loops with the progress bar and the callbacks.
"""

from .autoregressive import AutoregressiveDecoder, decode_autoregressive
from .config import SamplingConfig, TokenSampler
from .guidance import GUIDANCE_SCHEDULES, ClassifierFreeGuidance
from .sampling import rand_like_on, sample_tokens


__all__ = [
    "GUIDANCE_SCHEDULES",
    "AutoregressiveDecoder",
    "ClassifierFreeGuidance",
    "SamplingConfig",
    "TokenSampler",
    "decode_autoregressive",
    "rand_like_on",
    "sample_tokens",
]
