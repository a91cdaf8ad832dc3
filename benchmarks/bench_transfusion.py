"""Speed and memory of Transfusion's text-to-image sampling: hf_t2i next to transfusion-pytorch 0.20.0, in one run.

Config (the DALL-E benchmark issue's): 16x16 = 256 latent patches, width 256, depth 4, 8 heads, MLP x4, text vocab
4096, 32 text tokens; 30 denoising steps; random weights (speed does not depend on training); fp32.

Rows, per batch and with / without classifier-free guidance (scale 3):
    - hf_t2i `generate_image_latents` (DDIM, 30 steps): the 32-token prefix runs once into a DynamicCache, each step
      runs only the 256 patch positions; guidance is one doubled batch;
    - hf_t2i with `use_cache=False` (the prefix recomputed at every step), to show what the cache saves;
    - hf_t2i guided on the last 80 % of the steps only (`guidance_interval=(0.2, 1)`, the shipped `transfusion`
      folder's default): the unguided first fifth runs the B conditional rows alone, not the doubled batch;
    - hf_t2i VAE decode of the latents (the default small AutoencoderKL, 128 px), reported apart because the peer
      has no VAE in its loop;
    - transfusion-pytorch 0.20.0 `sample_one` (batch 1) / `sample_many` (batch 8, opt-in: `--peer-batch-8`, minutes
      per call) with `cache_kv=True`, a 32-token prompt ending in its [som] id, `fixed_modality_shape=(16, 16)`,
      `dim_latent=16` (= 4 latent channels x 2x2 patch, our patch width), and `odeint_kwargs=dict(method="euler")`
      with `modality_steps=31` time points = 30 model evaluations. Note it is a flow-matching model (not the paper's
      DDPM), its guidance runs the unconditional branch as a second forward per evaluation, and its transformer has
      extra parts (RMSNorm'd q/k, time-conditioned adaptive norms, U-Net skips), so this is a like-for-like *budget*
      (same sizes, 30 evaluations), not the same network.

Every sampling row also reports its achieved GFLOP/s next to the matmul peak of the same shapes (`_flops`).
`--quick` (`plan`) times the guided cells only, our cached sampler and the peer (at every batch, `--peer-batch-8` or
not), both at 10 steps: equal model evaluations, a third of the work.

    python benchmarks/bench_transfusion.py [--repeats N] [--threads T] [--batches 1 8] [--peer-batch-8] [--json out]
        [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import logging

import torch
from _timing import (
    DEPTH,
    GRID,
    HEADS,
    MLP,
    ROOFLINE_HEADERS,
    ROOFLINE_NOTE,
    TEXT_TOKENS,
    TEXT_VOCAB,
    WIDTH,
    Case,
    Cell,
    CellRunner,
    add_common_arguments,
    apply_common_arguments,
    finish,
    format_table,
    machine_info,
    machine_line,
    paired_ratio,
    roofline_cells,
    summary_records,
    use_smoke_sizes,
)

from hf_t2i import TransfusionConfig, TransfusionForConditionalGeneration
from hf_t2i.generation.guidance import FULL_INTERVAL


STEPS = 30
QUICK_STEPS = 10  # --quick: both sides at 10 model evaluations
GUIDANCE = 3.0
IMAGE_SIZE = 128  # default VAE (factor 4) -> 32x32x4 latent -> patch 2 -> 16x16 patches of 16 values
PEER_VERSION = "0.20.0"
PEER_INSTALL = (
    f"pip install --no-deps transfusion-pytorch=={PEER_VERSION} einx frozendict jaxtyping wadler-lindig ema-pytorch "
    "torchdiffeq loguru torch-einops-utils"
)


def build_ours() -> TransfusionForConditionalGeneration:
    config = TransfusionConfig(
        image_size=IMAGE_SIZE,
        patch_size=2,
        vocab_size=TEXT_VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
    )
    if config.num_image_tokens != GRID * GRID:
        raise RuntimeError(f"The config gives {config.num_image_tokens} patches, expected {GRID * GRID}.")
    return TransfusionForConditionalGeneration(config).eval()


def our_prompt(model, batch: int) -> torch.Tensor:
    """`<s> 30 caption ids </s> <boi>`: 32 text tokens, then <boi>."""
    c = model.config
    text = torch.randint(10, TEXT_VOCAB, (batch, TEXT_TOKENS - 2), generator=torch.Generator().manual_seed(0))
    ends = torch.tensor([[c.bos_token_id]]).expand(batch, 1), torch.tensor([[c.eos_token_id, c.boi_token_id]])
    return torch.cat([ends[0], text, ends[1].expand(batch, 2)], dim=1)


def build_peer():
    try:
        from transfusion_pytorch import Transfusion
    except ImportError as error:
        return (
            None,
            f"transfusion-pytorch is not importable ({error}); its rows are skipped. To add them: {PEER_INSTALL}",
        )
    logging.getLogger().setLevel(logging.WARNING)
    try:  # its sampler logs every step through loguru
        from loguru import logger

        logger.remove()
    except ImportError:
        pass
    version = importlib.metadata.version("transfusion-pytorch")
    model = Transfusion(
        num_text_tokens=TEXT_VOCAB,
        dim_latent=16,
        modality_default_shape=(GRID, GRID),
        transformer=dict(dim=WIDTH, depth=DEPTH, dim_head=WIDTH // HEADS, heads=HEADS, ff_expansion_factor=4),
        odeint_kwargs=dict(method="euler"),
    ).eval()
    note = "" if version == PEER_VERSION else f" (the issue's figure is for {PEER_VERSION})"
    return model, f"transfusion-pytorch {version}{note}"


def peer_prompts(peer, batch: int) -> list[torch.Tensor]:
    som = peer.som_ids[0]
    g = torch.Generator().manual_seed(0)
    return [torch.cat([torch.randint(0, TEXT_VOCAB, (TEXT_TOKENS - 1,), generator=g), torch.tensor([som])])] * batch


@torch.no_grad()
def peer_sample(peer, prompts: list[torch.Tensor], guidance: float, steps: int | None = None):
    """The peer's sample of each prompt at `steps` model evaluations (default `STEPS`)."""
    torch.manual_seed(0)
    kwargs = dict(
        max_length=1, fixed_modality_shape=(GRID, GRID), modality_steps=(steps or STEPS) + 1, cfg_scale=guidance
    )
    if len(prompts) == 1:
        out = peer.sample_one(prompts[0], cache_kv=True, **kwargs)
        return [out]
    return peer.sample_many(prompts, **kwargs)


