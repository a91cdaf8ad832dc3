"""Small helpers shared by the benchmark scripts: the common configuration, machine description, interleaved timing
in each mode's way (`CellRunner`) with the roofline of the sampling rows, peak-RSS deltas, tables and the epilogue.

Timing is interleaved: every case runs once per round, the order rotating between rounds, so that load from other
processes on a shared machine hits all cases alike and ratios taken within a round stay meaningful.

Memory is the growth of the process's peak resident set (Linux `VmHWM`) over its resident set just before one call,
after freed heap pages have been handed back to the OS (`malloc_trim`). Where `/proc/self/clear_refs` cannot reset the
peak, memory is reported as unavailable rather than guessed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from _flops import Matmul, Roofline, memory_bandwidth_gbs, record_matmuls


# -- command line --------------------------------------------------------------------------------------------------
def add_common_arguments(parser: argparse.ArgumentParser, repeats: int = 3) -> None:
    """`--repeats`, `--threads`, `--json`, `--batches` and the two reduced modes, the options every benchmark script
    takes.

    `--quick` keeps the benchmark's sizes and cuts the work (one timed round; each script names what else it drops):
    the mode of `make bench-quick`. `--smoke` shrinks the models to a few thousand parameters and runs one round at
    batches 1 and 2: it proves that a script and its peers run (the tests use it) and measures nothing.
    """
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed rounds after one warm-up (default {repeats}; 1 with --quick or --smoke)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the raw results to this file")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 8; 1 2 with --smoke)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="one timed round, fewer cases (make bench-quick)")
    mode.add_argument("--smoke", action="store_true", help="tiny models, one round: checks that it runs, no timing")
    parser.set_defaults(default_repeats=repeats)


def apply_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve the mode's defaults, check `--repeats` / `--threads` / `--batches` (a `parser.error` names a bad
    value), set torch's thread count and silence transformers' warnings, which would land between the table rows."""
    from transformers.utils import logging as transformers_logging

    if args.repeats is None:
        args.repeats = 1 if args.quick or args.smoke else args.default_repeats
    if args.batches is None:
        args.batches = [1, 2] if args.smoke else [1, 8]
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}.")
    if any(batch < 1 for batch in args.batches):
        parser.error(f"--batches must all be >= 1, got {args.batches}.")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()


# -- the common configuration -------------------------------------------------------------------------------------
# The benchmark sizes, shared by every script: each imports the names it uses (`from _timing import WIDTH,
# ...`), so that they are module constants of the script, which `use_smoke_sizes` replaces in a smoke run.
TEXT_VOCAB = 4096
TEXT_TOKENS = 32
GRID = 16  # 16 x 16 = 256 image tokens
CODEBOOK = 1024
WIDTH = 256
DEPTH = 4
HEADS = 8
MLP = 4 * WIDTH
COMMON_CONFIG = {
    "TEXT_VOCAB": TEXT_VOCAB,
    "TEXT_TOKENS": TEXT_TOKENS,
    "GRID": GRID,
    "CODEBOOK": CODEBOOK,
    "WIDTH": WIDTH,
    "DEPTH": DEPTH,
    "HEADS": HEADS,
    "MLP": MLP,
}

#: `--smoke` sizes: what every script's module constants become (the grid stays 16 x 16, which min-dalle's decoder
#: hard-codes; the steps of the iterative samplers are cut instead)
SMOKE_SIZES = {"TEXT_VOCAB": 64, "TEXT_TOKENS": 8, "CODEBOOK": 32, "WIDTH": 32, "DEPTH": 1, "HEADS": 2, "MLP": 64}


def use_smoke_sizes(namespace: dict, **extra) -> None:
    """Replace the benchmark-size constants in a script's module `namespace` (its `globals()`) with `SMOKE_SIZES`
    and `extra`, for the names it defines. Called once, before anything is built."""
    for name, value in {**SMOKE_SIZES, **extra}.items():
        if name in namespace:
            namespace[name] = value


