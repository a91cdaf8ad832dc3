"""Speed and memory of the Parti prior's image-token sampling: hf_t2i next to parti-pytorch 0.2.0, in one run.

Config (the project's benchmark issue): text vocab 4096, 32 text tokens, 16x16 = 256 image tokens, codebook 1024,
width 256, depth 4, 8 heads, MLP x4, random weights (speed does not depend on training); the text encoder has the
decoder's size (4 layers, width 256, 8 heads, MLP 1024) and runs over the 32 text tokens.

Rows, for batch 1 and 8, with and without classifier-free guidance:
    - hf_t2i `sample_image_tokens` (the text encoded once for both guidance branches, cross-attention keys/values
      computed once per prompt, a preallocated self-attention cache, one doubled batch under guidance);
    - min-dalle 0.4.11, the same paradigm (BART: a text encoder and a decoder that cross-attends to it) and the
      strongest encoder-decoder peer: its encoder and decoder at the same sizes and its token loop, exactly the
      min-dalle rows of `bench_dalle.py` (see there);
    - parti-pytorch 0.2.0's `Parti.generate` at the same sizes. It has no cache: every step re-runs the decoder over
      all previous image tokens, and under guidance runs a second, unconditional forward. Its text encoder is a frozen
      T5 downloaded by name, so a T5 encoder of our encoder's size with random weights stands in (called once per
      `generate`, as its T5 is). Its `generate` ignores its own `cond_scale` argument (always guiding at 3), so the
      scale of each row is bound onto `forward_with_cond_scale` instead.

All cases of one (batch, guidance) cell run interleaved, round after round, so that a shared machine's load falls on
all of them alike; the speed-up columns are the median over rounds of a peer's time / ours in the same round. Every
row also reports its achieved GFLOP/s next to the matmul peak of the same shapes (`_flops`). `--quick` times the
guided cells only, ours and min-dalle (parti-pytorch, without a cache, takes 17 s per guided batch-1 image; `plan`).

    python benchmarks/bench_parti.py [--repeats N] [--threads T] [--json out.json] [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import importlib.metadata
import importlib.util
import sys
import types

import bench_dalle
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
    machine_info,
    machine_line,
    parameter_mib,
    reference_ratio,
    roofline_cells,
    summary_records,
    t5_encoder,
    timing_line,
    use_smoke_sizes,
)

from hf_t2i import PartiConfig, PartiForConditionalGeneration, ViTVQGANConfig


TOP_K = 64
PEER_VERSION = "0.2.0"
PEER_INSTALL = f"pip install --no-deps parti-pytorch=={PEER_VERSION} einops"


# -- hf_t2i --------------------------------------------------------------------------------------------------------
def build_ours() -> PartiForConditionalGeneration:
    """The prior at the benchmark config; a 64px ViT-VQGAN with patch 4 gives the 16x16 grid."""
    vq = ViTVQGANConfig(image_size=64, patch_size=4, vocab_size=CODEBOOK)
    config = PartiConfig(
        vq_config=vq,
        text_vocab_size=TEXT_VOCAB,
        text_seq_len=TEXT_TOKENS,
        encoder_layers=DEPTH,
        encoder_attention_heads=HEADS,
        encoder_intermediate_size=MLP,
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
    )
    if config.num_image_tokens != GRID * GRID:
        raise RuntimeError(f"The ViT-VQGAN config gives {config.num_image_tokens} image tokens, expected {GRID**2}.")
    return PartiForConditionalGeneration(config).eval()


def ours_sample(model, text: torch.Tensor, negative: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    guided = guidance_scale != 1.0
    tokens = model.sample_image_tokens(
        text,
        attention_mask=torch.ones_like(text),
        negative_input_ids=negative if guided else None,
        negative_attention_mask=torch.zeros_like(negative) if guided else None,
        guidance_scale=guidance_scale,
        top_k=TOP_K,
        generator=torch.Generator().manual_seed(0),
    )
    if tokens.shape != (text.shape[0], GRID * GRID):
        raise RuntimeError(f"sample_image_tokens returned {tuple(tokens.shape)}.")
    return tokens


# -- parti-pytorch -------------------------------------------------------------------------------------------------
def import_parti_pytorch() -> tuple[types.ModuleType | None, str]:
    """`parti_pytorch.parti_pytorch` without running the package `__init__` (which imports its VQGAN trainer and
    through it torchvision, ema-pytorch and vector-quantize-pytorch, none of which the prior needs).

    The prior module imports `torchvision.transforms` only to turn outputs into PIL images (`return_pil_images`),
    which the benchmark does not ask for; where torchvision is absent an empty stand-in module takes its place.
    """
    spec = importlib.util.find_spec("parti_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None, f"parti-pytorch is not installed, so its rows are skipped; to add them: {PEER_INSTALL}"
    if importlib.util.find_spec("einops") is None:
        return None, f"parti-pytorch needs einops, which is not installed: {PEER_INSTALL}"
    version = importlib.metadata.version("parti-pytorch")
    if "parti_pytorch" not in sys.modules:
        package = types.ModuleType("parti_pytorch")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["parti_pytorch"] = package
    if importlib.util.find_spec("torchvision") is None:
        torchvision = types.ModuleType("torchvision")
        torchvision.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.setdefault("torchvision", torchvision)
        sys.modules.setdefault("torchvision.transforms", torchvision.transforms)
    module = importlib.import_module("parti_pytorch.parti_pytorch")
    note = "" if version == PEER_VERSION else f" (the issue's figures are for {PEER_VERSION})"
    return module, f"parti-pytorch {version}{note}"


class _GridOnly(torch.nn.Module):
    """What `Parti.__init__` reads from its VAE: codebook size, image size and the token grid's side."""

    codebook_size = CODEBOOK
    image_size = 64

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # Parti moves itself to its VAE's device

    def get_encoded_fmap_size(self, image_size: int) -> int:
        return GRID


