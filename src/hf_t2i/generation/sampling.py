"""Drawing tokens from logits with an explicit `torch.Generator` (or one generator per image), on any device."""

from __future__ import annotations

import torch


#: what every sampler takes as its source of randomness: None, one generator for the whole batch, or a list of
#: generators, one per image (diffusers' convention)
Generators = torch.Generator | list[torch.Generator] | None


def rand_like_on(shape: tuple[int, ...], generator: Generators, device: torch.device, dtype=torch.float32):
    """Uniform noise drawn on the generator's device (so a CPU generator drives CUDA sampling), then moved.

    With a list of `G` generators (one per image), the `shape[0]` rows are `G` equal groups of consecutive rows, one
    per image, and group `i` is drawn from generator `i` with the shape a one-image call draws: image `i` of the batch
    gets the noise a one-image call seeded like generator `i` gets.
    """
    if isinstance(generator, (list, tuple)):
        rows, remainder = divmod(shape[0], len(generator))
        if remainder:
            raise ValueError(
                f"{len(generator)} generators (one per image) cannot split a draw of {shape[0]} rows into equal groups."
            )
        return torch.cat([rand_like_on((rows, *shape[1:]), g, device, dtype) for g in generator])
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def sample_tokens(logits: torch.Tensor, generator: Generators = None, do_sample: bool = True) -> torch.Tensor:
    """One token per row of `logits` (..., V): argmax when `do_sample=False`, else a draw from `softmax(logits)`.

    Sampling uses the Gumbel-max trick (argmax of logits + Gumbel noise), which draws from exactly the softmax
    distribution, keeps `-inf` (filtered) entries impossible, and needs only uniform noise from `generator` (with a
    list of generators, one per image: the rows are one equal group per image, see `rand_like_on`).
    """
    if not do_sample:
        return logits.argmax(dim=-1)
    uniform = rand_like_on(tuple(logits.shape), generator, logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20, max=1.0 - 1e-7)))
    return (logits.float() + gumbel).argmax(dim=-1)