# -- machine -------------------------------------------------------------------------------------------------------
def machine_info(threads: int) -> dict:
    """CPU count, torch / transformers versions, the intra-op thread count in use and the memory bandwidth at torch's
    thread count (`_flops.memory_bandwidth_gbs`, measured once per process: the ceiling of the GB/s columns)."""
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    return {
        "cpu": platform.machine(),
        "cpu_model": model or platform.processor() or "unknown CPU",
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "memory_bandwidth_gbs": memory_bandwidth_gbs(),
        "load_average": load_average(),
    }


def machine_line(machine: dict) -> str:
    """One printable line of `machine_info`."""
    bandwidth = machine.get("memory_bandwidth_gbs")  # absent from documents written before it was measured
    return (
        f"machine: {machine['cpu_model']} ({machine['cpu']}), {machine['cpu_count']} CPUs "
        f"({machine['usable_cpus']} usable), torch {machine['torch']}, transformers {machine['transformers']}, "
        f"python {machine['python']}, threads {machine['threads']}, "
        + ("" if bandwidth is None else f"memory bandwidth {bandwidth:.1f} GB/s (copy), ")
        + f"load average {machine['load_average']}"
    )


def load_average() -> str:
    """The 1 / 5 / 15-minute load averages, e.g. '1.10 1.66 1.34' ('n/a' where the OS has none)."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- memory --------------------------------------------------------------------------------------------------------
def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Collect garbage and return free glibc heap pages to the OS, so the next baseline is the live set."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    """Reset `VmHWM` to the current RSS (Linux >= 4.0). False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakRSS:
    """Context manager: `mib` is the peak RSS growth inside the block, None where `VmHWM` cannot be reset."""

    def __enter__(self) -> PeakRSS:
        _release_free_memory()
        self.baseline = _status_kib("VmRSS") if _reset_peak_rss() else None
        self.mib: float | None = None
        return self

    def __exit__(self, *exc_info) -> None:
        peak = _status_kib("VmHWM")
        if self.baseline is not None and peak is not None:
            self.mib = max(0, peak - self.baseline) / 1024


# -- timing --------------------------------------------------------------------------------------------------------
class Cell(NamedTuple):
    """One group of cases timed together, in the same rounds: a batch size, a guidance scale, the cases (by the
    script's keys) and, for the iterative samplers, the number of iterations. Each script's `plan(mode, ...)` lists
    the cells of a run, so that what a mode runs can be read (and tested) without running it."""

    batch: int
    guidance_scale: float
    cases: tuple[str, ...]
    iterations: int | None = None


@dataclass
class Case:
    """One thing to time. `fn` does the whole measured call; `per` divides its seconds (e.g. images per call).

    `seconds` are wall-clock; `cpu_seconds` the process's CPU time over the same calls (all threads, so idle-spinning
    worker threads count too). With one thread, CPU time is the steadier figure on a loaded machine.

    With `count_flops`, one untimed call runs under `_flops.record_matmuls` (`matmuls`: the products of one call), and
    `CellRunner` sets `roofline` from them: the sampler rows' GFLOP/s and % of the matmul peak.
    """

    name: str
    fn: Callable[[], object]
    per: int = 1
    count_flops: bool = False
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    memory_mib: list[float] = field(default_factory=list)
    error: str | None = None
    matmuls: Counter[Matmul] | None = None
    roofline: Roofline | None = None

    @property
    def median(self) -> float | None:
        """Median wall seconds per unit (`per`)."""
        return statistics.median(self.seconds) / self.per if self.seconds else None

    @property
    def memory_median(self) -> float | None:
        """Median peak-RSS growth in MiB over all calls (warm-up included)."""
        return statistics.median(self.memory_mib) if self.memory_mib else None

    @property
    def spread(self) -> float | None:
        """Slowest / fastest timed call: well above 1 means the machine's load changed during the rounds."""
        return max(self.seconds) / min(self.seconds) if self.seconds and min(self.seconds) > 0 else None

    def call(self, timed: bool, record: bool = False) -> None:
        """One call, its peak-RSS growth kept; its seconds too if `timed`. `record` (untimed calls only) runs it
        under the FLOP recorder and keeps its products in `matmuls`."""
        if timed and record:
            raise ValueError("A timed call cannot record FLOPs: the recorder's overhead would land on its time.")
        with PeakRSS() as memory:
            start, cpu_start = time.perf_counter(), time.process_time()
            if record:
                self.matmuls = record_matmuls(self.fn)
            else:
                self.fn()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if memory.mib is not None:
            self.memory_mib.append(memory.mib)
        if timed:
            self.seconds.append(elapsed)
            self.cpu_seconds.append(cpu)

    def attempt(self, timed: bool, record: bool = False) -> None:
        """`call`, with an exception kept as the case's `error` (reported as its row) instead of raised."""
        try:
            self.call(timed, record)
        except Exception as error:  # report, do not hide, a case that cannot run
            self.error = f"{type(error).__name__}: {error}"


