"""Drawing tokens from logits with an explicit `torch.Generator`, on any device."""

from __future__ import annotations

import torch


def rand_like_on(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype=torch.float32):
    """Uniform noise drawn on the generator's device (so a CPU generator drives CUDA sampling), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def sample_tokens(
    logits: torch.Tensor, generator: torch.Generator | None = None, do_sample: bool = True
) -> torch.Tensor:
    """One token per row of `logits` (..., V): argmax when `do_sample=False`, else a draw from `softmax(logits)`.

    Sampling uses the Gumbel-max trick (argmax of logits + Gumbel noise), which draws from exactly the softmax
    distribution, keeps `-inf` (filtered) entries impossible, and needs only uniform noise from `generator`.
    """
    if not do_sample:
        return logits.argmax(dim=-1)
    uniform = rand_like_on(tuple(logits.shape), generator, logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20, max=1.0 - 1e-7)))
    return (logits.float() + gumbel).argmax(dim=-1)
