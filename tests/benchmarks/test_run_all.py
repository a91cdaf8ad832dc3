"""`make bench`'s driver (benchmarks/run_all.py) and the options every benchmark script shares (benchmarks/_timing.py):
the modes' defaults, warm-up handling, the common JSON summary and the RESULTS.md table (each of our rows paired with
every peer of its cell, skipped peers and failed families as rows of their own). Fast: synthetic timings, no model.

The slow test runs `run_all.py --smoke` end to end: every family script on tiny models, with whichever peers this
environment has (the others become skipped rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """The benchmarks folder's modules, imported as its scripts import each other (top-level names). The process-wide
    settings a script's options change (transformers' log verbosity, torch's thread count) are restored afterwards:
    a silenced transformers logger would hide later tests' deprecations from the deprecation guard."""
    import torch
    from transformers.utils import logging as transformers_logging

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _timing
    import run_all

    verbosity, threads = transformers_logging.get_verbosity(), torch.get_num_threads()
    yield _timing, run_all
    transformers_logging.set_verbosity(verbosity)
    torch.set_num_threads(threads)


def timed_case(_timing, name: str, seconds: list[float], per: int = 1, error: str | None = None):
    case = _timing.Case(name, lambda: None, per=per)
    case.seconds, case.cpu_seconds, case.memory_mib, case.error = list(seconds), list(seconds), [4.0], error
    return case


