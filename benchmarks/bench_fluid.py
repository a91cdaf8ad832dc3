"""Speed and memory of Fluid's 64-iteration random-order sampling: hf_t2i next to muse-maskgit-pytorch 0.3.5, in one
run.

Config (the DALL-E benchmark issue's): text vocab 4096, 32 text tokens, 16x16 = 256 image tokens, width 256, depth 4,
8 heads, MLP x4 (1024), fp32, random weights (speed does not depend on training), classifier-free guidance 3.0.

Rows, for batch 1 and 8 (`plan`; `--quick`: the head-25 row and the peer only, both at 16 iterations):
    - hf_t2i Fluid, continuous tokens (16 values each: 2x2 patches of 4-channel latents), random order:
      `sample_image_tokens(num_inference_steps=64, num_diffusion_steps=D)` with the paper's D = 100 and D = 25
      (3-layer, 256-wide diffusion head; each token's reverse steps run once, when the token is revealed; guidance on
      the head's epsilon as one doubled batch).
    - hf_t2i Fluid, discrete tokens (codebook 1024), random order, 64 iterations (`top_k=64`).
    - muse-maskgit-pytorch 0.3.5 (`MaskGitTransformer(num_tokens=1024, seq_len=256, dim=256, depth=4, heads=8,
      dim_head=32, ff_mult=4)`, random init), driven by a copy of `MaskGit.generate`'s token loop with
      `timesteps=64`, `cond_scale=3`, its default `topk_filter_thres=0.9`, text embeddings given directly.

Peer set-up, all forced by "offline, no weights": `pip install --no-deps muse-maskgit-pytorch==0.3.5
memory-efficient-attention-pytorch==0.1.6 beartype==0.23.1 einops==0.8.2`. The package imports torchvision and
vector-quantize-pytorch at module level for its VQGAN only, and its `Transformer.__init__` asks the Hub for the T5
config; the script imports `muse_maskgit_pytorch.muse_maskgit_pytorch` with stand-ins for those two modules (removed
right after), and pre-fills its T5 config cache with a local `T5Config(d_model=256)`, so the text embeddings (random,
32 x 256, not timed: MUSE encodes text with a frozen T5 outside the loop) need no projection. Its guidance
(`forward_with_cond_scale`) runs the conditional and the unconditional batch as two forwards per step; ours runs one
doubled batch. Our rows include the text encoder (4 blocks over 32 tokens, once per call). Every row also reports
its achieved GFLOP/s next to the matmul peak of the same shapes (`_flops`).

    python benchmarks/bench_fluid.py [--repeats N] [--threads T] [--batches 1 8] [--json out.json] [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import sys
import types

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
from diffusers import DPMSolverMultistepScheduler
from transformers import T5Config

from hf_t2i import DalleDVAEConfig, FluidConfig, FluidForConditionalGeneration
from hf_t2i.models.fluid import small_vae_config


STEPS = 64
QUICK_STEPS = 16  # --quick: both sides at 16 iterations, a quarter of the work
HEAD_STEPS = (100, 25)  # the diffusion head's reverse steps per revealed token: the paper's, and a faster setting
SOLVER_STEPS = 15  # DPM-Solver++ head steps: the 32 px `fluid` checkpoint's default (the 64 px one: DDPM 50)
TOP_K = 64
GUIDANCE = 3.0
MUSE_VERSION = "0.3.5"
MUSE_INSTALL = (
    f"pip install --no-deps muse-maskgit-pytorch=={MUSE_VERSION} memory-efficient-attention-pytorch==0.1.6 "
    "beartype==0.23.1 einops==0.8.2"
)


# -- hf_t2i --------------------------------------------------------------------------------------------------------
def build_ours(token_type: str) -> FluidForConditionalGeneration:
    common = dict(
        token_type=token_type,
        generation_order="random",
        text_vocab_size=TEXT_VOCAB,
        text_seq_len=TEXT_TOKENS,
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
    )
    if token_type == "continuous":  # 128px -> 32x32x4 latents -> 16x16 tokens of 16 values
        config = FluidConfig(vae_config=small_vae_config(8 * GRID), patch_size=2, **common)
    else:  # 64px -> 16x16 codes
        vq = DalleDVAEConfig(image_size=4 * GRID, vocab_size=CODEBOOK, channel_multipliers=[1, 2, 4], hidden_size=64)
        config = FluidConfig(vq_config=vq, **common)
    assert config.num_image_tokens == GRID * GRID
    torch.manual_seed(0)
    return FluidForConditionalGeneration(config).eval()


def ours_case(model, batch: int, name: str, steps: int | None = None, **kwargs) -> Case:
    """Our sampler at `steps` iterations (default `STEPS`)."""
    text = torch.randint(3, TEXT_VOCAB, (batch, TEXT_TOKENS))
    negative = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)

    def fn():
        return model.sample_image_tokens(
            text,
            negative_input_ids=negative,
            num_inference_steps=steps or STEPS,
            guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        )

    return Case(name, fn, per=batch, count_flops=True)


# -- muse-maskgit-pytorch ------------------------------------------------------------------------------------------
def import_muse():
    """`muse_maskgit_pytorch.muse_maskgit_pytorch` without torchvision / vector-quantize-pytorch and the Hub (see the
    module docstring), or None with the reason."""
    spec = importlib.util.find_spec("muse_maskgit_pytorch")
    if spec is None:
        return None, f"muse-maskgit-pytorch is not installed ({MUSE_INSTALL})"
    version = importlib.metadata.version("muse-maskgit-pytorch")
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = types.ModuleType("torchvision.transforms")
    vqgan = types.ModuleType("muse_maskgit_pytorch.vqgan_vae")
    vqgan.VQGanVAE = object
    package = types.ModuleType("muse_maskgit_pytorch")
    package.__path__ = list(spec.submodule_search_locations)
    stand_ins = {
        "torchvision": torchvision,
        "torchvision.transforms": torchvision.transforms,
        "muse_maskgit_pytorch": package,
        "muse_maskgit_pytorch.vqgan_vae": vqgan,
    }
    saved = {name: sys.modules.get(name) for name in ("torchvision", "torchvision.transforms")}
    sys.modules.update(stand_ins)
    try:
        from muse_maskgit_pytorch import muse_maskgit_pytorch as muse
        from muse_maskgit_pytorch import t5

        t5.T5_CONFIGS["local-t5"] = {"config": T5Config(d_model=WIDTH)}
    except ImportError as error:
        return None, f"muse-maskgit-pytorch {version} cannot be imported: {error} ({MUSE_INSTALL})"
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return muse, f"muse-maskgit-pytorch {version}"


def build_muse(muse):
    torch.manual_seed(0)
    return muse.MaskGitTransformer(
        num_tokens=CODEBOOK,
        seq_len=GRID * GRID,
        dim=WIDTH,
        depth=DEPTH,
        heads=HEADS,
        dim_head=WIDTH // HEADS,
        ff_mult=4,
        t5_name="local-t5",
    ).eval()


@torch.no_grad()
def muse_generate(
    muse, transformer, text_embeds: torch.Tensor, generator: torch.Generator, steps: int | None = None
) -> torch.Tensor:
    """A copy of `MaskGit.generate`'s loop (0.3.5) without its VAE, T5 and tqdm: confidence-based re-masking,
    `cosine_schedule`, `top_k(logits, 0.9)`, annealed Gumbel sampling, `forward_with_cond_scale`. Its `uniform` noise
    uses the global RNG; we seed it from `generator` once per call. `steps` defaults to `STEPS`."""
    steps = steps or STEPS
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    batch, seq_len = text_embeds.shape[0], GRID * GRID
    mask_id = transformer.mask_id
    ids = torch.full((batch, seq_len), mask_id, dtype=torch.long)
    scores = torch.zeros(batch, seq_len)
    for timestep, steps_until_x0 in zip(torch.linspace(0, 1, steps), reversed(range(steps))):
        num_masked = max(int((muse.cosine_schedule(timestep) * seq_len).item()), 1)
        masked = scores.topk(num_masked, dim=-1).indices
        ids = ids.scatter(1, masked, mask_id)
        logits = transformer.forward_with_cond_scale(ids, text_embeds=text_embeds, cond_scale=GUIDANCE)
        filtered = muse.top_k(logits, 0.9)
        temperature = steps_until_x0 / steps
        pred = muse.gumbel_sample(filtered, temperature=temperature, dim=-1)
        is_mask = ids == mask_id
        ids = torch.where(is_mask, pred, ids)
        scores = 1 - logits.softmax(dim=-1).gather(2, pred[..., None])[..., 0]
        scores = scores.masked_fill(~is_mask, -1e5)
    return ids


def muse_case(muse, transformer, batch: int, steps: int | None = None) -> Case:
    embeds = torch.randn(batch, TEXT_TOKENS, WIDTH, generator=torch.Generator().manual_seed(0))

    def fn():
        return muse_generate(muse, transformer, embeds, torch.Generator().manual_seed(0), steps)

    return Case("muse-maskgit-pytorch (discrete, confidence order)", fn, per=batch, count_flops=True)


# -- run -----------------------------------------------------------------------------------------------------------
MUSE_MASKGIT, DISCRETE = "muse-maskgit", "discrete"


def continuous_key(head_steps: int, solver: bool = False) -> str:
    """The `plan` key of the continuous row with `head_steps` head steps (DDPM, or DPM-Solver++ with `solver`)."""
    return f"continuous:{'dpmpp' if solver else ''}{head_steps}"


def plan(mode: str, batches: list[int]) -> list[Cell]:
    """The cells of a run, all guided at `GUIDANCE`. Full and smoke: per batch, the continuous rows at each of
    `HEAD_STEPS` (DDPM) and with DPM-Solver++ at `SOLVER_STEPS`, the discrete row and muse-maskgit, at `STEPS`
    iterations. Quick: the continuous row with the fast head sampler (DPM-Solver++, `SOLVER_STEPS`) and
    muse-maskgit, both at `QUICK_STEPS` iterations (equal iterations, a quarter of the work)."""
    solver = continuous_key(SOLVER_STEPS, solver=True)
    if mode == "quick":
        return [Cell(batch, GUIDANCE, (solver, MUSE_MASKGIT), QUICK_STEPS) for batch in batches]
    keys = (*(continuous_key(steps) for steps in HEAD_STEPS), solver, DISCRETE, MUSE_MASKGIT)
    return [Cell(batch, GUIDANCE, keys, STEPS) for batch in batches]


def cell_cases(continuous, discrete, muse, transformer, cell: Cell, quick: bool) -> tuple[list[Case], Case | None]:
    """The cases of a `plan` cell and its peer case (None where muse-maskgit is not installed). Quick runs name the
    iterations in each row, since they differ from the full run's."""
    suffix = f", {cell.iterations} iterations" if quick else ""
    cases, peer_case = [], None
    for key in cell.cases:
        if key == MUSE_MASKGIT:
            if transformer is not None:
                peer_case = muse_case(muse, transformer, cell.batch, cell.iterations)
                peer_case.name += suffix
                cases.append(peer_case)
        elif key == DISCRETE:
            name = f"hf_t2i Fluid discrete{suffix}"
            cases.append(ours_case(discrete, cell.batch, name, cell.iterations, top_k=TOP_K))
        elif key.startswith("continuous:dpmpp"):
            head_steps = int(key.removeprefix("continuous:dpmpp"))
            name = f"hf_t2i Fluid continuous, head DPM-Solver++ {head_steps} steps{suffix}"
            solver = DPMSolverMultistepScheduler.from_config(continuous.scheduler.config)
            cases.append(
                ours_case(
                    continuous, cell.batch, name, cell.iterations, num_diffusion_steps=head_steps, scheduler=solver
                )
            )
        else:
            head_steps = int(key.split(":")[1])
            name = f"hf_t2i Fluid continuous, head {head_steps} steps{suffix}"
            cases.append(ours_case(continuous, cell.batch, name, cell.iterations, num_diffusion_steps=head_steps))
    return cases, peer_case


