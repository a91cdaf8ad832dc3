"""The sampler benchmarks' shared machinery (benchmarks/_timing.py): the roofline of a sampler call (its FLOPs
recorded in an untimed call, against a hand count), how each mode warms up, times and records its cells
(`CellRunner`), the cells each script's mode runs (`plan`, read without running anything) and the shared epilogue.
Fast: tiny models, no benchmark runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import pytest
import torch


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """The benchmarks folder's modules, imported as the scripts import each other (top-level names). The garbage
    collection and heap trim before each call (for the memory column, which no test here reads) are skipped."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _flops
    import _timing

    monkeypatch.setattr(_timing, "_release_free_memory", lambda: None)
    return _timing, _flops


def matmul_case(_timing, name: str, log: list, batch: int = 1, count_flops: bool = True):
    """A case whose call is one (batch x 4) @ (4 x 8) product: 2 x batch x 4 x 8 FLOPs. `log` gets the name and
    whether a FLOP recorder was active at each call."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    a, b = torch.randn(batch, 4), torch.randn(4, 8)

    def fn():
        log.append((name, _get_current_dispatch_mode() is not None))
        return a @ b

    return _timing.Case(name, fn, per=batch, count_flops=count_flops)


def test_full_mode_records_the_flops_on_each_warm_up_never_on_a_timed_call(bench):
    _timing, _flops = bench
    log = []
    ours, decode = matmul_case(_timing, "ours", log, batch=2), matmul_case(_timing, "decode", log, count_flops=False)
    runner = _timing.CellRunner("full", repeats=2)
    runner.run([ours, decode])
    assert log[:2] == [("ours", True), ("decode", False)]  # the warm-ups; only the counting case under the recorder
    assert sorted(log[2:]) == [("decode", False)] * 2 + [("ours", False)] * 2  # two timed rounds, none recorded
    assert ours.matmuls == {_flops.Matmul(1, 2, 4, 8): 1} and len(ours.seconds) == 2
    assert ours.roofline.flops_per_unit == 2 * 2 * 4 * 8 / 2  # per image
    assert ours.roofline.peak_gflops > 0 and decode.roofline is None and decode.matmuls is None
    record = _timing.summary_records("test", [ours], [], 2, 3.0)[0]
    assert record["gflop_per_image"] == pytest.approx(64 / 1e9)
    assert record["gflops"] == pytest.approx(64 / 1e9 / ours.median)
    assert record["percent_of_peak"] == pytest.approx(100 * record["gflops"] / ours.roofline.peak_gflops)
    moved = 4 * (2 * 4 + 4 * 8 + 2 * 8)  # fp32: the (2 x 4) and (4 x 8) operands read, the (2 x 8) result written
    assert record["gbyte_per_image"] == pytest.approx(moved / 2 / 1e9)
    assert record["gbytes_per_s"] == pytest.approx(moved / 2 / 1e9 / ours.median)
    assert record["bandwidth_gbs"] == _flops.memory_bandwidth_gbs() > 0
    assert record["percent_of_bandwidth"] == pytest.approx(100 * record["gbytes_per_s"] / record["bandwidth_gbs"])
    with pytest.raises(ValueError, match="cannot record"):
        ours.call(timed=True, record=True)


def test_quick_mode_warms_each_implementation_once_and_records_ours_after_its_timed_call(bench):
    _timing, _flops = bench
    log = []
    runner = _timing.CellRunner("quick", repeats=1)
    cells = {}
    for batch in (1, 8):
        ours, peer = matmul_case(_timing, "ours", log, batch), matmul_case(_timing, "peer", log, batch)
        cells[batch] = ours, peer
        runner.run([ours, peer], peers=[peer])
    first, second = log[:4], log[4:]
    assert first == [("ours", True), ("peer", True), ("ours", False), ("peer", False)]  # warm-up = recording call
    assert second == [
        ("ours", False),
        ("peer", False),
        ("ours", True),
    ]  # no warm-up; ours recorded after, not the peer
    ours8, peer8 = cells[8]
    assert len(ours8.seconds) == len(peer8.seconds) == 1
    assert ours8.matmuls == {_flops.Matmul(1, 8, 4, 8): 1} and ours8.roofline.flops_per_unit == 2 * 4 * 8
    assert peer8.roofline is None and cells[1][1].roofline is not None
    assert _timing.roofline_cells(peer8) == ["-"] * 5 == ["-"] * len(_timing.ROOFLINE_HEADERS)
    cells = dict(zip(_timing.ROOFLINE_HEADERS, _timing.roofline_cells(ours8)))
    fields = ours8.roofline.fields(ours8.median)
    assert cells["% of peak"] == f"{fields['percent_of_peak']:.0f}%"
    assert cells["GB/s"] == f"{fields['gbytes_per_s']:.2f}" and cells["% of bandwidth"].endswith("%")


def test_smoke_mode_times_first_then_records(bench):
    _timing, _ = bench
    log = []
    case = matmul_case(_timing, "ours", log)
    _timing.CellRunner("smoke", repeats=1).run([case])
    assert log == [("ours", False), ("ours", True)] and len(case.seconds) == 1 and case.roofline is not None
    with pytest.raises(ValueError, match="mode"):
        _timing.CellRunner("fast", repeats=1)


def test_a_case_that_fails_without_a_warm_up_is_reported_not_raised(bench):
    _timing, _ = bench

    def failing():
        raise RuntimeError("no kernel")

    runner = _timing.CellRunner("quick", repeats=1)
    runner.warmed.add("bad")  # as if warmed up in an earlier cell
    bad = _timing.Case("bad", failing, count_flops=True)
    runner.run([bad])
    assert bad.error == "RuntimeError: no kernel" and bad.seconds == [] and bad.roofline is None


def test_the_peak_of_a_shape_is_timed_once_per_run(bench):
    _timing, _flops = bench
    runner = _timing.CellRunner("smoke", repeats=1)
    runner.run([matmul_case(_timing, "a", [], batch=3)])
    timed = dict(runner.peak_seconds)
    runner.run([matmul_case(_timing, "b", [], batch=3)])
    assert list(runner.peak_seconds) == [_flops.Matmul(1, 3, 4, 8)] and runner.peak_seconds == timed


def tiny_dalle():
    from hf_t2i import DalleConfig, DalleDVAEConfig, DalleForConditionalGeneration

    torch.manual_seed(0)
    vq = DalleDVAEConfig(image_size=16, vocab_size=16, channel_multipliers=[1, 2], hidden_size=8)
    config = DalleConfig(
        vq_config=vq, text_vocab_size=32, text_seq_len=4, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32,
    )  # fmt: skip
    return DalleForConditionalGeneration(config).eval()


def test_dalle_sampler_flops_match_the_hand_count(bench):
    """The DALL-E sampler's products as the benchmark records them (through `CellRunner`, untimed): every caption
    row runs its text and all image tokens but the last through the blocks (2 x parameters per token) and the
    image slice of the LM head once per drawn token; guidance doubles the rows. Attention is bounded, not pinned:
    the decoding loop may attend to the whole preallocated cache or to fewer keys (its filled part, a sparse
    pattern's), and is counted as the kernel is called."""
    _timing, _flops = bench
    model = tiny_dalle()
    c = model.config
    batch, text_tokens, image_tokens = 3, c.text_seq_len, c.num_image_tokens
    text = torch.randint(1, c.text_vocab_size, (batch, text_tokens), generator=torch.Generator().manual_seed(0))
    negative = torch.zeros(1, text_tokens, dtype=torch.long)

    def sample(scale):
        return model.sample_image_tokens(
            text, negative_input_ids=negative if scale != 1.0 else None, guidance_scale=scale, top_k=4,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip

    cases = {
        scale: _timing.Case(f"guidance {scale}", lambda s=scale: sample(s), batch, count_flops=True)
        for scale in (1.0, 3.0)
    }
    runner = _timing.CellRunner("smoke", repeats=1)
    for case in cases.values():
        runner.run([case])
    block_parameters = sum(m.weight.numel() for m in model.model.modules() if isinstance(m, torch.nn.Linear))
    image_vocab = c.vq_config.vocab_size
    linear_per_row = 2 * (
        (text_tokens + image_tokens - 1) * block_parameters + image_tokens * c.hidden_size * image_vocab
    )
    head_dim = c.hidden_size // c.num_attention_heads
    keys = text_tokens + image_tokens  # the whole cache: the most a step can attend to
    dense_attention_per_row = c.num_hidden_layers * c.num_attention_heads * 4 * head_dim * keys * keys

    for scale, rows in ((1.0, batch), (3.0, 2 * batch)):
        counts = cases[scale].matmuls
        linear = sum(shape.flops * n for shape, n in counts.items() if shape.batch == 1)  # mm / addmm
        attention = _flops.total_flops(counts) - linear  # bmm / SDPA: (rows x heads) batched products
        assert linear == rows * linear_per_row
        assert 0 < attention <= rows * dense_attention_per_row
        assert cases[scale].roofline.flops_per_unit == (linear + attention) / batch
    assert _flops.total_flops(cases[3.0].matmuls) == 2 * _flops.total_flops(cases[1.0].matmuls)  # one doubled batch


# -- the cells of each mode ------------------------------------------------------------------------------------------
@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_dalle
    import bench_fluid
    import bench_muse
    import bench_parti
    import bench_transfusion

    return {
        "dalle": bench_dalle,
        "parti": bench_parti,
        "fluid": bench_fluid,
        "transfusion": bench_transfusion,
        "muse": bench_muse,
    }


def cell_plans(scripts, mode: str) -> dict:
    batches = [1, 8]
    return {
        "dalle": scripts["dalle"].plan(mode, batches, 3.0),
        "parti": scripts["parti"].plan(mode, batches, 3.0),
        "fluid": scripts["fluid"].plan(mode, batches),
        "transfusion": scripts["transfusion"].plan(mode, batches, peer_batch_8=mode == "full"),
        "muse": scripts["muse"].plan(mode, batches),
    }


#: each family's sampler and the best peers of its paradigm (the issue's), as `plan` keys
OURS_AND_BEST_PEER = {
    "dalle": ("sample", "min-dalle", "dalle-pytorch"),
    "parti": ("sample", "min-dalle"),
    "fluid": ("continuous:dpmpp15", "muse-maskgit"),
    "transfusion": ("cached", "transfusion-pytorch"),
    "muse": ("ours", "muse-maskgit"),
}


def test_quick_mode_keeps_our_guided_rows_and_the_best_peer_at_batch_1_and_8(scripts):
    quick, full = cell_plans(scripts, "quick"), cell_plans(scripts, "full")
    for family, keys in OURS_AND_BEST_PEER.items():
        guided = [cell for cell in quick[family] if cell.guidance_scale != 1.0]
        assert guided == quick[family], family  # quick times guided cells only
        assert [cell.batch for cell in guided] == [1, 8], family
        for cell in guided:
            assert set(keys) <= set(cell.cases), (family, cell)
        for cell in full[family]:  # and full mode has them all too, at the iterations of the config
            if cell.guidance_scale != 1.0:
                assert set(keys) <= set(cell.cases), (family, cell)
    # the cuts: no generate() / parti-pytorch / head-100 / discrete / recomputed rows, fewer iterations where costly
    assert all(cell.cases == ("sample", "min-dalle", "dalle-pytorch") for cell in quick["dalle"])
    assert all(cell.cases == ("sample", "min-dalle") for cell in quick["parti"])
    assert {cell.iterations for cell in quick["fluid"]} == {16} and {cell.iterations for cell in full["fluid"]} == {64}
    assert {cell.iterations for cell in quick["transfusion"]} == {10}
    assert {cell.iterations for cell in full["transfusion"]} == {30}
    assert {cell.iterations for cell in quick["muse"]} == {12} and {c.iterations for c in full["muse"]} == {12, 18}


def test_full_mode_cells_are_the_scripts_full_benchmarks(scripts):
    full = cell_plans(scripts, "full")
    dalle = [(cell.batch, cell.guidance_scale, cell.cases) for cell in full["dalle"]]
    assert dalle == [
        (1, 1.0, ("sample", "generate", "min-dalle", "dalle-pytorch", "decode")),
        (1, 3.0, ("sample", "generate", "min-dalle", "dalle-pytorch")),
        (8, 1.0, ("sample", "generate", "min-dalle", "dalle-pytorch", "decode")),
        (8, 3.0, ("sample", "generate", "min-dalle", "dalle-pytorch")),
    ]
    assert scripts["dalle"].plan("full", [1], 3.0, min_dalle_vqgan=True)[0].cases[-1] == "vqgan"
    assert [len(cell.cases) for cell in full["parti"]] == [3] * 4
    assert full["fluid"][0].cases == (
        "continuous:100",
        "continuous:25",
        "continuous:dpmpp15",
        "discrete",
        "muse-maskgit",
    )
    transfusion = [(cell.batch, cell.guidance_scale, cell.cases) for cell in full["transfusion"]]
    assert transfusion[:2] == [
        (1, 1.0, ("cached", "recomputed", "decode", "transfusion-pytorch")),
        (1, 3.0, ("cached", "interval", "recomputed", "transfusion-pytorch")),
    ]
    without_peer_8 = scripts["transfusion"].plan("full", [1, 8], peer_batch_8=False)
    assert "transfusion-pytorch" not in without_peer_8[-1].cases
    assert len(full["muse"]) == 4 and cell_plans(scripts, "smoke")["muse"][0].iterations == 4


def test_transfusion_interval_row_runs_the_conditional_rows_alone_on_its_unguided_steps(scripts, bench):
    """The interval row (guidance where the progress `i / (N - 1)` lies in (0.2, 1)) leaves steps 0 and 1 unguided at
    10 and at 11 steps, and runs the B conditional rows alone there: it saves two half-steps of the guided row, i.e.
    one guided step, which is what an 11th step adds to the guided row (the prefix and the decode cost the same)."""
    _timing, _flops = bench
    from hf_t2i import TransfusionConfig, TransfusionForConditionalGeneration

    bench_transfusion = scripts["transfusion"]
    torch.manual_seed(0)
    config = TransfusionConfig(
        image_size=32, patch_size=2, vocab_size=bench_transfusion.TEXT_VOCAB, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip
    model = TransfusionForConditionalGeneration(config).eval()
    flops = {}
    for steps in (10, 11):
        cases = bench_transfusion.cell_cases(model, None, _timing.Cell(2, 3.0, ("cached", "interval"), steps), False)
        with torch.inference_mode():
            _timing.CellRunner("smoke", repeats=1).run(cases)
        assert [case.name for case in cases] == [bench_transfusion.OURS, bench_transfusion.OURS_INTERVAL]
        flops[steps] = [_flops.total_flops(case.matmuls) for case in cases]
    guided_step = flops[11][0] - flops[10][0]
    assert guided_step > 0 and flops[10][0] - flops[10][1] == guided_step
    assert flops[11][0] - flops[11][1] == guided_step


def test_every_script_reads_the_common_configuration(scripts, bench):
    _timing, _ = bench
    for name, module in scripts.items():
        for constant, value in _timing.COMMON_CONFIG.items():
            if constant in vars(module):
                assert getattr(module, constant) == value, (name, constant)
        assert "WIDTH" in vars(module) and "HEADS" in vars(module), name


# -- the shared epilogue ---------------------------------------------------------------------------------------------
def test_finish_warns_about_noisy_rows_prints_the_time_and_writes_the_json(bench, tmp_path, capsys):
    _timing, _ = bench
    args = argparse.Namespace(json=str(tmp_path / "out.json"), mode="quick", repeats=1)
    started = datetime.datetime.now() - datetime.timedelta(seconds=12)
    result = {"peers": {"min-dalle": None}, "summary": [{"implementation": "x"}], "noisy_rows": ["x (batch 8)"]}
    _timing.finish("dalle", args, _timing.machine_info(1), started, result, "re-run it.")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("WARNING:") and "x (batch 8)" in out[0] and out[0].endswith("re-run it.")
    assert out[1].startswith("benchmark time: 12 s; load average after: ")
    assert out[2] == f"wrote {args.json}"
    document = json.loads((tmp_path / "out.json").read_text())
    assert (document["family"], document["mode"], document["summary"]) == ("dalle", "quick", result["summary"])
    assert document["noisy_rows"] == ["x (batch 8)"] and document["peers"] == {"min-dalle": None}

    quiet = argparse.Namespace(json=None, mode="full", repeats=3)
    _timing.finish("muse", quiet, {}, datetime.datetime.now(), {"peers": {}, "summary": []})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("benchmark time: 0 s")
