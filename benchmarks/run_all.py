"""Run the five families' benchmarks one after the other and gather them into one table (`make bench`).

Each family script (`bench_<family>.py`) runs in its own process with `--json`; this driver reads the files and
writes `results.json` (every script's document, as written) and `RESULTS.md` (one markdown table: family, our
implementation, peer, batch, guidance, seconds per image of both, the paired speed-up and peak-RSS growth, under the
machine line) into `--output-dir`. A peer that is not installed is a "skipped" row, never a failure; a family script
that fails is a FAILED row, the others still run, and the exit status is 1.

    python benchmarks/run_all.py [--quick | --smoke] [--threads T] [--families dalle parti ...] [--output-dir DIR]

Modes: the default is each script's own full benchmark (plus transfusion-pytorch at batch 8, which takes minutes);
`--quick` (`make bench-quick`) keeps the model sizes and cuts the work (`QUICK_NOTE`; each script's `plan` lists its
cells); `--smoke` runs tiny models to check that the scripts and the installed peers work, and measures nothing (its
table says so).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _timing import format_table, machine_line


HERE = Path(__file__).resolve().parent
#: family -> (script, extra arguments in the full mode)
FAMILIES = {
    "dalle": ("bench_dalle.py", []),
    "parti": ("bench_parti.py", []),
    "fluid": ("bench_fluid.py", []),
    "transfusion": ("bench_transfusion.py", ["--peer-batch-8"]),
    "muse": ("bench_muse.py", []),
    "training": ("bench_training.py", []),
}
HEADERS = [
    "family",
    "ours",
    "peer",
    "batch",
    "guidance",
    "s / image (ours)",
    "s / image (peer)",
    "speed-up",
    "speed-up at our ceiling",
    "GFLOP/s (ours)",
    "% of peak (ours / peer)",
    "% of bandwidth (ours / peer)",
    "peak RSS Δ MiB (ours / peer)",
]
#: what `--quick` leaves out, written under its table (benchmarks/README.md has its measured time)
QUICK_NOTE = (
    "Quick mode: the guided cells only (scale 3), batches 1 and 8, one timed round; each implementation warms up once, "
    "in its first cell. DALL-E: ours (`sample_image_tokens`), min-dalle and dalle-pytorch (no `generate()` rows); "
    "Parti: ours and min-dalle (no parti-pytorch rows); Fluid: the continuous model with the shipped default head (DPM-Solver++, 15 steps) and "
    "muse-maskgit, both at 16 iterations instead of 64; Transfusion: the cached sampler and transfusion-pytorch, both at 10 steps instead of 30; Muse: 12 "
    "iterations; training: unchanged. The peers' GFLOP/s is recorded in their batch-1 cells only."
)


def family_command(family: str, json_path: Path, args: argparse.Namespace) -> list[str]:
    """The command line that runs one family's script in this driver's mode."""
    script, full_extra = FAMILIES[family]
    command = [sys.executable, str(HERE / script), "--json", str(json_path)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    if args.smoke:
        command.append("--smoke")
    elif args.quick:
        command.append("--quick")
    else:
        command += full_extra
    return command


def run_family(family: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Run one script (its output goes straight to this process's output) and return its JSON document, or a
    document with `"failed"` set to the reason."""
    json_path = workdir / f"{family}.json"
    command = family_command(family, json_path, args)
    env = dict(os.environ)
    if args.threads is not None:  # OpenMP workers beyond torch's threads would only spin
        env["OMP_NUM_THREADS"] = str(args.threads)
    print(f"\n=== {family}: {' '.join(command[1:])}", flush=True)
    started = datetime.datetime.now()
    completed = subprocess.run(command, env=env, check=False)
    seconds = (datetime.datetime.now() - started).total_seconds()
    if completed.returncode != 0 or not json_path.is_file():
        reason = f"exit status {completed.returncode}" if completed.returncode else "no JSON written"
        return {"family": family, "failed": f"{reason}; its output is above", "wall_seconds": seconds}
    with open(json_path, encoding="utf-8") as f:
        document = json.load(f)
    document["wall_seconds"] = seconds
    return document


def _seconds(value: float | None, error: str | None) -> str:
    if error:
        return f"FAILED: {error}"
    return "-" if value is None else f"{value:.3f}"


