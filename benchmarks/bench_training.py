"""Training throughput: one optimizer step of each family next to the peers' training steps, in one run.

Config (the project's benchmark issue): text 32 tokens x vocab 4096, image 16x16 = 256 tokens (codebook 1024, or
continuous 16-d latent tokens), width 256, depth 4, 8 heads, MLP x4, fp32, batch 8, random weights and data.

One step = `zero_grad`, the training forward with its loss, `backward`, `AdamW.step`. Rows:
    - DALL-E and Parti: the next-token loss on text + image ids (`labels`);
    - Muse: the masked-token loss (the cosine training mask drawn inside `forward`);
    - Fluid: its loss with continuous 16-d tokens (random latent tokens: no VAE encode) and with discrete codes;
    - Transfusion: LM + lambda x DDPM loss on one random 4x32x32 latent per caption (`<s> text </s> <boi> image <eoi>`);
    - peers where installed: dalle-pytorch's `DALLE(text, codes, return_loss=True)`, parti-pytorch's `Parti` (T5
      encoder of our encoder's size, trained with it), muse-maskgit-pytorch's `MaskGit` (the same trained T5
      encoder), transfusion-pytorch's `Transfusion` on (text, latent) pairs.

Columns: tokens/s (image + text tokens of the batch / step seconds), the host waits of one step (`_waits.py`: the
calls that would make the host wait for a GPU), the achieved GFLOP/s (3x the forward's matrix
products, counted by `_flops`) and that as a % of the GFLOP/s the same products and their gradients reach as plain
torch matmuls, measured in this run; the achieved GB/s (3x the bytes the forward's products move, an approximation)
and that as a % of the memory bandwidth measured in this run. Each model's steps run interleaved with its peer's,
round after round.

    python benchmarks/bench_training.py [--repeats N] [--threads T] [--json out.json] [--families dalle ...]
    python benchmarks/bench_training.py --threads 1 --profile --families parti   # where one step's time goes

`--profile` prints, instead of the timing table, a torch.profiler breakdown of one step of each family (ours and
the peer where installed), after two warm-up steps: the share of the self CPU time spent in matrix products, in
attention kernels and in everything else, and the ops that take the most time.
"""

from __future__ import annotations

import argparse
import datetime
import functools
from collections.abc import Callable

import bench_dalle
import bench_fluid
import bench_muse
import bench_parti
import bench_transfusion
import torch
from _flops import Roofline
from _peers import import_dalle_pytorch
from _profile import format_shares, op_breakdown
from _timing import (
    CODEBOOK,
    DEPTH,
    GRID,
    HEADS,
    MLP,
    TEXT_TOKENS,
    TEXT_VOCAB,
    WIDTH,
    Case,
    add_common_arguments,
    apply_common_arguments,
    finish,
    format_table,
    machine_info,
    machine_line,
    roofline_field_cells,
    run_interleaved,
    summary_records,
    t5_encoder,
    use_smoke_sizes,
)
from _waits import count_host_waits


LATENT_DIM = 16  # Fluid's continuous tokens (2x2 patches of a 4-channel latent) and transfusion-pytorch's
BATCH = 8
LEARNING_RATE = 1e-4
FAMILIES = ("dalle", "parti", "muse", "fluid", "transfusion")
HEADERS = [
    "family",
    "implementation",
    "batch",
    "s / step",
    "tokens / s",
    "host waits / step",
    "GFLOP/s",
    "% of peak",
    "GB/s",
    "% of bandwidth",
    "vs peer",
]


class Step:
    """One implementation's training step: `loss()` runs the forward (recorded for the FLOP count), `__call__` the
    whole step. `model` holds every trained parameter (a peer's text encoder too)."""

    def __init__(self, name: str, model: torch.nn.Module, loss: Callable[[], torch.Tensor], tokens: int):
        self.name, self.model, self.loss, self.tokens = name, model.train(), loss, tokens
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss().backward()
        self.optimizer.step()


def _codes(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, CODEBOOK, (batch, GRID * GRID), generator=generator)


