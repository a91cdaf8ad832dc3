"""Host waits: the calls in a step that make the host wait for a GPU to finish its queued work.

`.item()`, `.tolist()`, `bool()` / `int()` / `float()` of a tensor, `nonzero`, boolean-mask indexing and the ops whose
output size depends on the data each copy a result to the host, so the host stops queueing kernels until the device
has caught up. One or two a step cost little on a GPU of one's own; one per row of the batch stalls a step many times,
and a GPU shared with other jobs serves every stall after their kernels. The calls are counted with a
`TorchFunctionMode`, on any device (on the CPU they do not wait, but they would on a GPU), so a CPU machine can check
a step's count: `bench_training.py` prints it per implementation, and tests/training/test_host_syncs.py bounds it.
"""

from __future__ import annotations

import collections
import traceback

import torch
from torch.overrides import TorchFunctionMode


WAITING_CALLS = frozenset(
    {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere", "bincount", "unique",
     "unique_consecutive", "masked_select", "repeat_interleave", "numpy"}
)  # fmt: skip
#: AdamW and friends read their step counters with `.item()`; those live on the CPU, even for a model on a GPU
CPU_SIDE = ("torch/optim/",)


class HostWaits(TorchFunctionMode):
    """Counts, while active, the calls that would wait for a GPU, by the line outside torch that made them.

    `counts` maps "name at file:line" to a number; `total` sums them. Calls made inside torch's optimizers are left
    out (their step counters are CPU tensors whatever the model's device)."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in WAITING_CALLS or _is_boolean_index(name, args):
            stack = traceback.extract_stack()[:-1]
            if not any(part in frame.filename for frame in stack for part in CPU_SIDE):
                caller = next((f for f in reversed(stack) if "/torch/" not in f.filename), stack[-1])
                self.counts[f"{name} at {_short(caller.filename)}:{caller.lineno}"] += 1
        return func(*args, **(kwargs or {}))


def _is_boolean_index(name: str, args) -> bool:
    return (
        name in ("__getitem__", "__setitem__")
        and len(args) > 1
        and isinstance(args[1], torch.Tensor)
        and args[1].dtype == torch.bool
    )


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/benchmarks/"):
        if marker in filename:
            return filename.rsplit(marker, 1)[-1]
    return filename


def count_host_waits(call) -> HostWaits:
    """Run `call()` once and return its `HostWaits`."""
    with HostWaits() as waits:
        call()
    return waits