def parse(_timing, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _timing.add_common_arguments(parser, repeats=3)
    args = parser.parse_args(argv)
    _timing.apply_common_arguments(parser, args)
    return args


def test_modes_set_repeats_and_batches_unless_given(bench):
    _timing, _ = bench
    full, quick, smoke = parse(_timing, []), parse(_timing, ["--quick"]), parse(_timing, ["--smoke"])
    assert (full.mode, full.repeats, full.batches) == ("full", 3, [1, 8])
    assert (quick.mode, quick.repeats, quick.batches) == ("quick", 1, [1, 8])
    assert (smoke.mode, smoke.repeats, smoke.batches) == ("smoke", 1, [1, 2])
    given = parse(_timing, ["--quick", "--repeats", "2", "--batches", "4"])
    assert (given.repeats, given.batches) == (2, [4])
    with pytest.raises(SystemExit):
        parse(_timing, ["--quick", "--smoke"])
    with pytest.raises(SystemExit):
        parse(_timing, ["--batches", "0"])


def test_smoke_sizes_replace_only_the_names_a_script_defines(bench):
    _timing, _ = bench
    namespace = {"WIDTH": 256, "GRID": 16, "STEPS": 64}
    _timing.use_smoke_sizes(namespace, STEPS=4)
    assert namespace == {"WIDTH": _timing.SMOKE_SIZES["WIDTH"], "GRID": 16, "STEPS": 4}


def test_run_interleaved_warm_up_and_failing_cases(bench):
    _timing, _ = bench
    calls = []

    def failing():
        raise RuntimeError("no kernel")

    ok, bad = _timing.Case("ok", lambda: calls.append(1)), _timing.Case("bad", failing)
    _timing.run_interleaved([ok, bad], repeats=2)
    assert len(calls) == 3 and len(ok.seconds) == 2  # one untimed warm-up, two timed rounds
    assert bad.error == "RuntimeError: no kernel" and bad.seconds == []
    calls.clear()
    smoke = _timing.Case("smoke", lambda: calls.append(1))
    _timing.run_interleaved([smoke], repeats=1, warm_up=False)
    assert len(calls) == 1 and len(smoke.seconds) == 1  # --smoke: the only call is timed


def document(_timing, family: str, peers: dict, summary: list) -> dict:
    return {"family": family, "machine": _timing.machine_info(1), "peers": peers, "summary": summary}


def test_table_pairs_each_of_our_rows_with_every_peer_of_its_cell(bench):
    _timing, run_all = bench
    import _flops

    ours = timed_case(_timing, "hf_t2i sample_image_tokens", [1.0, 2.0], per=2)
    min_dalle = timed_case(_timing, "min-dalle 0.4.11", [3.0, 4.0], per=2)
    parti = timed_case(_timing, "parti-pytorch 0.2.0", [10.0, 30.0], per=2)
    # 2 GFLOP / 0.75 s = 2.7 GFLOP/s: 27 % of peak; 1.5 GB / 0.75 s = 2 GB/s: 50 % of bandwidth
    ours.roofline = _flops.Roofline(flops_per_unit=2e9, peak_gflops=10.0, bytes_per_unit=1.5e9, bandwidth_gbs=4.0)
    # / 1.75 s: 6 % of peak, 14 % of bandwidth; parti: no roofline
    min_dalle.roofline = _flops.Roofline(flops_per_unit=1e9, peak_gflops=10.0, bytes_per_unit=1e9, bandwidth_gbs=4.0)
    guided = _timing.summary_records("parti", [ours, min_dalle, parti], [min_dalle, parti], 2, 3.0)
    assert guided[0]["vs_peers"] == {
        "min-dalle 0.4.11": pytest.approx(2.5),
        "parti-pytorch 0.2.0": pytest.approx(12.5),
    }
    assert guided[1]["is_peer"] and guided[1]["vs_peers"] == {}
    unguided = _timing.summary_records("parti", [timed_case(_timing, "hf_t2i sample_image_tokens", [1.0])], [], 1, 1.0)
    decode = _timing.summary_records("dalle", [timed_case(_timing, "hf_t2i dVAE decode", [0.5])], [], 1, None)
    documents = [
        document(_timing, "parti", {"min-dalle": None, "parti-pytorch": None}, guided + unguided),
        document(_timing, "dalle", {"min-dalle": "min-dalle is not installed"}, decode),
        {"family": "fluid", "failed": "exit status 1; its output is above"},
    ]
    rows = run_all.table_rows(documents)
    assert rows == [
        [
            "parti",
            "hf_t2i sample_image_tokens",
            "min-dalle 0.4.11",
            "2",
            "3",
            "0.750",
            "1.750",
            "2.50x",
            "5.0x",  # 2.5 / 50 %: bandwidth is the nearer ceiling
            "2.7",
            "27% / 6%",
            "50% / 14%",
            "4 / 4",
        ],
        [
            "parti",
            "hf_t2i sample_image_tokens",
            "parti-pytorch 0.2.0",
            "2",
            "3",
            "0.750",
            "10.000",
            "12.50x",
            "25.0x",
            "2.7",
            "27% / -",
            "50% / -",
            "4 / 4",
        ],
        [
            "parti",
            "hf_t2i sample_image_tokens",
            "-",
            "1",
            "off",
            "1.000",
            "-",
            "-",
            "-",
            "-",
            "- / -",
            "- / -",
            "4 / -",
        ],
        ["dalle", "hf_t2i dVAE decode", "-", "1", "-", "0.500", "-", "-", "-", "-", "- / -", "- / -", "4 / -"],
        ["dalle", "-", "min-dalle: skipped (see below)", *["-"] * 10],
        ["fluid", "FAILED (exit status 1; its output is above)", *["-"] * 11],
    ]
    markdown = run_all.render_markdown(documents, "full", "2026-12-04T10:00:00", 60.0)
    assert "- dalle, min-dalle: min-dalle is not installed" in markdown
    assert all(len(row) == len(run_all.HEADERS) for row in rows)
    peak = run_all.HEADERS.index("% of peak (ours / peer)")
    assert run_all.HEADERS[peak + 1] == "% of bandwidth (ours / peer)" and "% of bandwidth (ours / peer)" in markdown
    failed_case = timed_case(_timing, "hf_t2i sample_image_tokens", [], error="RuntimeError: boom")
    failed = _timing.summary_records("dalle", [failed_case], [], 1, 1.0)
    assert run_all.table_rows([document(_timing, "dalle", {}, failed)])[0][5] == "FAILED: RuntimeError: boom"


def test_markdown_names_the_mode_and_the_machine(bench):
    _timing, run_all = bench
    documents = [document(_timing, "muse", {}, [])]
    machine = documents[0]["machine"]
    smoke = run_all.render_markdown(documents, "smoke", "2026-12-04T10:00:00", 90.0)
    assert "measure nothing" in smoke and "mode **smoke**" in smoke and "1.5 minutes" in smoke
    assert machine["cpu_model"] in smoke and "| family |" in smoke
    assert machine["memory_bandwidth_gbs"] > 0 and "memory bandwidth" in _timing.machine_line(machine)
    two = [document(_timing, "dalle", {}, []), document(_timing, "muse", {}, [])]
    two[1]["machine"]["memory_bandwidth_gbs"] = 12.345
    bandwidths = run_all.render_markdown(two, "full", "2026-12-04T10:00:00", 90.0)  # one per family's process
    assert f"dalle {machine['memory_bandwidth_gbs']:.1f} GB/s, muse 12.3 GB/s." in bandwidths
    quick = run_all.render_markdown(documents, "quick", "2026-12-04T10:00:00", 90.0)
    assert "measure nothing" not in quick and run_all.QUICK_NOTE in quick and run_all.QUICK_NOTE not in smoke


def test_family_commands_per_mode(bench, tmp_path):
    _, run_all = bench

    def command(family, *argv):
        args = argparse.Namespace(quick="--quick" in argv, smoke="--smoke" in argv, threads=1)
        return run_all.family_command(family, tmp_path / "out.json", args)[2:]

    assert command("transfusion") == ["--json", str(tmp_path / "out.json"), "--threads", "1", "--peer-batch-8"]
    assert command("transfusion", "--quick")[-1] == "--quick" and "--peer-batch-8" not in command("dalle")
    assert command("muse", "--smoke")[-1] == "--smoke"


def test_from_json_writes_the_table_again_without_timing(bench, monkeypatch, tmp_path):
    _timing, run_all = bench
    documents = [document(_timing, "muse", {}, [])]
    saved = {"mode": "quick", "date": "2026-12-06T01:35:10", "wall_seconds": 283.0, "families": documents}
    (tmp_path / "results.json").write_text(json.dumps(saved))
    monkeypatch.setattr(run_all, "run_family", None)  # nothing may run
    argv = ["run_all.py", "--from-json", str(tmp_path / "results.json"), "--output-dir", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    run_all.main()
    written = (tmp_path / "out" / "RESULTS.md").read_text()
    assert written == run_all.render_markdown(documents, "quick", "2026-12-06T01:35:10", 283.0)
    assert "mode **quick**" in written and "4.7 minutes" in written


def test_driver_refuses_bad_arguments(bench, monkeypatch, capsys):
    _, run_all = bench
    for argv, message in [
        (["--smoke"], "--output-dir"),  # a smoke run must not overwrite benchmarks/RESULTS.md
        (["--families", "dalle", "imagen"], "imagen"),
        (["--threads", "0"], "--threads"),
    ]:
        monkeypatch.setattr(sys, "argv", ["run_all.py", *argv])
        with pytest.raises(SystemExit):
            run_all.main()
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_run_of_every_family(tmp_path):
    """`run_all.py --smoke`: every script runs on tiny models and the driver writes both files; peers that are not
    installed here are skipped rows, never failures."""
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--smoke", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "smoke"
    assert [d["family"] for d in results["families"]] == ["dalle", "parti", "fluid", "transfusion", "muse", "training"]
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "measure nothing" in markdown
    for doc in results["families"]:
        assert "failed" not in doc and doc["mode"] == "smoke"
        ours = [r for r in doc["summary"] if not r["is_peer"]]
        assert ours and all(r["error"] is None and r["seconds_per_image"] > 0 for r in ours), doc["family"]
        timed_peers = {name for r in ours for name in r["vs_peers"]}
        for peer, reason in doc["peers"].items():  # each peer either ran (paired with our rows) or says why not
            peer_name = peer.split(": ", 1)[-1]  # the training family's keys are "<family>: <peer>"
            assert (reason is None) == any(name.startswith(peer_name) for name in timed_peers), (doc["family"], peer)
        samplers = [r for r in doc["summary"] if r["guidance_scale"] is not None or doc["family"] == "training"]
        assert all(r["gflops"] > 0 and r["percent_of_peak"] > 0 for r in samplers), doc["family"]  # the roofline
        assert all(r["gbytes_per_s"] > 0 and r["percent_of_bandwidth"] > 0 for r in samplers), doc["family"]
        assert f"| {doc['family']} " in markdown
        if doc["family"] == "training":  # our steps wait for the device a few times, not once per row
            assert all(0 <= r["host_waits"] <= 4 for r in ours), [(r["implementation"], r["host_waits"]) for r in ours]
