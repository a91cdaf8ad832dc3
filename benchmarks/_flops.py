"""FLOP and byte counting, and the two ceilings of the same work: the roofline columns of every benchmark script.

`record_matmuls` runs a call once under a torch dispatch mode and keeps the shape of every matrix product it runs:
`mm` / `addmm` (every linear layer: 2 x in x out FLOPs per row, i.e. 2 x parameters x tokens), `bmm` / `baddbmm`,
and each fused attention call as its two products (scores Q K^T and the weighted sum P V: 4 x queries x keys x
head dim FLOPs per head). Convolutions, norms, softmax and elementwise work are not counted. The count is analytic
(shapes times the formula, nothing is timed) and follows the model as it is, so no script keeps a hand-written copy
of its architecture; attention is counted dense, over every key the kernel is given (sparse or causal masks do not
lower it), which is what an SDPA kernel computes.

Next to its FLOPs, each product carries the bytes it must move: its two operands read and its result written once,
at the element size of the real tensors (bf16 counts 2 bytes). A fused attention call moves Q, K, V and its output
once: its scores matrix stays inside the kernel, so neither of its two products moves it (an attention mask and a
bias are not counted). This is the minimum traffic if nothing stays in cache from one product to the next: the
weights of every linear layer and the K/V cache of every attention call, read once per call. It is the relevant
count for small-batch decoding, where each step reads all the weights and the cache to do little arithmetic on them.

`matmul_seconds` times the same products as plain torch matmuls in isolation, each distinct shape on its own, and
`memory_bandwidth_gbs` measures the machine's copy bandwidth once per process. `Roofline` puts them together: the
achieved GFLOP/s of a call next to the GFLOP/s the same products reach alone, and its achieved GB/s next to the
bandwidth. A training step counts 3x its forward's FLOPs (the two gradient products of each forward product), and
its peak times those three products; it counts 3x its forward's bytes too, an approximation: each gradient product
moves operands and a result of the same sizes as the forward product (the fused attention backward is not modelled
apart).
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode


@dataclass(frozen=True)
class Matmul:
    """One matrix product: `batch` independent (m, k) x (k, n) products of `element_size`-byte elements.

    A plain product reads both operands and writes its result. Inside a fused attention kernel, the scores product
    (Q K^T) keeps its result on chip (`writes_result=False`) and the weighted sum (P V) takes it from there
    (`reads_left=False`), so the call moves Q, K, V and the output once.
    """

    batch: int
    m: int
    k: int
    n: int
    element_size: int = 4
    reads_left: bool = True
    writes_result: bool = True

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n

    @property
    def bytes(self) -> int:
        """The bytes the product moves to and from memory, if nothing it touches is already in cache."""
        elements = self.k * self.n  # the right operand (weights, K or V)
        if self.reads_left:
            elements += self.m * self.k
        if self.writes_result:
            elements += self.m * self.n
        return self.batch * elements * self.element_size


_aten = torch.ops.aten
_MM = {_aten.mm.default: 0, _aten.addmm.default: 1}  # op -> index of its first matrix
_BMM = {_aten.bmm.default: 0, _aten.baddbmm.default: 1}
_SDPA = {
    getattr(_aten, name).default
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable",
    )
    if hasattr(_aten, name)
}


def matmuls_of(func, args) -> list[Matmul]:
    """The products one aten call runs (none for other ops)."""
    if func in _MM:
        a, b = args[_MM[func]], args[_MM[func] + 1]
        return [Matmul(1, a.shape[0], a.shape[1], b.shape[1], a.element_size())]
    if func in _BMM:
        a, b = args[_BMM[func]], args[_BMM[func] + 1]
        return [Matmul(a.shape[0], a.shape[1], a.shape[2], b.shape[2], a.element_size())]
    if func in _SDPA:
        query, key, value = args[:3]  # (B, H, L, E), (B, H, S, E), (B, H, S, Ev)
        heads = query.shape[0] * query.shape[1]
        length, keys, size = query.shape[2], key.shape[2], query.element_size()
        return [
            Matmul(heads, length, query.shape[3], keys, size, writes_result=False),  # Q K^T: reads Q and K
            Matmul(heads, length, keys, value.shape[3], size, reads_left=False),  # P V: reads V, writes the output
        ]
    return []


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter[Matmul] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        products = matmuls_of(func, args)
        if products:
            self.counts.update(products)
            return func(*args, **kwargs)
        if _is_composite(func):
            # Under `torch.inference_mode` a composite op (linear, matmul, einsum, scaled_dot_product_attention)
            # reaches this mode before its decomposition runs: run that decomposition here, with the recorder on, so
            # that the products inside it are seen (it is what the op's kernel would run next).
            with self:
                return func.decompose(*args, **kwargs)
        return func(*args, **kwargs)


@functools.cache
def _is_composite(func) -> bool:
    """Whether an aten op is implemented by decomposing it into other ops (checked once per op: the recorder's
    overhead lands on every op of the recorded call)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")


