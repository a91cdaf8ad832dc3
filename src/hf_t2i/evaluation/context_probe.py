"""Does a random-order Fluid backbone read the tokens it has already revealed? Two measurements on `shapes` validation
images that show it long before sample grids or compositional accuracy move.

- **Attention against grid distance.** With a quarter of the tokens masked, the backbone's self-attention weight
  from a masked token to a visible token at grid distance d (Chebyshev, in tokens), averaged over heads and images,
  as a multiple of uniform attention (1.0). A backbone that has learnt where a token's neighbours are attends to
  them well above 1; one that has not attends about as much to the far side of the image.
- **The head's x0 error at high noise against the visible fraction.** The same tokens are masked in every row and
  predicted from noise step `timestep`, with 0 %, 50 % and 90 % of the other tokens visible. At high noise the
  condition is the head's only source: if the error falls as more of the image is visible, the backbone passes what
  it sees on; equal errors mean the caption alone drives the prediction.

    python -m hf_t2i.evaluation.context_probe fluid [--num-images 128]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch


DISTANCES = ("1", "2", "3", ">=4")


def head_x0_error(model, targets: torch.Tensor, condition: torch.Tensor, timestep: int, noise: torch.Tensor) -> float:
    """Mean squared error of the diffusion head's x0 estimate `(x_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t)` of clean
    tokens `targets` (M, D), noised with `noise` to step `timestep`, given conditions `condition` (M, C)."""
    alpha = model.scheduler.alphas_cumprod[timestep].to(targets)
    noisy = alpha.sqrt() * targets + (1 - alpha).sqrt() * noise
    steps = torch.full((targets.shape[0],), timestep, device=targets.device)
    eps = model.diffusion_head(noisy, steps, condition)[:, : targets.shape[1]]  # a learned variance comes second
    x0 = (noisy - (1 - alpha).sqrt() * eps) / alpha.sqrt()
    return (x0 - targets).pow(2).mean().item()


def check_probe_model(model, what: str) -> None:
    """A text-conditional, continuous-token, random-order Fluid model, or a `ValueError` naming what it is."""
    config = model.config
    if not config.is_continuous or config.is_causal or config.is_class_conditional:
        raise ValueError(
            f"{what} needs a text-conditional Fluid model with continuous tokens in random order; this one has "
            f"token_type={config.token_type!r}, generation_order={config.generation_order!r}"
            f"{', num_classes=' + str(config.num_classes) if config.is_class_conditional else ''}."
        )


def validation_inputs(pipe, num_images: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The first `num_images` pairs of the `shapes` validation split as `pipe`'s model reads them: pixel values
    (B, 3, H, W) at its image size, and the caption `input_ids` and `attention_mask` (B, S) of its processor (on CPU)."""
    from ..image_processing import T2IImageProcessor
    from .runner import load_eval_split

    size = pipe.model.config.image_size
    rows = load_eval_split("shapes", num_images, size, split="validation")
    pixels = T2IImageProcessor(image_size=size)(list(rows["image"]), return_tensors="pt")["pixel_values"]
    text = pipe.processor(text=list(rows["text"]), return_tensors="pt", padding="max_length", truncation=True)
    return pixels, {k: text[k] for k in ("input_ids", "attention_mask")}