def run_interleaved(cases: Sequence[Case], repeats: int, warm_up: bool | Collection[Case] = True) -> None:
    """One untimed warm-up call per case, then `repeats` timed rounds in rotating order; every call also records
    its peak-RSS growth (garbage collection and `malloc_trim` run before each call, outside the timed region).

    `warm_up` is True (every case), False (none: `--smoke`, where only running matters) or the cases to warm up. The
    warm-up call of a case with `count_flops` is its FLOP-recording call. A case that raises in its first call (the
    warm-up, or without one the first timed call) is marked with its error and left out; the others go on.
    """
    warm = list(cases) if warm_up is True else [] if warm_up is False else list(warm_up)
    for case in cases:
        if any(case is other for other in warm):
            case.attempt(timed=False, record=case.count_flops)
    for round_index in range(repeats):
        live = [case for case in cases if case.error is None]
        shift = round_index % len(live) if live else 0
        for case in live[shift:] + live[:shift]:
            if case.seconds or any(case is other for other in warm):
                case.call(timed=True)
            else:
                case.attempt(timed=True)


class CellRunner:
    """Runs a script's cells (the cases of one batch and setting, timed together) the way its mode asks, and gives
    the cases with `count_flops` their roofline.

    - full: every case warms up in every cell (the untimed call that also records its FLOPs), then `repeats` rounds.
    - quick: one warm-up per implementation (case name) and process, in its first cell; in later cells its timed
      call comes first, and our cases (not `peers`) record their FLOPs in an untimed call after it. A peer's extra
      call would cost as much as its timed one, so a quick run has the peers' rooflines of their first cell only.
    - smoke: no warm-up; FLOPs recorded in an untimed call after the timed one.

    The matmul peak of the recorded shapes is timed after the cell's rounds (each distinct shape once per run).
    """

    def __init__(self, mode: str, repeats: int):
        if mode not in ("full", "quick", "smoke"):
            raise ValueError(f"mode must be 'full', 'quick' or 'smoke', got {mode!r}.")
        self.mode, self.repeats = mode, repeats
        self.warmed: set[str] = set()
        self.peak_seconds: dict[Matmul, float] = {}

    def run(self, cases: Sequence[Case], peers: Sequence[Case] = ()) -> None:
        if self.mode == "full":
            warm = list(cases)
        elif self.mode == "quick":
            warm = [case for case in cases if case.name not in self.warmed]
        else:
            warm = []
        self.warmed.update(case.name for case in warm)
        run_interleaved(cases, self.repeats, warm_up=warm)
        for case in cases:
            if not case.count_flops or case.error is not None:
                continue
            if case.matmuls is None:
                if self.mode == "quick" and any(case is peer for peer in peers):
                    continue
                case.attempt(timed=False, record=True)
                if case.error is not None:
                    continue
            case.roofline = Roofline.from_counts(
                case.matmuls, case.per, quick_peak=self.mode == "smoke", timed=self.peak_seconds
            )


ROOFLINE_HEADERS = ["GFLOP/s", "peak GFLOP/s", "% of peak", "GB/s", "% of bandwidth"]
ROOFLINE_NOTE = (
    "GFLOP/s: the matrix products of one call (linear layers and attention, dense; recorded once from the real "
    "shapes in an untimed call) / its median time. peak GFLOP/s: what the same products reach as plain torch matmuls, "
    "each shape timed alone in this run. % of peak: the first over the second. GB/s: the bytes those products must "
    "move (operands read and results written once, fused attention's scores never) / the median time; % of "
    "bandwidth: of the memory bandwidth on the machine line, the ceiling of small-batch decoding."
)