INTERVAL = (0.2, 1.0)  # the guided steps of the interval row
OURS, OURS_INTERVAL, OURS_FULL, OURS_DECODE, PEER = (
    "hf_t2i generate_image_latents",
    f"hf_t2i, guided on steps in {INTERVAL}",
    "hf_t2i, prefix recomputed each step",
    "hf_t2i VAE decode",
    "transfusion-pytorch sample (euler)",
)
HEADERS = [
    "implementation",
    "batch",
    "guidance",
    "s / image",
    "ms / step (whole batch)",
    "peak RSS Δ MiB",
    "vs transfusion-pytorch",
    *ROOFLINE_HEADERS,
]
#: the keys of `plan`'s cells
CACHED, INTERVAL_CASE, RECOMPUTED, DECODE, TRANSFUSION_PYTORCH = (
    "cached",
    "interval",
    "recomputed",
    "decode",
    "transfusion-pytorch",
)


def plan(mode: str, batches: list[int], peer_batch_8: bool = False) -> list[Cell]:
    """The cells of a run. Full and smoke: per batch, an unguided and a guided cell of our cached and recomputed
    samplers, the VAE decode in the unguided one, our cached sampler guided on `INTERVAL` in the guided one, and the peer at batch 1 (at every batch with `peer_batch_8`), at
    `STEPS` steps. Quick: the guided cells only, our cached sampler and the peer at every batch, at `QUICK_STEPS`."""
    if mode == "quick":
        return [Cell(batch, GUIDANCE, (CACHED, TRANSFUSION_PYTORCH), QUICK_STEPS) for batch in batches]
    cells = []
    for batch in batches:
        peer = (TRANSFUSION_PYTORCH,) if batch == 1 or peer_batch_8 else ()
        cells.append(Cell(batch, 1.0, (CACHED, RECOMPUTED, DECODE, *peer), STEPS))
        cells.append(Cell(batch, GUIDANCE, (CACHED, INTERVAL_CASE, RECOMPUTED, *peer), STEPS))
    return cells