def run_benchmark(args) -> dict:
    continuous, discrete = build_ours("continuous"), build_ours("discrete")
    muse, peer = import_muse()
    transformer = build_muse(muse) if muse is not None else None
    runner = CellRunner(args.mode, args.repeats)
    rows, raw, noisy, summary = [], [], [], []
    for cell in plan(args.mode, args.batches):
        batch, iterations = cell.batch, cell.iterations
        cases, peer_case = cell_cases(continuous, discrete, muse, transformer, cell, args.quick)
        peers = [peer_case] if peer_case is not None else []
        runner.run(cases, peers)
        summary += summary_records("fluid", cases, peers, batch, GUIDANCE, iterations=iterations)
        iterative_rows(cases, peer_case, batch, iterations, rows, raw, noisy)
    headers = [
        "batch",
        "case",
        "s / image",
        "ms / iteration",
        "peak RSS Δ (MiB)",
        "vs muse-maskgit",
        *ROOFLINE_HEADERS,
    ]
    weights = {
        "fluid continuous prior": parameter_mib(continuous, exclude=("vae",)),
        "fluid discrete prior": parameter_mib(discrete, exclude=("vqmodel",)),
    }
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
    add_common_arguments(parser, repeats=2)
    args = parser.parse_args()
    apply_common_arguments(parser, args)
    if args.smoke:
        use_smoke_sizes(globals(), STEPS=4, HEAD_STEPS=(4, 2), SOLVER_STEPS=2, TOP_K=8)
    machine = machine_info(torch.get_num_threads())
    print(machine_line(machine))
    iterations = QUICK_STEPS if args.quick else STEPS
    print(
        f"config ({args.mode}): text {TEXT_TOKENS} tokens x vocab {TEXT_VOCAB}, image {GRID}x{GRID} tokens, width {WIDTH}, "
        f"depth {DEPTH}, {HEADS} heads, MLP {MLP}, {iterations} iterations, guidance {GUIDANCE}, fp32, random weights"
    )
    started = datetime.datetime.now()
    result = run_benchmark(args)
    print(f"peer: {result['peer']}")
    print("weights (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in result["weights"].items()))
    print()
    print(result["table"])
    print()
    print(
        f"s / image: median call time / batch. ms / iteration: median call time / {iterations}. vs muse-maskgit: median "
        "over rounds of muse-maskgit's time / this row's, same round (> 1 = faster).\n" + ROOFLINE_NOTE
    )
    finish("fluid", args, machine, started, result)


if __name__ == "__main__":
    main()
