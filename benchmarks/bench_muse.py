"""Speed and memory of Muse / MaskGIT sampling (confidence-ordered masked decoding): hf_t2i next to
muse-maskgit-pytorch 0.3.5, in one run.

Config (the DALL-E benchmark issue's): text vocab 4096, 32 text tokens, 16x16 = 256 image tokens, codebook 1024,
width 256, depth 4, 8 heads, MLP x4 (1024), fp32, random weights (speed does not depend on training),
classifier-free guidance 3.0, top-k 103 (muse-maskgit's default `top_k(logits, thres=0.9)` keeps
ceil(0.1 * 1024) = 103 codes), at 12 iterations (Muse's and our default) and 18 (muse-maskgit's `generate` default).

Rows, for each batch:
    - hf_t2i Muse: `MuseForConditionalGeneration.sample_image_tokens(num_inference_steps=K, guidance_scale=3,
      top_k=103)`: the captions are encoded once per call (our rows include the 4-block text encoder over 32
      tokens), guidance runs as one doubled batch, every masked position is drawn and the most confident are kept
      (`generation.masked.ConfidenceOrder`, MaskGIT's annealed Gumbel noise on the confidence).
    - muse-maskgit-pytorch 0.3.5: its `MaskGitTransformer` (same sizes, cross-attention to given text embeddings,
      random init) driven by a copy of `MaskGit.generate`'s token loop (`bench_fluid.muse_generate`), whose
      guidance (`forward_with_cond_scale`) runs the conditional and unconditional batches as two forwards per step.

Peer set-up (offline, no weights): see `bench_fluid.py`'s docstring; `pip install --no-deps
muse-maskgit-pytorch==0.3.5 memory-efficient-attention-pytorch==0.1.6 beartype==0.23.1 einops==0.8.2`.

    python benchmarks/bench_muse.py [--repeats N] [--threads T] [--batches 1 8] [--steps 12 18] [--json out.json]
        [--quick | --smoke]

`--quick` runs 12 iterations only (unless `--steps` is given). Every row also reports its achieved GFLOP/s next to
the matmul peak of the same shapes (`_flops`).
"""

from __future__ import annotations

import argparse
import datetime

import bench_fluid
import torch
from _timing import (
    CODEBOOK,
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
    iterative_rows,
    machine_info,
    machine_line,
    parameter_mib,
    summary_records,
    use_smoke_sizes,
)
from bench_fluid import GUIDANCE, build_muse, import_muse, muse_case

from hf_t2i import DalleDVAEConfig, MuseConfig, MuseForConditionalGeneration


TOP_K = 103  # muse-maskgit-pytorch's top_k(logits, thres=0.9) at 1024 codes


def build_ours() -> MuseForConditionalGeneration:
    vq = DalleDVAEConfig(image_size=4 * GRID, vocab_size=CODEBOOK, channel_multipliers=[1, 2, 4], hidden_size=64)
    config = MuseConfig(
        vq_config=vq,
        text_vocab_size=TEXT_VOCAB,
        text_seq_len=TEXT_TOKENS,
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
        encoder_layers=DEPTH,
        encoder_attention_heads=HEADS,
        encoder_intermediate_size=MLP,
    )
    assert config.num_image_tokens == GRID * GRID
    torch.manual_seed(0)
    return MuseForConditionalGeneration(config).eval()


def ours_case(model, batch: int, steps: int) -> Case:
    text = torch.randint(3, TEXT_VOCAB, (batch, TEXT_TOKENS))
    negative = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)

    def fn():
        return model.sample_image_tokens(
            text,
            negative_input_ids=negative,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            top_k=TOP_K,
            generator=torch.Generator().manual_seed(0),
        )

    return Case(f"hf_t2i Muse, {steps} iterations", fn, per=batch, count_flops=True)


OURS, MUSE_MASKGIT = "ours", "muse-maskgit"


def plan(mode: str, batches: list[int], steps: list[int] | None = None) -> list[Cell]:
    """The cells of a run, all guided at `GUIDANCE`: per batch and iteration count (`--steps`), ours and
    muse-maskgit. The modes differ only in the default iteration counts: 12 and 18 (full), 12 (quick), 4 (smoke)."""
    if steps is None:
        steps = [12] if mode == "quick" else [4] if mode == "smoke" else [12, 18]
    return [Cell(batch, GUIDANCE, (OURS, MUSE_MASKGIT), iterations) for batch in batches for iterations in steps]


def run_benchmark(args) -> dict:
    ours = build_ours()
    muse, peer = import_muse()
    transformer = build_muse(muse) if muse is not None else None
    runner = CellRunner(args.mode, args.repeats)
    rows, raw, noisy, summary = [], [], [], []
    for batch, _, _, steps in plan(args.mode, args.batches, args.steps):
        mine = ours_case(ours, batch, steps)
        cases = [mine]
        peer_case = None
        if transformer is not None:
            peer_case = muse_case(muse, transformer, batch, steps)
            peer_case.name = f"muse-maskgit-pytorch 0.3.5, {steps} iterations"
            cases.append(peer_case)
        peers = [peer_case] if peer_case is not None else []
        runner.run(cases, peers)
        summary += summary_records("muse", cases, peers, batch, GUIDANCE, iterations=steps)
        iterative_rows(cases, peer_case, batch, steps, rows, raw, noisy)
    headers = [
        "batch",
        "case",
        "s / image",
        "ms / iteration",
        "peak RSS Δ (MiB)",
        "vs muse-maskgit",
        *ROOFLINE_HEADERS,
    ]
    weights = {"muse prior (with text encoder)": parameter_mib(ours, exclude=("vqmodel",))}
    if transformer is not None:
        weights["muse-maskgit transformer"] = parameter_mib(transformer)
    return {
        "table": format_table(headers, rows),
        "raw": raw,
        "noisy_rows": noisy,
        "peer": peer,
        "peers": {"muse-maskgit-pytorch": None if transformer is not None else peer},
        "summary": summary,
        "weights": weights,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=3)
    parser.add_argument(
        "--steps", type=int, nargs="+", default=None, help="decoding iterations (default 12 18; 12 with --quick)"
    )
    args = parser.parse_args()
    apply_common_arguments(parser, args)
    if args.smoke:  # the peer's transformer and loop read bench_fluid's sizes
        use_smoke_sizes(globals(), TOP_K=8)
        use_smoke_sizes(vars(bench_fluid))
    if args.steps is not None and any(s < 1 or s > GRID * GRID for s in args.steps):
        parser.error(f"--steps must be in [1, {GRID * GRID}], got {args.steps}.")
    machine = machine_info(torch.get_num_threads())
    print(machine_line(machine))
    print(
        f"config ({args.mode}): text {TEXT_TOKENS} tokens x vocab {TEXT_VOCAB}, image {GRID}x{GRID} tokens, codebook {CODEBOOK}, "
        f"width {WIDTH}, depth {DEPTH}, {HEADS} heads, MLP {MLP}, guidance {GUIDANCE}, top-k {TOP_K}, fp32, "
        "random weights"
    )
    started = datetime.datetime.now()
    result = run_benchmark(args)
    print(f"peer: {result['peer']}")
    print("weights (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in result["weights"].items()))
    print()
    print(result["table"])
    print()
    print(
        "s / image: median call time / batch. ms / iteration: median call time / iterations. vs muse-maskgit: median "
        "over rounds of muse-maskgit's time / this row's, same round (> 1 = faster).\n" + ROOFLINE_NOTE
    )
    finish("muse", args, machine, started, result)


if __name__ == "__main__":
    main()
