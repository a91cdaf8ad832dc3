"""Vector quantization with factorised, l2-normalised codes (ViT-VQGAN, Yu et al. 2021, section 3.2).

Encoder outputs are projected to a low-dimensional space (e.g. 32-d) before the lookup, and both they and the
codebook are l2-normalised, so the nearest code is the one of highest cosine similarity. This raises codebook usage
compared with a plain Euclidean lookup in the full width. Gradients pass with the straight-through estimator.

Usage is tracked with an exponential moving average of code counts (updated in training mode only);
`reinit_dead_codes` replaces codes whose usage fell below a threshold by encoder outputs of the current batch (drawn
with an explicit generator, favouring the worst-quantised ones). The codebook is initialised on the unit sphere (`reset_parameters`): with an
l2-normalised lookup only directions matter, and unit norm keeps the optimiser's relative step size sane.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    """Args:
    quantized: (..., D) codes with straight-through gradients.
    indices: (...) code ids.
    loss: codebook + commitment loss.
    perplexity: exp(entropy) of this batch's code usage.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor


class FactorizedVectorQuantizer(nn.Module):
    """Nearest-code lookup in an l2-normalised low-dimensional space.

    Args:
        num_codes: codebook size K.
        code_dim: dimension D of the codes.
        commitment_cost: beta, weight of `||z_e - sg(z_q)||^2` (the codebook term has weight 1).
        usage_decay: decay of the moving average of code usage.
    """

    def __init__(self, num_codes: int, code_dim: int, commitment_cost: float = 0.25, usage_decay: float = 0.99):
        super().__init__()
        if num_codes < 2 or code_dim < 1:
            raise ValueError(f"Need `num_codes` >= 2 and `code_dim` >= 1, got {num_codes} and {code_dim}.")
        self.num_codes, self.code_dim = num_codes, code_dim
        self.commitment_cost = commitment_cost
        self.usage_decay = usage_decay
        self.codebook = nn.Embedding(num_codes, code_dim)
        self.register_buffer("usage", torch.full((num_codes,), 1.0 / num_codes))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Codes drawn uniformly on the unit sphere (normalised Gaussians); usage reset to uniform."""
        self.codebook.weight.normal_()
        self.codebook.weight.copy_(F.normalize(self.codebook.weight, dim=-1))
        self.usage.fill_(1.0 / self.num_codes)

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim < 1 or latents.shape[-1] != self.code_dim:
            raise ValueError(
                f"`latents` must end with the code dimension {self.code_dim}, got {tuple(latents.shape)}."
            )

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight, dim=-1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) ids -> (..., D) normalised codes."""
        return F.embedding(indices, self.normalized_codebook())

    def nearest(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., D) latents -> (...) ids of the codes of highest cosine similarity."""
        self._check_latents(latents)
        flat = F.normalize(latents.reshape(-1, self.code_dim).float(), dim=-1)
        return (flat @ self.normalized_codebook().float().t()).argmax(dim=-1).view(latents.shape[:-1])

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """latents: (..., D) encoder outputs (not yet normalised)."""
        z_e = F.normalize(latents, dim=-1)
        indices = self.nearest(latents)
        z_q = self.lookup(indices).to(z_e.dtype)
        loss = F.mse_loss(z_q, z_e.detach()) + self.commitment_cost * F.mse_loss(z_e, z_q.detach())
        quantized = z_e + (z_q - z_e).detach()  # straight-through
        counts = torch.bincount(indices.flatten(), minlength=self.num_codes).float()
        probs = counts / counts.sum().clamp_min(1)
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        if self.training:
            with torch.no_grad():
                self.usage.mul_(self.usage_decay).add_(probs.to(self.usage.dtype), alpha=1 - self.usage_decay)
        return QuantizerOutput(quantized, indices, loss, perplexity)

    @torch.no_grad()
    def reinit_dead_codes(
        self, latents: torch.Tensor, threshold: float | None = None, generator: torch.Generator | None = None
    ) -> int:
        """Replace the codes whose moving-average usage is below `threshold` (default: 10% of uniform, i.e. about
        230 steps without use at `usage_decay=0.99`) by l2-normalised rows of `latents` (..., D), and reset their
        usage to uniform. Returns how many codes were replaced.

        Rows are drawn without replacement (while there are enough) with probability proportional to their
        quantisation error `1 - cos(latent, nearest code)`, as k-means++ seeds centroids: revived codes go where
        the codebook serves the data worst (on images with large flat areas, uniform draws would mostly land on the
        background, which one code already represents)."""
        self._check_latents(latents)
        threshold = 0.1 / self.num_codes if threshold is None else threshold
        if not 0 <= threshold <= 1:
            raise ValueError(f"`threshold` must be a usage frequency in [0, 1], got {threshold}.")
        dead = (self.usage < threshold).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        flat = F.normalize(latents.detach().reshape(-1, self.code_dim).float(), dim=-1)  # (M, D)
        if flat.shape[0] == 0:
            raise ValueError("`latents` is empty: pass the encoder outputs of a non-empty batch.")
        error = 1 - (flat @ self.normalized_codebook().float().t()).amax(dim=-1)  # (M,)
        weights = error.clamp_min(0) + 1e-6  # every row stays possible
        replacement = dead.numel() > flat.shape[0]
        gen_device = generator.device if generator is not None else torch.device("cpu")
        picks = torch.multinomial(weights.to(gen_device), dead.numel(), replacement=replacement, generator=generator)
        self.codebook.weight[dead] = flat[picks.to(flat.device)].to(self.codebook.weight.dtype)
        self.usage[dead] = 1.0 / self.num_codes
        return int(dead.numel())

    def codebook_perplexity(self) -> torch.Tensor:
        """exp(entropy) of the moving-average usage: the effective number of codes in use (a 0-d tensor on the
        codebook's device, so that reading it each training step does not wait for the accelerator)."""
        probs = self.usage / self.usage.sum()
        return torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