def record_matmuls(fn: Callable[[], object]) -> Counter[Matmul]:
    """Run `fn` once and return how many times it ran each matrix-product shape (see the module docstring)."""
    recorder = _Recorder()
    with recorder:
        fn()
    return recorder.counts


def total_flops(counts: Counter[Matmul]) -> int:
    return sum(shape.flops * count for shape, count in counts.items())


def total_bytes(counts: Counter[Matmul]) -> int:
    return sum(shape.bytes * count for shape, count in counts.items())


def _gradient_products(shape: Matmul) -> list[Matmul]:
    """The product and its two gradients: dA = dC B^T is (m, n) x (n, k), dB = A^T dC is (k, m) x (m, n)."""
    b, m, k, n = shape.batch, shape.m, shape.k, shape.n
    return [shape, Matmul(b, m, n, k), Matmul(b, k, m, n)]


def _time_product(shape: Matmul, repeats: int, min_seconds: float, dtype: torch.dtype) -> float:
    """Best-of-`repeats` seconds of one plain product, each sample averaged over enough calls to last `min_seconds`."""
    a = torch.randn(shape.batch, shape.m, shape.k, dtype=dtype)
    b = torch.randn(shape.batch, shape.k, shape.n, dtype=dtype)
    out = torch.empty(shape.batch, shape.m, shape.n, dtype=dtype)
    if shape.batch == 1:
        a, b, out = a[0], b[0], out[0]
        product = torch.mm
    else:
        product = torch.bmm
    product(a, b, out=out)  # warm-up
    start = time.perf_counter()
    product(a, b, out=out)
    calls = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-7)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            product(a, b, out=out)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def matmul_seconds(
    counts: Counter[Matmul],
    training: bool = False,
    repeats: int = 3,
    min_seconds: float = 1e-3,
    dtype: torch.dtype = torch.float32,
    timed: dict[Matmul, float] | None = None,
) -> float:
    """Seconds the recorded products take as plain torch matmuls in isolation (each distinct shape timed, times its
    count); with `training`, each product's two gradient products too. `timed` (shape -> seconds) keeps the shapes
    already timed, so that rows sharing shapes (the same model in several cells) time each shape once per run."""
    seconds = 0.0
    timed = {} if timed is None else timed
    for shape, count in counts.items():
        plain = Matmul(
            shape.batch, shape.m, shape.k, shape.n
        )  # its time depends on the shape alone (timed at `dtype`)
        for product in _gradient_products(plain) if training else [plain]:
            if product not in timed:
                timed[product] = _time_product(product, repeats, min_seconds, dtype)
            seconds += count * timed[product]
    return seconds


#: the copy that measures the bandwidth: far larger than any CPU's last-level cache, so that it streams from DRAM
BANDWIDTH_BUFFER_MIB = 256