def _text(batch: int, generator: torch.Generator, low: int = 10) -> torch.Tensor:
    return torch.randint(low, TEXT_VOCAB, (batch, TEXT_TOKENS), generator=generator)


# -- hf_t2i --------------------------------------------------------------------------------------------------------
def ours(family: str, batch: int, generator: torch.Generator) -> list[Step]:
    tokens = batch * (TEXT_TOKENS + GRID * GRID)
    text, codes = _text(batch, generator), _codes(batch, generator)
    if family == "dalle":
        model = bench_dalle.build_ours()
        ids = torch.cat([text, codes + model.config.text_vocab_size], dim=1)
        return [Step("hf_t2i DALL-E", model, lambda: model(ids, labels=ids, use_cache=False).loss, tokens)]
    if family == "parti":
        model = bench_parti.build_ours()
        return [Step("hf_t2i Parti", model, lambda: model(input_ids=text, labels=codes, use_cache=False).loss, tokens)]
    if family == "muse":
        model = bench_muse.build_ours()
        loss_generator = torch.Generator().manual_seed(0)
        return [
            Step(
                "hf_t2i Muse",
                model,
                lambda: model(input_ids=text, image_token_ids=codes, generator=loss_generator).loss,
                tokens,
            )
        ]
    if family == "fluid":
        steps = []
        for token_type, image_tokens in (
            ("continuous", torch.randn(batch, GRID * GRID, LATENT_DIM, generator=generator)),
            ("discrete", codes),
        ):
            model = bench_fluid.build_ours(token_type)
            loss_generator = torch.Generator().manual_seed(0)

            def loss(model=model, image_tokens=image_tokens, loss_generator=loss_generator):
                return model(input_ids=text, image_tokens=image_tokens, generator=loss_generator).loss

            steps.append(Step(f"hf_t2i Fluid {token_type}", model, loss, tokens))
        return steps
    if family == "transfusion":
        model = bench_transfusion.build_ours()
        c = model.config
        column = torch.ones(batch, 1, dtype=torch.long)
        ids = torch.cat(
            [
                column * c.bos_token_id,
                text[:, : TEXT_TOKENS - 2],
                column * c.eos_token_id,
                column * c.boi_token_id,
                torch.full((batch, GRID * GRID), c.image_token_id),
                column * c.eoi_token_id,
            ],
            dim=1,
        )
        labels = ids.masked_fill((ids == c.image_token_id) | (ids == c.eoi_token_id), -100)
        latent_side = c.image_size // 4  # the default VAE's factor
        latents = torch.randn(batch, LATENT_DIM // c.patch_size**2, latent_side, latent_side, generator=generator)
        loss_generator = torch.Generator().manual_seed(0)
        return [
            Step(
                "hf_t2i Transfusion",
                model,
                lambda: model(ids, image_latents=latents, labels=labels, generator=loss_generator).loss,
                tokens,
            )
        ]
    raise ValueError(f"Unknown family {family!r}; choose from {FAMILIES}.")


# -- peers ---------------------------------------------------------------------------------------------------------
@functools.cache
def _import_muse():
    """`bench_fluid.import_muse` once per process (its stand-in package cannot be found a second time)."""
    return bench_fluid.import_muse()


class _CodebookOnly:
    """What `MaskGit.__init__` reads from its VQGAN when it is trained on image codes: the codebook size."""

    def __init__(self, codebook_size: int):
        self.codebook_size = codebook_size

    def copy_for_eval(self) -> _CodebookOnly:
        return self


class _WithEncoder(torch.nn.Module):
    """A peer and its text encoder as one module, so that one optimizer trains both."""

    def __init__(self, peer: torch.nn.Module, encoder: torch.nn.Module):
        super().__init__()
        self.peer, self.encoder = peer, encoder


def peer(family: str, batch: int, generator: torch.Generator) -> tuple[Step | None, str | None]:
    """The family's peer step, or None and the reason it is skipped."""
    tokens = batch * (TEXT_TOKENS + GRID * GRID)
    text, codes = _text(batch, generator, low=1), _codes(batch, generator)
    if family == "dalle":
        module, note = import_dalle_pytorch()
        if module is None:
            return None, note
        model = bench_dalle.build_dalle_pytorch(module)  # the model bench_dalle.py samples from
        return Step(note, model, lambda: model(text, codes, return_loss=True), tokens), None
    if family == "parti":
        module, note = bench_parti.import_parti_pytorch()
        if module is None:
            return None, note
        runner = bench_parti.PartiPytorchRunner(module)
        model = _WithEncoder(runner.parti, runner.t5)

        def parti_loss():
            states = model.encoder(input_ids=text).last_hidden_state
            mask = torch.ones_like(text, dtype=torch.bool)
            return model.peer(text_token_embeds=states, text_mask=mask, image_token_ids=codes, return_loss=True)

        return Step(note.split(" (")[0], model, parti_loss, tokens), None
    if family in ("muse", "fluid"):
        muse, note = _import_muse()
        if muse is None:
            return None, note
        transformer = bench_fluid.build_muse(muse)
        maskgit = muse.MaskGit(
            image_size=4 * GRID, transformer=transformer, vae=_CodebookOnly(CODEBOOK), cond_drop_prob=0.0
        )
        model = _WithEncoder(maskgit, t5_encoder(TEXT_VOCAB, WIDTH, HEADS, MLP, DEPTH))

        def maskgit_loss():
            return model.peer(codes, text_embeds=model.encoder(input_ids=text).last_hidden_state)

        return Step(note, model, maskgit_loss, tokens), None
    if family == "transfusion":
        model, note = bench_transfusion.build_peer()
        if model is None:
            return None, note
        latents = torch.randn(batch, GRID, GRID, LATENT_DIM, generator=generator)
        pairs = [[text[i], latents[i]] for i in range(batch)]
        return Step(note.split(" (")[0], model, lambda: model(pairs), tokens), None
    raise ValueError(f"Unknown family {family!r}; choose from {FAMILIES}.")


def cells(args: argparse.Namespace):
    """For each family and batch of `args`: (family, batch, our steps, the peer's step or None, why it is None),
    every cell built from the same seeds."""
    for family in args.families:
        for batch in args.batches:
            torch.manual_seed(0)
            generator = torch.Generator().manual_seed(1234)
            steps = ours(family, batch, generator)
            yield (family, batch, steps, *peer(family, batch, generator))


def profile_steps(args: argparse.Namespace, warm_up: int = 2, top: int = 12) -> str:
    """The `--profile` report: for each family and batch, the op breakdown of one step of ours and of the peer."""
    sections = []
    for family, batch, steps, peer_step, reason in cells(args):
        for step in steps + ([peer_step] if peer_step else []):
            for _ in range(warm_up):
                step()
            table, shares = op_breakdown(step, top=top)
            sections.append(f"### {step.name}, batch {batch}: one step\n\n{format_shares(shares)}\n\n{table}")
        if reason:
            sections.append(f"### {family}: peer skipped: {reason}")
    return "\n\n".join(sections)


# -- the benchmark -------------------------------------------------------------------------------------------------
def run_benchmark(args: argparse.Namespace) -> dict:
    rows, summary, noisy, peers = [], [], [], {}
    for family, batch, steps, peer_step, reason in cells(args):
        peers[f"{family}: {peer_step.name if peer_step else 'peer'}"] = reason
        every = steps + ([peer_step] if peer_step else [])
        cases = [Case(step.name, step, batch) for step in every]
        run_interleaved(cases, args.repeats, warm_up=not args.smoke)
        rooflines = [Roofline.measure(step.loss, batch, training=True, quick_peak=args.smoke) for step in every]
        waits = [None if case.error else count_host_waits(step).total for step, case in zip(every, cases)]
        peer_cases = cases[len(steps) :]
        records = summary_records("training", cases, peer_cases, batch, None, model=family)
        for step, case, roofline, record, step_waits in zip(every, cases, rooflines, records, waits):
            fields = roofline.fields(case.median)
            tokens_per_second = step.tokens / (case.median * batch) if case.median else None
            record.update(
                fields, tokens_per_second=tokens_per_second, tokens_per_step=step.tokens, host_waits=step_waits
            )
            ratio = next(iter(record["vs_peers"].values()), None)
            rows.append(
                [
                    family,
                    case.name,
                    str(batch),
                    f"FAILED: {case.error}" if case.error else f"{case.median * batch:.3f}",
                    "-" if tokens_per_second is None else f"{tokens_per_second:,.0f}",
                    "-" if step_waits is None else str(step_waits),
                    *roofline_field_cells(
                        fields, ("gflops", "percent_of_peak", "gbytes_per_s", "percent_of_bandwidth")
                    ),
                    "-" if ratio is None else f"{ratio:.2f}x",
                ]
            )
            if (case.spread or 1) > 1.5:
                noisy.append(f"{case.name} (batch {batch})")
        summary += records
        if reason:
            rows.append([family, "peer skipped (see below)", str(batch), *["-"] * (len(HEADERS) - 3)])
    return {"table": format_table(HEADERS, rows), "summary": summary, "noisy_rows": noisy, "peers": peers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--families", nargs="+", default=list(FAMILIES), choices=FAMILIES, help="which families (default all)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print a torch.profiler breakdown of one step of each family (and its peer) instead of timing them",
    )
    parser.set_defaults(default_batches=[BATCH])
    args = parser.parse_args()
    batches_given = args.batches is not None
    apply_common_arguments(parser, args)
    if args.profile and args.json:
        parser.error("--profile prints a report and writes no JSON; drop --json (or --profile to time the steps).")
    if not batches_given:  # one batch size, the 8 (2 in --smoke)
        args.batches = [2] if args.smoke else [BATCH]
    if args.smoke:
        for namespace in (globals(), *(vars(m) for m in (bench_dalle, bench_parti, bench_muse, bench_fluid))):
            use_smoke_sizes(namespace, LATENT_DIM=16)
        use_smoke_sizes(vars(bench_transfusion))

    machine = machine_info(torch.get_num_threads())
    print(machine_line(machine))
    print(
        f"config ({args.mode}): text {TEXT_TOKENS} tokens x vocab {TEXT_VOCAB}, image {GRID}x{GRID} x codebook "
        f"{CODEBOOK} (Fluid continuous: {LATENT_DIM}-d tokens), width {WIDTH}, depth {DEPTH}, {HEADS} heads, "
        f"MLP {MLP}, fp32, AdamW, random weights and data"
    )
    if args.profile:
        print(f"profile: one step after two warm-up steps, {torch.get_num_threads()} thread(s)\n")
        print(profile_steps(args))
        return
    print(f"timing: median of {args.repeats} interleaved rounds after one warm-up per step")
    started = datetime.datetime.now()
    result = run_benchmark(args)
    print()
    print(result["table"])
    for name, reason in result["peers"].items():
        if reason:
            print(f"skipped, {name}: {reason}")
    print()
    print(
        "s / step: median step time (zero_grad, forward + loss, backward, AdamW step). tokens / s: text + image tokens"
        " of the batch per second. host waits / step: the calls of one step that make the host wait for a GPU (`.item()`,"
        " `.tolist()`, `bool(tensor)`, boolean-mask indexing, ...; counted on any device by benchmarks/_waits.py,"
        " the optimizer's CPU step counters left out). GFLOP/s: 3x the forward's matrix-product FLOPs per step / s; % of peak: of the "
        "GFLOP/s the same products and their gradients reach as plain torch matmuls in this run. GB/s: 3x the bytes "
        "the forward's products must move (operands read and results written once; an approximation of the "
        "backward's) per step / s; % of bandwidth: of the memory bandwidth on the machine line. vs peer: median over "
        "rounds of the peer's step time / ours (> 1 = faster)."
    )
    finish("training", args, machine, started, result)


if __name__ == "__main__":
    main()