class PartiPytorchRunner:
    """parti-pytorch's `Parti` at the benchmark config: width 256, depth 4, 8 heads of 32, feed-forward x4,
    codebook 1024 on a 16x16 grid, cross-attention to 256-d text states from a T5 encoder of our encoder's size.
    After construction its VAE is removed, so `generate` returns the image codes (no pixel decode), as ours does."""

    def __init__(self, module: types.ModuleType):
        self.t5 = t5_encoder(TEXT_VOCAB, WIDTH, HEADS, MLP, DEPTH).eval()
        # `Parti.__init__` evaluates `get_encoded_dim(t5_name)` (a Hub download) even when `text_embed_dim` is given
        module.get_encoded_dim = lambda name: WIDTH
        self.parti = module.Parti(
            dim=WIDTH,
            depth=DEPTH,
            dim_head=WIDTH // HEADS,
            heads=HEADS,
            ff_mult=MLP // WIDTH,
            vae=_GridOnly(),
            text_embed_dim=WIDTH,
            max_text_len=TEXT_TOKENS,
        ).eval()
        self.parti.vae = None
        self.text: torch.Tensor | None = None
        self.parti.encode_texts = self._encode_texts

    @torch.no_grad()
    def _encode_texts(self, texts, output_device=None):
        """Stands in for `t5_encode_text`: the token ids are set on `self.text` before each call."""
        mask = torch.ones_like(self.text, dtype=torch.bool)
        return self.t5(input_ids=self.text).last_hidden_state, mask

    def sample(self, text: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        self.text = text
        # `Parti.generate` does not pass its `cond_scale` on to `forward_with_cond_scale` (which then always uses its
        # default, 3): bind the requested scale so that the unguided rows really run one forward per step
        self.parti.forward_with_cond_scale = functools.partial(
            type(self.parti).forward_with_cond_scale, self.parti, cond_scale=guidance_scale
        )
        torch.manual_seed(0)
        # filter_thres keeps the top (1 - thres) fraction: 1 - 64/1024 keeps exactly top_k = 64 codes
        tokens = self.parti.generate(
            [""] * text.shape[0], cond_scale=guidance_scale, filter_thres=1 - TOP_K / CODEBOOK
        )
        if tokens.shape != (text.shape[0], GRID, GRID):
            raise RuntimeError(f"parti-pytorch returned {tuple(tokens.shape)}.")
        return tokens


# -- the benchmark -------------------------------------------------------------------------------------------------
OURS = "hf_t2i sample_image_tokens"
HEADERS = [
    "implementation",
    "batch",
    "guidance",
    "s / image",
    "ms / token step",
    "peak RSS Δ MiB",
    "vs min-dalle",
    "vs parti-pytorch",
    *ROOFLINE_HEADERS,
]
#: the keys of `plan`'s cells
SAMPLE, MIN_DALLE, PARTI_PYTORCH = "sample", "min-dalle", "parti-pytorch"


def plan(mode: str, batches: list[int], guidance_scale: float) -> list[Cell]:
    """The cells of a run. Full and smoke: for each batch, an unguided and a guided cell of our sampler, min-dalle
    and parti-pytorch. Quick: the guided cells only, ours and min-dalle (the stronger peer of this paradigm)."""
    if mode == "quick":
        return [Cell(batch, guidance_scale, (SAMPLE, MIN_DALLE)) for batch in batches]
    return [
        Cell(batch, scale, (SAMPLE, MIN_DALLE, PARTI_PYTORCH)) for batch in batches for scale in (1.0, guidance_scale)
    ]


def cell_cases(model, peers: dict, text, negative, scale, keys) -> tuple[Case, dict[str, Case]]:
    """Our case and the peers' (name -> case) of one (batch, guidance) cell; `peers` maps each installed peer's key
    to its name and runner, and only the peers in `keys` (a `plan` cell's) take part."""
    batch = text.shape[0]
    ours = Case(OURS, lambda: ours_sample(model, text, negative, scale), batch, count_flops=True)
    peer_cases = {
        name: Case(name, lambda peer=peer: peer.sample(text, scale), batch, count_flops=True)
        for key, (name, peer) in peers.items()
        if key in keys
    }
    return ours, peer_cases


def table_row(case: Case, references: dict[str, Case], batch: int, scale: float) -> tuple[list[str], dict]:
    ratios = {name: reference_ratio(case, reference) for name, reference in references.items()}
    min_dalle = next((r for name, r in ratios.items() if name.startswith("min-dalle")), None)
    parti = next((r for name, r in ratios.items() if name.startswith("parti-pytorch")), None)
    median = case.median
    row = [
        case.name,
        str(batch),
        f"{scale:g}" if scale != 1.0 else "off",
        f"FAILED: {case.error}" if case.error else f"{median:.3f}",
        "-" if median is None else f"{median * batch / (GRID * GRID) * 1e3:.2f}",
        "n/a" if case.memory_median is None else f"{case.memory_median:.1f}",
        "-" if min_dalle is None else f"{min_dalle:.2f}x",
        "-" if parti is None else f"{parti:.2f}x",
        *roofline_cells(case),
    ]
    record = {
        "implementation": case.name,
        "batch": batch,
        "guidance_scale": scale,
        "seconds_per_call": case.seconds,
        "cpu_seconds_per_call": case.cpu_seconds,
        "seconds_per_image_median": median,
        "peak_rss_delta_mib_median": case.memory_median,
        "speed_up_vs_min_dalle": min_dalle,
        "speed_up_vs_parti_pytorch": parti,
        "slowest_over_fastest": case.spread,
        "error": case.error,
    }
    return row, record


def run_benchmark(args: argparse.Namespace) -> dict:
    model = build_ours()
    peers, skipped, notes = {}, {}, []
    cells = plan(args.mode, args.batches, args.guidance_scale)
    wanted = {key for cell in cells for key in cell.cases}
    min_dalle_models, min_dalle_version, min_dalle_note = bench_dalle.import_min_dalle_models()
    if min_dalle_models is not None:
        peers[MIN_DALLE] = (f"min-dalle {min_dalle_version}", bench_dalle.MinDalleRunner(min_dalle_models))
    else:
        skipped["min-dalle"] = min_dalle_note
    notes.append(min_dalle_note)
    if PARTI_PYTORCH in wanted:
        module, parti_note = import_parti_pytorch()
        if module is not None:
            peers[PARTI_PYTORCH] = (parti_note.split(" (")[0], PartiPytorchRunner(module))
        else:
            skipped["parti-pytorch"] = parti_note
        notes.append(parti_note)
    generator = torch.Generator().manual_seed(1234)
    negative = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)  # the processor's '' : all pads, masked out
    runner = CellRunner(args.mode, args.repeats)
    texts = {}
    rows, records, all_cases, summary = [], [], [], []
    for batch, scale, keys, _ in cells:
        if batch not in texts:  # the same prompts in every cell of a batch, drawn in the order of batches
            texts[batch] = torch.randint(3, TEXT_VOCAB, (batch, TEXT_TOKENS), generator=generator)
        ours, peer_cases = cell_cases(model, peers, texts[batch], negative, scale, keys)
        cases = [ours, *peer_cases.values()]
        runner.run(cases, list(peer_cases.values()))
        all_cases.extend(cases)
        summary += summary_records("parti", cases, list(peer_cases.values()), batch, scale)
        for case in cases:
            row, record = table_row(case, peer_cases, batch, scale)
            rows.append(row)
            records.append(record)
    noisy = [
        f"{r['implementation']} (batch {r['batch']})" for r, c in zip(records, all_cases) if (c.spread or 1) > 1.5
    ]
    weights = {"hf_t2i prior (encoder + decoder)": parameter_mib(model.model, model.lm_head)}
    for _, peer in peers.values():
        if isinstance(peer, PartiPytorchRunner):
            weights["parti-pytorch prior + T5 stand-in"] = parameter_mib(peer.parti, peer.t5)
        else:
            weights["min-dalle encoder + decoder"] = parameter_mib(peer.encoder, peer.decoder)
    return {
        "table": format_table(HEADERS, rows),
        "rows": records,
        "noisy_rows": noisy,
        "peer": "; ".join(notes),
        "peers": {
            "min-dalle": skipped.get("min-dalle"),
            **({"parti-pytorch": skipped.get("parti-pytorch")} if PARTI_PYTORCH in wanted else {}),
        },
        "summary": summary,
        "weights_mib": weights,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="guidance scale of the guided rows")
    args = parser.parse_args()
    apply_common_arguments(parser, args)
    if args.guidance_scale == 1.0:
        parser.error("--guidance-scale must differ from 1.0 (1.0 is the unguided row).")
    if args.smoke:  # min-dalle's runner reads bench_dalle's sizes
        use_smoke_sizes(globals(), TOP_K=8)
        use_smoke_sizes(vars(bench_dalle), TOP_K=8)

    machine = machine_info(torch.get_num_threads())
    print(machine_line(machine))
    print(
        f"config ({args.mode}): text {TEXT_TOKENS} tokens x vocab {TEXT_VOCAB} through a {DEPTH}-layer encoder, image {GRID}x{GRID} "
        f"x codebook {CODEBOOK}, width {WIDTH}, depth {DEPTH}, {HEADS} heads, MLP {MLP}, top_k {TOP_K}, fp32, "
        "random weights"
    )
    print(timing_line(args.mode, args.repeats))
    started = datetime.datetime.now()
    result = run_benchmark(args)
    print(f"peer: {result['peer']}")
    print("weights (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in result["weights_mib"].items()))
    print()
    print(result["table"])
    print()
    print(
        "s / image: median call time / batch. ms / token step: median call time / 256.\n"
        "peak RSS Δ: growth of the process's peak RSS over its RSS just before the call (median over all calls).\n"
        "vs <peer>: median over rounds of the peer's time / this row's time, both from the same round "
        "(> 1 = faster than the peer).\n" + ROOFLINE_NOTE
    )
    finish("parti", args, machine, started, result)


if __name__ == "__main__":
    main()