#: how each `Roofline.fields` value is printed in a table cell
ROOFLINE_FORMATS = {
    "gflops": "{:.1f}",
    "peak_gflops": "{:.1f}",
    "percent_of_peak": "{:.0f}%",
    "gbytes_per_s": "{:.2f}",
    "percent_of_bandwidth": "{:.0f}%",
}


def roofline_field_cells(fields: dict, keys=tuple(ROOFLINE_FORMATS)) -> list[str]:
    """Table cells of `Roofline.fields` values, in the order of `keys`: "-" where a value is missing or None."""
    return ["-" if fields.get(key) is None else ROOFLINE_FORMATS[key].format(fields[key]) for key in keys]


def roofline_cells(case: Case) -> list[str]:
    """The roofline cells of a script's table (`ROOFLINE_HEADERS`): "-" where the case has no roofline (or no byte
    count)."""
    if case.roofline is None or case.median is None:
        return ["-"] * len(ROOFLINE_HEADERS)
    return roofline_field_cells(case.roofline.fields(case.median))


def timing_line(mode: str, repeats: int) -> str:
    """The printed line that says how a script's cases were timed in this mode (see `CellRunner`)."""
    if mode == "quick":
        return f"timing ({mode}): {repeats} timed round(s); one warm-up per implementation, in its first cell"
    if mode == "smoke":
        return f"timing ({mode}): one call per case, no warm-up: measures nothing"
    return f"timing: median of {repeats} interleaved rounds after one warm-up per case"


def reference_ratio(case: Case, reference: Case | None) -> float | None:
    """`case`'s speed-up over `reference` (`paired_ratio(reference, case)`; 1.0 for the reference itself), None
    where either has no timings to compare."""
    if case is reference and not case.error:
        return 1.0
    if reference is not None and not (case.error or reference.error):
        return paired_ratio(reference, case)
    return None


def paired_ratio(numerator: Case, denominator: Case) -> float | None:
    """Median over rounds of `numerator / denominator` per image, each pair timed in the same round."""
    if not numerator.seconds or not denominator.seconds:
        return None
    ratios = [
        (a / numerator.per) / (b / denominator.per) for a, b in zip(numerator.seconds, denominator.seconds) if b > 0
    ]
    return statistics.median(ratios) if ratios else None


# -- models --------------------------------------------------------------------------------------------------------
def parameter_mib(*modules: torch.nn.Module, exclude: tuple[str, ...] = ()) -> float:
    """MiB of the parameters of `modules`, leaving out those whose name starts with one of `exclude`."""
    return (
        sum(
            p.numel() * p.element_size()
            for module in modules
            for name, p in module.named_parameters()
            if not name.startswith(exclude)
        )
        / 2**20
    )