def memory_bandwidth_gbs() -> float:
    """The machine's memory bandwidth in GB/s at torch's current thread count, measured once per process and thread
    count: the best of 5 `dst.copy_(src)` of a `BANDWIDTH_BUFFER_MIB` fp32 buffer, counted as read + write (2 x the
    buffer per copy, as STREAM's copy counts it; a write-allocate cache adds a read it does not count). The best, not
    the median: the copy least slowed down by other processes. About 0.1 s per copy at 5 GB/s."""
    return _copy_bandwidth_gbs(torch.get_num_threads())


@functools.cache
def _copy_bandwidth_gbs(threads: int) -> float:
    # `threads` only keys the cache (one measurement per thread count): the copy runs at torch's thread count
    src = torch.ones(BANDWIDTH_BUFFER_MIB * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: the first touch of `dst`'s pages faults them in
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best / 1e9


@dataclass
class Roofline:
    """The FLOPs and bytes of one call (per unit, e.g. per image), the GFLOP/s its products reach in isolation and the
    machine's memory bandwidth: the two ceilings of its matrix products. The bytes and the bandwidth are optional (None
    where a row has no byte count)."""

    flops_per_unit: float
    peak_gflops: float
    bytes_per_unit: float | None = None
    bandwidth_gbs: float | None = None

    @classmethod
    def measure(cls, fn: Callable[[], object], per: int, training: bool = False, quick_peak: bool = False) -> Roofline:
        """Record `fn`'s products (one untimed call; for `training`, `fn` is the forward and the count is x3) and
        time them alone. `quick_peak` times each shape once (smoke runs)."""
        return cls.from_counts(record_matmuls(fn), per, training, quick_peak)

    @classmethod
    def from_counts(
        cls,
        counts: Counter[Matmul],
        per: int,
        training: bool = False,
        quick_peak: bool = False,
        timed: dict[Matmul, float] | None = None,
    ) -> Roofline:
        """The roofline of products already recorded (`record_matmuls`): their FLOPs and bytes per unit, their peak,
        timed now (`timed`: see `matmul_seconds`), and the memory bandwidth (`memory_bandwidth_gbs`, measured once
        per process)."""
        passes = 3 if training else 1  # a training step: the forward product and its two gradient products
        flops, moved = total_flops(counts) * passes, total_bytes(counts) * passes
        repeats, min_seconds = (1, 0.0) if quick_peak else (3, 1e-3)
        seconds = matmul_seconds(counts, training, repeats=repeats, min_seconds=min_seconds, timed=timed)
        peak = flops / seconds / 1e9 if seconds > 0 else float("nan")
        return cls(flops / per, peak, moved / per, memory_bandwidth_gbs())

    def gflops(self, seconds_per_unit: float | None) -> float | None:
        """Achieved GFLOP/s at `seconds_per_unit` (None where there is no time)."""
        if not seconds_per_unit:
            return None
        return self.flops_per_unit / seconds_per_unit / 1e9

    def gbytes_per_s(self, seconds_per_unit: float | None) -> float | None:
        """Achieved GB/s of the counted bytes at `seconds_per_unit` (None where there is no time or no byte count)."""
        if not seconds_per_unit or self.bytes_per_unit is None:
            return None
        return self.bytes_per_unit / seconds_per_unit / 1e9

    def fields(self, seconds_per_unit: float | None) -> dict:
        """The record fields every script adds to its summary rows: `gflops`, `peak_gflops`, `percent_of_peak`, and
        the same for bytes: `gbytes_per_s`, `bandwidth_gbs`, `percent_of_bandwidth`."""
        achieved, streamed = self.gflops(seconds_per_unit), self.gbytes_per_s(seconds_per_unit)
        return {
            "gflop_per_image": self.flops_per_unit / 1e9,
            "gflops": achieved,
            "peak_gflops": self.peak_gflops,
            "percent_of_peak": None if achieved is None else 100 * achieved / self.peak_gflops,
            "gbyte_per_image": None if self.bytes_per_unit is None else self.bytes_per_unit / 1e9,
            "gbytes_per_s": streamed,
            "bandwidth_gbs": self.bandwidth_gbs,
            "percent_of_bandwidth": (
                None if streamed is None or not self.bandwidth_gbs else 100 * streamed / self.bandwidth_gbs
            ),
        }
