"""The FLOP and byte counter and roofline of the benchmarks (benchmarks/_flops.py), and the training benchmark's
--smoke run.

The counter is checked against hand counts: 2 x in x out FLOPs per row of each linear layer (2 x parameters x
tokens) plus 4 x queries x keys x head dim per head for attention; bytes: a linear layer reads its input and weight
and writes its output once, a fused attention call moves Q, K, V and its output once (never its scores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def flops(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _flops

    return _flops


class TinyBlock(torch.nn.Module):
    """One attention + MLP block of width 8, 2 heads, MLP 16."""

    def __init__(self, width=8, heads=2, mlp=16):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width, bias=False)
        self.up, self.down = torch.nn.Linear(width, mlp), torch.nn.Linear(mlp, width)

    def forward(self, x):
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape_as(x)
        x = x + self.out(attended)
        return x + self.down(F.gelu(self.up(x)))


def test_counter_matches_the_hand_count_of_a_tiny_block(flops):
    torch.manual_seed(0)
    block, x = TinyBlock(), torch.randn(2, 5, 8)
    counts = flops.record_matmuls(lambda: block(x))
    tokens, width, mlp = 2 * 5, 8, 16
    linear = 2 * tokens * (3 * width * width + width * width + 2 * width * mlp)  # 2 x parameters x tokens
    attention = 2 * 2 * 2 * (2 * 5 * 5 * 4)  # batch x heads x 2 products (QK^T, PV) x 2 x 5 queries x 5 keys x dim 4
    assert flops.total_flops(counts) == linear + attention
    scores, weighted = flops.Matmul(4, 5, 4, 5, writes_result=False), flops.Matmul(4, 5, 5, 4, reads_left=False)
    assert counts[scores] == 1 and counts[weighted] == 1  # causal: counted dense
    batched = flops.record_matmuls(lambda: torch.bmm(torch.randn(3, 2, 4), torch.randn(3, 4, 5)))
    assert batched == {flops.Matmul(3, 2, 4, 5): 1}


def test_inference_mode_records_the_same_products(flops):
    """Under inference_mode, linear / SDPA reach the recorder undecomposed: it decomposes them to see the products."""
    torch.manual_seed(0)
    block, x = TinyBlock(), torch.randn(2, 5, 8)
    with torch.no_grad():
        expected = flops.record_matmuls(lambda: block(x))
    with torch.inference_mode():
        counts = flops.record_matmuls(lambda: block(x))
        einsum = flops.record_matmuls(lambda: torch.einsum("bij,bjk->bik", torch.randn(3, 2, 4), torch.randn(3, 4, 5)))
    assert counts == expected and flops.total_flops(counts) > 0
    assert flops.total_flops(einsum) == 2 * 3 * 2 * 4 * 5


def test_dalle_forward_is_two_flops_per_parameter_and_token_plus_attention(flops):
    from hf_t2i import DalleConfig, DalleDVAEConfig, DalleForConditionalGeneration

    vq = DalleDVAEConfig(image_size=16, vocab_size=16, channel_multipliers=[1, 2], hidden_size=8)
    config = DalleConfig(
        vq_config=vq, text_vocab_size=32, text_seq_len=4, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32,
    )  # fmt: skip
    model = DalleForConditionalGeneration(config).eval()
    length = config.text_seq_len + config.num_image_tokens
    text = torch.randint(0, config.text_vocab_size, (3, config.text_seq_len))
    ids = torch.cat([text, torch.randint(0, 16, (3, config.num_image_tokens)) + config.text_vocab_size], dim=1)
    counts = flops.record_matmuls(lambda: model(ids, use_cache=False))
    linear_parameters = sum(m.weight.numel() for m in model.model.modules() if isinstance(m, torch.nn.Linear))
    linear_parameters += model.lm_head.weight.numel()
    attention = config.num_hidden_layers * 4 * 3 * length * length * config.hidden_size
    assert flops.total_flops(counts) == 2 * linear_parameters * 3 * length + attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bytes_of_a_linear_layer_and_of_an_attention_call_match_the_hand_count(flops, dtype):
    torch.manual_seed(0)
    size = torch.tensor([], dtype=dtype).element_size()  # 4 or 2
    linear, x = torch.nn.Linear(8, 16).to(dtype), torch.randn(3, 8, dtype=dtype)
    counts = flops.record_matmuls(lambda: linear(x))
    assert flops.total_bytes(counts) == size * (3 * 8 + 8 * 16 + 3 * 16)  # input, weight, output (the bias not)
    assert flops.total_flops(counts) == 2 * 3 * 8 * 16  # the FLOPs do not depend on the element size

    q, k, v = (torch.randn(2, 3, length, 4, dtype=dtype) for length in (5, 7, 7))  # (B, H, L or S, E)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            counts = flops.record_matmuls(lambda: F.scaled_dot_product_attention(q, k, v))
        # Q (5 x 4), K and V (7 x 4 each) read and the output (5 x 4) written, per (batch, head): the 5 x 7 scores
        # never; the FLOPs of the two products as before
        assert flops.total_bytes(counts) == size * 2 * 3 * (5 * 4 + 7 * 4 + 7 * 4 + 5 * 4), context
        assert flops.total_flops(counts) == 2 * 3 * 4 * 5 * 7 * 4, context
    unfused = flops.record_matmuls(lambda: torch.bmm(torch.randn(6, 5, 4), torch.randn(6, 4, 7)))
    assert flops.total_bytes(unfused) == 4 * 6 * (5 * 4 + 4 * 7 + 5 * 7)  # a plain product writes its result


def test_memory_bandwidth_is_measured_once_per_process(flops):
    bandwidth = flops.memory_bandwidth_gbs()
    assert 0 < bandwidth < 10_000  # GB/s
    calls = flops._copy_bandwidth_gbs.cache_info().misses
    assert flops.memory_bandwidth_gbs() == bandwidth and flops._copy_bandwidth_gbs.cache_info().misses == calls


def test_roofline_fields_and_training_peak(flops):
    counts = {flops.Matmul(1, 32, 16, 8): 2}
    forward_timed, training_timed = {}, {}
    forward = flops.matmul_seconds(counts, repeats=1, min_seconds=0.0, timed=forward_timed)
    training = flops.matmul_seconds(counts, training=True, repeats=1, min_seconds=0.0, timed=training_timed)
    # the two gradient products are timed too (compared by what was timed, not by the times: a loaded machine
    # can time one small product slower than three)
    assert list(forward_timed) == [flops.Matmul(1, 32, 16, 8)] and len(training_timed) == 3
    assert forward == pytest.approx(2 * forward_timed[flops.Matmul(1, 32, 16, 8)]) and forward > 0
    assert training == pytest.approx(2 * sum(training_timed.values())) and training > 0
    roofline = flops.Roofline(flops_per_unit=2e9, peak_gflops=50.0, bytes_per_unit=3e8, bandwidth_gbs=6.0)
    assert roofline.fields(0.1) == pytest.approx(
        {
            "gflop_per_image": 2.0,
            "gflops": 20.0,
            "peak_gflops": 50.0,
            "percent_of_peak": 40.0,
            "gbyte_per_image": 0.3,
            "gbytes_per_s": 3.0,
            "bandwidth_gbs": 6.0,
            "percent_of_bandwidth": 50.0,
        }
    )
    untimed = roofline.fields(None)
    assert untimed["gflops"] is None and untimed["percent_of_peak"] is None
    assert untimed["gbytes_per_s"] is None and untimed["percent_of_bandwidth"] is None
    no_bytes = flops.Roofline(flops_per_unit=2e9, peak_gflops=50.0).fields(0.1)  # a row counted before bytes were
    assert no_bytes["percent_of_peak"] == pytest.approx(40.0) and no_bytes["percent_of_bandwidth"] is None

    def product():
        return torch.randn(4, 8) @ torch.randn(8, 2)

    measured = flops.Roofline.measure(product, per=2, quick_peak=True)
    assert measured.flops_per_unit == 2 * 4 * 8 * 2 / 2 and measured.peak_gflops > 0
    assert measured.bytes_per_unit == 4 * (4 * 8 + 8 * 2 + 4 * 2) / 2
    assert measured.bandwidth_gbs == flops.memory_bandwidth_gbs()
    step = flops.Roofline.measure(product, per=2, training=True, quick_peak=True)
    assert step.flops_per_unit == 3 * measured.flops_per_unit  # the product and its two gradients
    assert step.bytes_per_unit == 3 * measured.bytes_per_unit


@pytest.mark.slow
def test_training_smoke_run(tmp_path):
    """bench_training.py --smoke on DALL-E: our step and dalle-pytorch's (where installed) run, and the JSON has the
    common summary with tokens/s and the roofline fields."""
    out = tmp_path / "training.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_training.py"), "--smoke", "--families", "dalle", "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["family"] == "training" and document["mode"] == "smoke"
    ours = [r for r in document["summary"] if not r["is_peer"]]
    assert [r["implementation"] for r in ours] == ["hf_t2i DALL-E"]
    record = ours[0]
    assert record["error"] is None and record["tokens_per_step"] == 2 * (8 + 256)
    assert record["tokens_per_second"] > 0 and record["gflops"] > 0 and record["percent_of_peak"] > 0
    assert record["gbytes_per_s"] > 0 and record["bandwidth_gbs"] > 0 and record["percent_of_bandwidth"] > 0
