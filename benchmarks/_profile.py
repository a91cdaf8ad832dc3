"""Where a call's time goes: torch.profiler's self CPU time by op, and the same time grouped into matrix products,
attention kernels and everything else (copies, norms, activations, the optimizer, ...).

    table, shares = op_breakdown(step, units=1)   # after the caller's warm-up calls
    shares  # {"matrix products": 0.71, "attention": 0.17, "other": 0.12}

`bench_dalle.py --profile` (one guided sampling call, per token step) and `bench_training.py --profile` (one
optimizer step) print these.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from _timing import format_table


# ops that do the matrix products (their own time; `aten::linear` / `aten::matmul` only dispatch to these)
MATMUL_OPS = frozenset(
    {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::addmv", "aten::mv"}
)
# the fused attention kernels' names (forward and backward, every backend) contain one of these
ATTENTION_MARKERS = ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")
GROUPS = ("matrix products", "attention", "other")


def op_group(name: str) -> str:
    """The group of a profiler event's name: "matrix products", "attention" or "other"."""
    if name in MATMUL_OPS:
        return "matrix products"
    if any(marker in name for marker in ATTENTION_MARKERS):
        return "attention"
    return "other"


def op_breakdown(call: Callable[[], object], units: int = 1, top: int = 15) -> tuple[str, dict[str, float]]:
    """Profile one `call()` (warm it up first) on the CPU.

    Args:
        call: what to profile, e.g. one training step.
        units: what the per-unit columns divide by (1 per step; the token steps of a sampling call).
        top: rows of the op table.

    Returns:
        A markdown table of the `top` ops by self CPU time (calls and ms per unit, share of the total) and the share
        of the total self time of each of `GROUPS`.
    """
    if not isinstance(units, int) or units < 1:
        raise ValueError(f"`units` must be a positive int, got {units!r}.")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    shares = dict.fromkeys(GROUPS, 0.0)
    for event in events:
        shares[op_group(event.key)] += event.self_cpu_time_total / total
    rows = [
        [
            event.key,
            f"{event.count / units:.1f}",
            f"{event.self_cpu_time_total / units / 1e3:.3f}",
            f"{event.self_cpu_time_total / total:.1%}",
        ]
        for event in events[:top]
    ]
    table = format_table(["op", "calls / unit", "self ms / unit", "share"], rows)
    return table, shares


def format_shares(shares: dict[str, float]) -> str:
    """E.g. "matrix products 71.0%, attention 17.0%, other 12.0%"."""
    return ", ".join(f"{group} {shares[group]:.1%}" for group in GROUPS)
