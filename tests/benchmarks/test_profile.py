"""The op breakdown of the benchmarks (benchmarks/_profile.py) and `bench_training.py --profile`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def profile(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _profile

    return _profile


def test_ops_are_grouped_by_name(profile):
    assert profile.op_group("aten::mm") == profile.op_group("aten::addmm") == "matrix products"
    assert profile.op_group("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    assert profile.op_group("aten::_efficient_attention_forward") == "attention"
    assert profile.op_group("aten::linear") == "other"  # it only dispatches to addmm, whose time is counted there
    assert profile.op_group("aten::layer_norm") == "other"


def test_breakdown_of_a_training_step(profile):
    """One step of a linear layer + attention: every group gets its time, the shares add up to 1, and the table
    lists the products and the attention kernel per unit."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 96)
    x = torch.randn(4, 64, 32)

    def step():
        q, k, v = layer(x).view(4, 64, 3, 2, 16).permute(2, 0, 3, 1, 4)
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    step()
    table, shares = profile.op_breakdown(step, units=2, top=30)
    assert set(shares) == set(profile.GROUPS)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["matrix products"] > 0 and shares["attention"] > 0 and shares["other"] > 0
    assert "aten::addmm" in table and "scaled_dot_product" in table
    assert "| 0.5 " in table  # one addmm per call = 0.5 per unit
    assert profile.format_shares(shares).startswith("matrix products ")
    with pytest.raises(ValueError, match="`units` must be a positive int, got 0"):
        profile.op_breakdown(step, units=0)


def _bench_training(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_training.py"), *arguments],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_training_benchmark_profile_mode():
    """`bench_training.py --smoke --profile` prints one breakdown per step of the family; with --json it refuses."""
    completed = _bench_training("--smoke", "--profile", "--families", "parti")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "### hf_t2i Parti, batch 2: one step" in completed.stdout
    assert "matrix products" in completed.stdout and "aten::mm" in completed.stdout
    refused = _bench_training("--smoke", "--profile", "--json", "x.json")
    assert refused.returncode == 2 and "--profile prints a report and writes no JSON" in refused.stderr