def _memory(record: dict | None) -> str:
    value = None if record is None else record.get("peak_rss_delta_mib")
    return "n/a" if value is None else f"{value:.0f}"


def _guidance(scale: float | None) -> str:
    if scale is None:
        return "-"
    return "off" if scale == 1.0 else f"{scale:g}"


def _percent(record: dict | None, key: str) -> str:
    value = None if record is None else record.get(key)
    return "-" if value is None else f"{value:.0f}%"


def _roofline(record: dict, peer: dict | None = None) -> list[str]:
    """The GFLOP/s, % of peak and % of bandwidth (ours / the peer's) cells of a row (`_flops.Roofline.fields`; "-"
    where a record has none)."""
    gflops = record.get("gflops")
    return [
        "-" if gflops is None else f"{gflops:.1f}",
        *(f"{_percent(record, key)} / {_percent(peer, key)}" for key in ("percent_of_peak", "percent_of_bandwidth")),
    ]


def _ceiling(record: dict, ratio: float | None) -> str:
    """The speed-up ours would have if its call ran at 100 % of the ceiling it is nearest (the matmul peak or the
    memory bandwidth, whichever it uses the larger share of), doing the same products, against the same peer time:
    `ratio / max(% of peak, % of bandwidth)`. No faster version of the same arithmetic on this machine passes it, so a
    target above it needs less arithmetic, not faster code."""
    shares = [record.get(key) for key in ("percent_of_peak", "percent_of_bandwidth")]
    share = max((value for value in shares if value), default=None)
    return "-" if ratio is None or share is None else f"{ratio * 100 / share:.1f}x"


def _cell(record: dict) -> tuple:
    """What makes two records of one family comparable: batch, guidance and any script-specific setting (Muse's
    iterations)."""
    return record["batch"], record["guidance_scale"], record.get("iterations")


def table_rows(documents: list[dict]) -> list[list[str]]:
    """The rows of RESULTS.md: for every one of our records, one row per peer timed in the same cell (or one row
    with no peer); then one row per peer a family skipped (the reason goes under the table) and one per family that
    failed."""
    rows = []
    for document in documents:
        family = document["family"]
        if "failed" in document:
            rows.append([family, f"FAILED ({document['failed']})", *["-"] * (len(HEADERS) - 2)])
            continue
        summary = document["summary"]
        peers = {(r["implementation"], _cell(r)): r for r in summary if r["is_peer"]}
        for record in summary:
            if record["is_peer"]:
                continue
            ours = _seconds(record["seconds_per_image"], record["error"])
            base = [family, record["implementation"]]
            setting = [str(record["batch"]), _guidance(record["guidance_scale"])]
            if not record["vs_peers"]:
                rows.append([*base, "-", *setting, ours, "-", "-", "-", *_roofline(record), f"{_memory(record)} / -"])
            for peer_name, ratio in record["vs_peers"].items():
                peer = peers.get((peer_name, _cell(record)))
                peer_seconds = "-" if peer is None else _seconds(peer["seconds_per_image"], peer["error"])
                rows.append(
                    [
                        *base,
                        peer_name,
                        *setting,
                        ours,
                        peer_seconds,
                        "-" if ratio is None else f"{ratio:.2f}x",
                        _ceiling(record, ratio),
                        *_roofline(record, peer),
                        f"{_memory(record)} / {_memory(peer)}",
                    ]
                )
        for peer_name, reason in document.get("peers", {}).items():
            if reason is not None:
                rows.append([family, "-", f"{peer_name}: skipped (see below)", *["-"] * (len(HEADERS) - 3)])
    return rows