@torch.no_grad()
def context_probe(
    pipe,
    num_images: int = 128,
    masked_fraction: float = 0.25,
    timestep: int = 900,
    visible_fractions: Sequence[float] = (0.0, 0.5, 0.9),
    seed: int = 0,
) -> dict:
    """The two measurements of the module docstring.

    Args:
        pipe: a `FluidPipeline` with a text-conditional, continuous-token, random-order model.
        num_images: validation images probed.
        masked_fraction: tokens masked for the attention measurement.
        timestep: diffusion step of the x0 measurement (of the model's `num_train_timesteps`).
        visible_fractions: fractions of the tokens visible in the x0 measurement; the predicted tokens (10 % of each
            image, at least one) are masked in every case.
        seed: seed of the masks and the noise.

    Returns:
        {"attention": one {distance: multiple of uniform} per backbone layer, "x0_error": {fraction: error},
        "token_variance": the variance of the predicted tokens (the error of predicting their mean)}.
    """
    model = pipe.model.eval()
    check_probe_model(model, "The context probe")
    config = model.config
    if num_images < 1:
        raise ValueError(f"`num_images` must be >= 1, got {num_images}.")
    if not 0 < masked_fraction < 1 or any(not 0 <= v < 1 for v in visible_fractions):
        raise ValueError(
            f"`masked_fraction` ({masked_fraction}) must be in (0, 1) and `visible_fractions` ({visible_fractions}) "
            "in [0, 1)."
        )
    if not 0 <= timestep < config.num_train_timesteps:
        raise ValueError(f"`timestep` must be in [0, {config.num_train_timesteps}), got {timestep}.")
    pixels, text = validation_inputs(pipe, num_images)
    text = {k: v.to(model.device) for k, v in text.items()}
    tokens = model.encode_images(pixels.to(model.device))  # (B, N, D)
    n, grid = tokens.shape[1], config.image_grid_size
    generator = torch.Generator().manual_seed(seed)
    rank = torch.rand(tokens.shape[:2], generator=generator).argsort(1).argsort(1).to(model.device)  # (B, N)

    masked = rank < max(1, round(n * masked_fraction))
    attentions = _self_attentions(model, text, tokens, masked)
    position = torch.arange(n, device=model.device)
    row, col = position // grid, position % grid
    distance = torch.maximum((row[:, None] - row).abs(), (col[:, None] - col).abs())  # (N, N)
    pairs = masked[:, :, None] & ~masked[:, None, :]  # masked query -> visible key
    bins = {"1": distance == 1, "2": distance == 2, "3": distance == 3, ">=4": distance >= 4}
    attention = []
    for weights in attentions:
        weights = weights.float().mean(1) * n  # (B, N, N): 1 = uniform over the N keys
        attention.append({name: weights[pairs & where].mean().item() for name, where in bins.items()})

    target = rank < max(1, round(n * 0.1))
    targets = tokens[target].float()
    noise = torch.randn(targets.shape, generator=generator).to(targets)
    errors = {}
    for visible in visible_fractions:
        hidden = model.model(**text, image_tokens=tokens, mask=rank < round(n * (1 - visible))).last_hidden_state
        errors[float(visible)] = head_x0_error(model, targets, hidden[target].to(targets), timestep, noise)
    return {"attention": attention, "x0_error": errors, "token_variance": targets.var().item()}


def _self_attentions(model, text: dict, tokens: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The backbone's self-attention weights (B, H, N, N) per layer, from the eager implementation."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        return model.model(**text, image_tokens=tokens, mask=masked, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)


def format_report(report: dict) -> str:
    """The report as two markdown tables."""
    lines = ["| layer | " + " | ".join(f"d = {d}" for d in DISTANCES) + " |", "|---" * (len(DISTANCES) + 1) + "|"]
    for layer, cells in enumerate(report["attention"]):
        lines.append(f"| {layer} | " + " | ".join(f"{cells[d]:.2f}" for d in DISTANCES) + " |")
    lines += ["", f"| visible | x0 error (token variance {report['token_variance']:.3f}) |", "|---|---|"]
    lines += [f"| {visible:.0%} | {error:.3f} |" for visible, error in report["x0_error"].items()]
    return "\n".join(lines)


def probe_main(argv, description: str, model_help: str, measure, format_report, num_images: int, options=()) -> int:
    """The command line of a probe module: `MODEL [--num-images N] [--json]` and `options`, (flag, type, default, help)
    rows; prints `measure(pipe, num_images=N, **options)` as `format_report`'s tables or as JSON."""
    from ..checkpoints import resolve_checkpoint
    from ..pipelines import T2IPipeline

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model", help=model_help)
    parser.add_argument("--num-images", type=int, default=num_images)
    for flag, kind, default, help_text in options:
        parser.add_argument(flag, type=kind, default=default, help=help_text)
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    args = vars(parser.parse_args(argv))
    pipe = T2IPipeline.from_pretrained(resolve_checkpoint(args.pop("model")), dtype=torch.float32)
    as_json = args.pop("json")
    report = measure(pipe, **args)
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    return probe_main(
        argv,
        __doc__.splitlines()[0],
        "a Fluid pipeline folder or shipped checkpoint name",
        context_probe,
        format_report,
        num_images=128,
        options=[("--timestep", int, 900, "diffusion step of the x0 measurement")],
    )


if __name__ == "__main__":
    raise SystemExit(main())