def t5_encoder(vocab: int, width: int, heads: int, mlp: int, depth: int) -> torch.nn.Module:
    """A randomly initialised T5 encoder of our text encoders' size (the script's sizes, smoke sizes included): the
    trained text encoder that the encoder-decoder peers (parti-pytorch) take."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab,
        d_model=width,
        d_kv=width // heads,
        d_ff=mlp,
        num_layers=depth,
        num_heads=heads,
        dropout_rate=0.0,
    )
    return T5EncoderModel(config)


# -- output --------------------------------------------------------------------------------------------------------
def iterative_rows(
    cases: Sequence[Case], peer: Case | None, batch: int, iterations: int, rows: list, raw: list, noisy: list
) -> None:
    """Append the table rows, raw records and noisy-row notes of one cell of an iterative sampler (Fluid, Muse):
    s / image, ms per iteration, peak-RSS growth, the speed-up against `peer` (1.00x on its own row) and the
    roofline cells; a case that failed gets an error row."""
    for case in cases:
        if case.error:
            rows.append([str(batch), case.name, "error: " + case.error, *[""] * (3 + len(ROOFLINE_HEADERS))])
            continue
        if case.spread and case.spread > 1.5:
            noisy.append(f"batch {batch} {case.name} ({case.spread:.2f}x)")
        ratio = paired_ratio(peer, case) if peer is not None and case is not peer else None
        rows.append(
            [
                str(batch),
                case.name,
                f"{case.median:.3f}",
                f"{1000 * case.median * batch / iterations:.0f}",
                f"{case.memory_median:.0f}" if case.memory_median is not None else "n/a",
                f"{ratio:.2f}x" if ratio else ("1.00x" if case is peer else ""),
                *roofline_cells(case),
            ]
        )
        raw.append({"batch": batch, "steps": iterations, "case": case.name, "seconds": case.seconds, "per": case.per})


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table, columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(headers), separator, *(line(row) for row in rows)])


def noisy_warning(noisy_rows: Sequence[str], advice: str = "re-run or raise --repeats.") -> str | None:
    """The warning for rows whose slowest timed call was > 1.5x their fastest, or None when there are none."""
    if not noisy_rows:
        return None
    return (
        "WARNING: the machine's load changed during these rows (slowest timed call > 1.5x the fastest): "
        + "; ".join(noisy_rows)
        + ". Their medians are unreliable, the paired ratios less so; "
        + advice
    )


# -- the common JSON summary (read by run_all.py) ------------------------------------------------------------------
def summary_records(
    family: str, cases: Sequence[Case], peers: Sequence[Case], batch: int, guidance_scale: float | None, **extra
) -> list[dict]:
    """One record per case of a (batch, guidance) cell, in the form every script writes under `"summary"`.

    `peers` are the cases of other implementations in `cases`; every other case gets its paired speed-up over each of
    them (`vs_peers`, > 1 = faster than the peer). `guidance_scale` is None for rows that sample nothing (decoders);
    `extra` adds script-specific fields (e.g. the number of iterations). A case with a roofline adds its
    `Roofline.fields` (GFLOP/s, peak, % of peak; GB/s, bandwidth, % of bandwidth).
    """
    records = []
    for case in cases:
        is_peer = any(case is peer for peer in peers)
        records.append(
            {
                "family": family,
                "implementation": case.name,
                "is_peer": is_peer,
                "batch": batch,
                "guidance_scale": guidance_scale,
                **extra,
                "seconds_per_image": case.median,
                "seconds_per_call": case.seconds,
                "cpu_seconds_per_call": case.cpu_seconds,
                "peak_rss_delta_mib": case.memory_median,
                "slowest_over_fastest": case.spread,
                "error": case.error,
                "vs_peers": {} if is_peer else {peer.name: paired_ratio(peer, case) for peer in peers},
                **(case.roofline.fields(case.median) if case.roofline is not None else {}),
            }
        )
    return records


def finish(
    family: str,
    args: argparse.Namespace,
    machine: dict,
    started: datetime.datetime,
    result: dict,
    advice: str = "re-run or raise --repeats.",
) -> None:
    """Every script's epilogue: the noisy-row warning (`result["noisy_rows"]`, with `advice`), the benchmark's
    elapsed time and the load average after it, and the `--json` file (`write_json` of `result`, which holds at
    least `peers` and `summary`)."""
    warning = noisy_warning(result.get("noisy_rows", []), advice)
    if warning:
        print(warning)
    elapsed = (datetime.datetime.now() - started).total_seconds()
    print(f"benchmark time: {elapsed:.0f} s; load average after: {load_average()}")
    if args.json:
        write_json(args.json, family, args, machine, **result)
        print(f"wrote {args.json}")


def write_json(path: str, family: str, args: argparse.Namespace, machine: dict, peers: dict, summary: list, **rest):
    """The script's `--json` file: the common part run_all.py reads (`family`, `mode`, `machine`, `peers`: name ->
    None when it ran or the reason it was skipped, `summary`: `summary_records`) and the script's own fields."""
    document = {
        "family": family,
        "mode": args.mode,
        "repeats": args.repeats,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "peers": peers,
        "summary": summary,
        **rest,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