def render_markdown(documents: list[dict], mode: str, started: str, wall_seconds: float) -> str:
    """RESULTS.md: the run's mode, date and machine, then the table."""
    measured = [d for d in documents if "machine" in d]
    lines = ["# Benchmark results", ""]
    if mode == "smoke":
        lines += ["**Smoke run: tiny models, one round. These numbers measure nothing; run `make bench`.**", ""]
    lines += [
        f"Written by `python benchmarks/run_all.py` (`make bench`), mode **{mode}**, started {started}, "
        f"{wall_seconds / 60:.1f} minutes in all. Random weights, fp32, the sizes of each script's docstring.",
        "",
    ]
    if measured:
        # the machine line without its bandwidth, which each family's process measures for itself (listed below)
        machine = {**measured[0]["machine"], "memory_bandwidth_gbs": None}
        load = ", ".join(f"{d['family']} {d['machine']['load_average']}" for d in measured)
        lines += [machine_line(machine).split(", load average")[0], "", f"Load average at each start: {load}."]
        bandwidths = [(d["family"], d["machine"].get("memory_bandwidth_gbs")) for d in measured]
        if any(gbs is not None for _, gbs in bandwidths):
            listed = ", ".join(f"{family} {gbs:.1f} GB/s" for family, gbs in bandwidths if gbs is not None)
            lines += [
                f"Memory bandwidth (copy) measured in each family's process, its % of bandwidth ceiling: {listed}."
            ]
        lines += [""]
    lines += [format_table(HEADERS, table_rows(documents)), ""]
    if mode == "quick":
        lines += [QUICK_NOTE, ""]
    skipped = [(d["family"], p, r) for d in documents for p, r in d.get("peers", {}).items() if r is not None]
    if skipped:
        lines += ["Skipped peers:", "", *(f"- {family}, {peer}: {reason}" for family, peer, reason in skipped), ""]
    lines += [
        "s / image: median call time / batch, over the timed rounds. speed-up: median over rounds of the peer's time /"
        " ours, both from the same round (> 1 = we are faster). speed-up at our ceiling: the speed-up ours would have"
        " at 100 % of the % of peak or % of bandwidth it is nearer to (speed-up / the larger share), the same products"
        " against the same peer time: no faster code for the same arithmetic passes it. GFLOP/s: the matrix products"
        " of one call (recorded once, in an untimed call) / its time; % of peak: of what the same products reach as plain torch matmuls in "
        "the same run (a training step: 3x its forward's products). % of bandwidth: the bytes those products must "
        "move (operands read and results written once, a fused attention's scores never; a training step: 3x its "
        "forward's) / the call's time, as a % of the memory bandwidth its process measured: the ceiling of "
        "small-batch decoding, which reads every weight and the whole K/V cache at each step. peak RSS Δ: median "
        "growth of the process's peak RSS over its RSS just before a call. Each script prints its own, more detailed "
        "table and notes; results.json holds every call's wall and CPU seconds.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="guided cells, one timed round, fewer cases (5.9 min measured on 2 cores)",
    )
    mode.add_argument("--smoke", action="store_true", help="tiny models: checks that everything runs, no timing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every script (default 1)")
    parser.add_argument(
        "--families", nargs="+", default=list(FAMILIES), help=f"which ones (default all: {' '.join(FAMILIES)})"
    )
    parser.add_argument("--output-dir", default=str(HERE), help="where results.json and RESULTS.md go")
    parser.add_argument(
        "--from-json",
        metavar="RESULTS_JSON",
        help="time nothing: write RESULTS.md again from an earlier run's results.json (after a change to the table)",
    )
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            saved = json.load(f)
        markdown = render_markdown(saved["families"], saved["mode"], saved["date"], saved["wall_seconds"])
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "RESULTS.md").write_text(markdown, encoding="utf-8")
        print(markdown)
        return
    unknown = [family for family in args.families if family not in FAMILIES]
    if unknown:
        parser.error(f"--families: unknown {unknown}; choose from {list(FAMILIES)}.")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}.")
    output_dir = Path(args.output_dir)
    if args.smoke and output_dir.resolve() == HERE:
        parser.error("--smoke measures nothing: give --output-dir (it would overwrite benchmarks/RESULTS.md).")
    run_mode = "smoke" if args.smoke else "quick" if args.quick else "full"

    started = datetime.datetime.now()
    with tempfile.TemporaryDirectory() as workdir:
        documents = [run_family(family, args, Path(workdir)) for family in args.families]
    wall_seconds = (datetime.datetime.now() - started).total_seconds()
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "mode": run_mode,
        "date": started.isoformat(timespec="seconds"),
        "wall_seconds": wall_seconds,
        "families": documents,
    }
    with open(output_dir / "results.json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    markdown = render_markdown(documents, run_mode, results["date"], wall_seconds)
    (output_dir / "RESULTS.md").write_text(markdown, encoding="utf-8")
    print("\n" + markdown)
    print(f"wrote {output_dir / 'results.json'} and {output_dir / 'RESULTS.md'}")
    if any("failed" in document for document in documents):
        sys.exit(1)


if __name__ == "__main__":
    main()
