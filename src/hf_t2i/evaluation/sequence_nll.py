"""Exact negative log-likelihood of images under a discrete-token Fluid model, comparable between generation orders.

The held-out losses that training reports do not compare a raster-order model with a random-order one: a raster
model's is the next-token cross-entropy over the whole image, a random-order model's the cross-entropy of the tokens
masked at a cosine-drawn ratio (most of the image hidden, on average). Drawn one token at a time, both kinds of model
define the same thing, the probability of the whole image given its caption,
`log p(x | c) = sum_k log p(x_{o_k} | x_{o_1}, ..., x_{o_(k-1)}, c)` along the model's order `o`:

- raster order: `o` is the raster scan, and one teacher-forced forward pass gives every term;
- random order: `o` is a random permutation drawn per image from `seed`, and each term takes one forward pass with the
  tokens not yet drawn masked (N passes): the model's own sampling process at N iterations, one token each, without
  guidance. Averaged over images it estimates the order-averaged likelihood the model is trained towards.

The report is nats per image token, overall and for each quarter of the order (the first quarter is drawn with
little of the image known, the last with most of it), on validation images of `shapes`.

    python -m hf_t2i.evaluation.sequence_nll runs/study64/discrete-random/final [--num-images 64]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .context_probe import probe_main, validation_inputs


def check_sequence_model(model) -> None:
    """A text-conditional Fluid model with discrete tokens, or a `ValueError` naming what it is."""
    config = model.config
    if config.is_continuous or config.is_class_conditional:
        raise ValueError(
            "The sequence likelihood needs a text-conditional Fluid model with discrete tokens (a continuous model "
            "has no exact token likelihood; compare its held-out loss within its token type); this one has "
            f"token_type={config.token_type!r}"
            f"{', num_classes=' + str(config.num_classes) if config.is_class_conditional else ''}."
        )


@torch.no_grad()
def token_nll(model, input_ids, attention_mask, tokens: torch.Tensor, orders: torch.Tensor | None) -> torch.Tensor:
    """(B, N) negative log-likelihood of each image token of `tokens` (B, N) ids given its caption and the tokens
    before it in the order: the raster scan for a causal model, else `orders` (B, N), one permutation of the N
    positions per image. Column k holds the k-th token drawn (raster: the k-th of the scan)."""
    if model.config.is_causal:
        logits = model(input_ids, attention_mask, image_tokens=tokens, return_loss=False).logits
        return -logits.float().log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    batch, length = tokens.shape
    text = model.model.encode_text(input_ids, attention_mask)  # once for the N passes
    rank = orders.argsort(1)  # (B, N): when each position is drawn
    rows = torch.arange(batch, device=tokens.device)
    nll = torch.empty(batch, length, device=tokens.device)
    for step in range(length):
        hidden = model.model(
            attention_mask=attention_mask, image_tokens=tokens, mask=rank >= step, encoder_outputs=text
        ).last_hidden_state
        position = orders[:, step]  # (B,)
        logits = model.lm_head(hidden[rows, position]).float()  # (B, V)
        nll[:, step] = F.cross_entropy(logits, tokens[rows, position], reduction="none")
    return nll


@torch.no_grad()
def sequence_nll(pipe, num_images: int = 64, seed: int = 0, batch_size: int = 32) -> dict:
    """The measurement of the module docstring.

    Args:
        pipe: a `FluidPipeline` with a text-conditional, discrete-token model (either order).
        num_images: validation images of `shapes`, at the model's image size.
        seed: seed of the random orders (raster order draws nothing).
        batch_size: images per forward pass.

    Returns:
        {"order": "raster" | "random", "num_images", "num_tokens": N, "nll_per_token": nats per image token,
        "by_quarter": nats per token of the tokens drawn in each quarter of the order}.
    """
    model = pipe.model.eval()
    check_sequence_model(model)
    for name, value in (("num_images", num_images), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
    config, device = model.config, model.device
    pixels, text = validation_inputs(pipe, num_images)
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, num_images, batch_size):
        part = slice(start, start + batch_size)
        tokens = model.encode_images(pixels[part].to(device, model.dtype))  # (b, N) ids
        orders = None
        if not config.is_causal:
            orders = torch.rand(tokens.shape, generator=generator).argsort(1).to(device)
        ids, mask = text["input_ids"][part].to(device), text["attention_mask"][part].to(device)
        parts.append(token_nll(model, ids, mask, tokens, orders).cpu())
    nll = torch.cat(parts)  # (num_images, N)
    return {
        "order": "raster" if config.is_causal else "random",
        "num_images": num_images,
        "num_tokens": nll.shape[1],
        "nll_per_token": nll.mean().item(),
        "by_quarter": [chunk.mean().item() for chunk in nll.tensor_split(4, dim=1)],
    }


def format_report(report: dict) -> str:
    """The report as one markdown table row with its header."""
    quarters = " / ".join(f"{value:.3f}" for value in report["by_quarter"])
    return "\n".join(
        [
            "| order | images | nats per token | 1st / 2nd / 3rd / 4th quarter of the order |",
            "|---|---|---|---|",
            f"| {report['order']} | {report['num_images']} | {report['nll_per_token']:.3f} | {quarters} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    return probe_main(
        argv,
        __doc__.splitlines()[0],
        "a discrete-token Fluid pipeline folder",
        sequence_nll,
        format_report,
        num_images=64,
        options=[("--seed", int, 0, "seed of the random orders")],
    )


if __name__ == "__main__":
    raise SystemExit(main())