def cell_cases(ours, peer, cell: Cell, quick: bool) -> list[Case]:
    """The cases of a `plan` cell (the peer's only where it is installed). Quick runs name the steps in each row,
    since they differ from the full run's."""
    batch, guidance, steps = cell.batch, cell.guidance_scale, cell.iterations
    suffix = f", {steps} steps" if quick else ""
    prompt = our_prompt(ours, batch)

    def sample(use_cache=True, guidance_interval=FULL_INTERVAL):
        return ours.generate_image_latents(
            prompt,
            guidance_scale=guidance,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            use_cache=use_cache,
            guidance_interval=guidance_interval,
        )

    def sample_in_interval():
        return sample(guidance_interval=INTERVAL)

    prompts = peer_prompts(peer, batch) if peer is not None else None

    def peer_fn():
        return peer_sample(peer, prompts, guidance, steps)

    cases = []
    for key in cell.cases:
        if key == CACHED:
            cases.append(Case(OURS + suffix, sample, per=batch, count_flops=True))
        elif key == INTERVAL_CASE:
            cases.append(Case(OURS_INTERVAL + suffix, sample_in_interval, per=batch, count_flops=True))
        elif key == RECOMPUTED:
            cases.append(Case(OURS_FULL + suffix, lambda: sample(False), per=batch, count_flops=True))
        elif key == DECODE:
            latents = ours.generate_image_latents(prompt, num_inference_steps=1)
            cases.append(Case(OURS_DECODE, lambda z=latents: ours.decode_image_tokens(z), per=batch))
        elif key == TRANSFUSION_PYTORCH and peer is not None:
            cases.append(Case(PEER + suffix, peer_fn, per=batch, count_flops=True))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--peer-batch-8", action="store_true", help="also time the peer at batch > 1 (slow)")
    args = parser.parse_args()
    apply_common_arguments(parser, args)
    if args.smoke:  # no peer fixes the grid here: 4 x 4 patches of a 32 px image
        use_smoke_sizes(globals(), STEPS=2, GRID=4, IMAGE_SIZE=32)
    torch.manual_seed(0)
    ours = build_ours()
    peer, peer_note = build_peer()
    machine = machine_info(torch.get_num_threads())
    print(machine_line(machine))
    steps = QUICK_STEPS if args.quick else STEPS
    print(
        f"config ({args.mode}): {GRID}x{GRID} latent patches ({IMAGE_SIZE} px), width {WIDTH}, depth {DEPTH}, "
        f"{HEADS} heads, MLP {MLP}, text {TEXT_TOKENS} tokens x vocab {TEXT_VOCAB}, {steps} steps, fp32"
    )
    print(peer_note)

    started = datetime.datetime.now()
    runner = CellRunner(args.mode, args.repeats)
    rows, records, summary, noisy = [], [], [], []
    for cell in plan(args.mode, args.batches, args.peer_batch_8):
        batch, guidance, steps = cell.batch, cell.guidance_scale, cell.iterations
        cases = cell_cases(ours, peer, cell, args.quick)
        peer_case = next((c for c in cases if c.name.startswith(PEER)), None)
        peers = [peer_case] if peer_case is not None else []
        with torch.inference_mode():
            runner.run(cases, peers)
        sampling = [c for c in cases if c.name != OURS_DECODE]
        summary += summary_records("transfusion", sampling, peers, batch, guidance, steps=steps)
        summary += summary_records("transfusion", [c for c in cases if c.name == OURS_DECODE], [], batch, None)
        for case in cases:
            if case.error:
                rows.append([case.name, batch, "-", f"error: {case.error}", *[""] * (len(HEADERS) - 4)])
                continue
            if case.spread and case.spread > 1.5:
                noisy.append(f"batch {batch} {case.name} ({case.spread:.2f}x)")
            per_image = case.median  # `Case.median` is already per image (`per=batch`)
            step_ms = "" if case.name == OURS_DECODE else f"{1000 * case.median * batch / steps:.1f}"
            compared = peer_case is not None and case is not peer_case and case.name != OURS_DECODE
            ratio = paired_ratio(peer_case, case) if compared else None
            guided = "-" if case.name == OURS_DECODE else ("3.0" if guidance != 1.0 else "off")
            memory = case.memory_median
            rows.append(
                [
                    case.name,
                    batch,
                    guided,
                    f"{per_image:.3f}",
                    step_ms,
                    "n/a" if memory is None else f"{memory:.0f}",
                    "" if ratio is None else f"{ratio:.1f}x faster",
                    *roofline_cells(case),
                ]
            )
            records.append(
                {"case": case.name, "batch": batch, "guidance": guided, "seconds": case.seconds, "memory": memory}
            )
    print(format_table(HEADERS, rows))
    print(ROOFLINE_NOTE)
    peers = {"transfusion-pytorch": None if peer is not None else peer_note}
    finish(
        "transfusion",
        args,
        machine,
        started,
        {"peers": peers, "summary": summary, "rows": records, "noisy_rows": noisy},
    )


if __name__ == "__main__":
    main()
