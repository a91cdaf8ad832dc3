"""`ImageGenerator`: the protocol every prior implements, so a pipeline drives any family the same way.

1. `prepare_image_generation(**condition, ...) -> state`: everything done once per call — the text encoder or the
   prefix prefill into the KV cache, the doubled batch of classifier-free guidance — kept in a family-specific state
   object.
2. `image_generation_step(state, ...)`: one step's model computation, in the terms of the family's decoding strategy:
   - raster decoding ([`AutoregressiveDecoder`]): `(state, previous_tokens) -> next-token logits`;
   - iterative decoding ([`MaskedDecoder`]): `(state, tokens, known, positions, scale) -> new tokens at positions`;
   - diffusion (a diffusers scheduler): `(state, latents, timestep) -> predicted noise`.
3. `decode_image_tokens(tokens) -> pixels`: the image tokenizer's decoder, (B, 3, H, W) in [-1, 1].

Pipelines run the loop between 2 and 3 with numbered steps, the progress bar and `callback_on_step_end`, whose
tensor input is always called `latents` (the image tokens or latents generated so far, as in diffusers).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ImageGenerator(Protocol):
    def prepare_image_generation(self, *args, **kwargs) -> Any: ...

    def image_generation_step(self, state: Any, *args, **kwargs) -> torch.Tensor: ...

    def decode_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor: ...


__all__ = ["ImageGenerator"]
