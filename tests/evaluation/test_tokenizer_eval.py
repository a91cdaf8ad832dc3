import argparse
import json
import math

import pytest
import torch
from torch import nn

from hf_t2i import DalleDVAE, DalleDVAEConfig, T2IImageProcessor
from hf_t2i.evaluation import load_eval_split, runner
from hf_t2i.evaluation.cli import add_eval_subparser
from hf_t2i.evaluation.tokenizer import evaluate_image_tokenizer, reconstruction_metrics


class _Config:
    vocab_size = 4
    image_size = 32


class MemoryTokenizer(nn.Module):
    """Returns exactly what it last encoded, with code ids that cycle over 2 of its 4 codes."""

    config = _Config()

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def encode(self, pixels):
        self.last = pixels
        return (torch.arange(pixels.shape[0] * 4) % 2).reshape(pixels.shape[0], 4)

    def decode(self, ids):
        return self.last


def test_perfect_reconstruction_and_usage_are_measured():
    pixels = torch.rand(6, 3, 8, 8) * 2 - 1
    metrics, reconstructions = reconstruction_metrics(MemoryTokenizer(), pixels, batch_size=4)
    assert metrics["mse"] == 0.0
    assert metrics["codebook_usage"] == 0.5
    assert metrics["perplexity"] == pytest.approx(2.0)
    assert torch.equal(reconstructions, pixels)
    noisy = MemoryTokenizer()
    noisy.decode = lambda ids: noisy.last * 0  # mid-grey everywhere
    expected = ((pixels / 2) ** 2).mean().item()
    assert reconstruction_metrics(noisy, pixels)[0]["mse"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="empty"):
        reconstruction_metrics(MemoryTokenizer(), [])


def test_shapes_report_has_the_ceiling_of_a_perfect_and_a_random_tokenizer(tmp_path):
    perfect = evaluate_image_tokenizer(MemoryTokenizer(), "shapes", num_images=12)
    assert perfect["mse"] < 1e-4 and perfect["compositional_originals"] == 1.0
    # uint8 rounding of the reconstructions must not cost the detector anything
    assert perfect["compositional_ceiling"]["overall"] == 1.0
    config = DalleDVAEConfig(image_size=32, vocab_size=16, hidden_size=8, channel_multipliers=[1, 2])
    DalleDVAE(config).save_pretrained(tmp_path)
    random = evaluate_image_tokenizer(str(tmp_path), "shapes", num_images=12)
    assert random["num_images"] == 12 and random["mse"] > perfect["mse"]
    assert random["compositional_ceiling"]["overall"] < 0.5
    assert random["psnr"] == pytest.approx(10 * math.log10(1 / random["mse"]))


def test_a_continuous_autoencoder_kl_folder_is_evaluated_through_its_latent_mode(tmp_path):
    from diffusers import AutoencoderKL

    from hf_t2i.models.fluid.configuration_fluid import small_vae_config

    torch.manual_seed(0)
    tiny = {"block_out_channels": [16, 16], "norm_num_groups": 8}
    tiny.update(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    vae = AutoencoderKL(**{**small_vae_config(32), **tiny})
    vae.save_pretrained(tmp_path)
    report = evaluate_image_tokenizer(str(tmp_path), "shapes", num_images=6)
    assert report["num_images"] == 6 and "codebook_usage" not in report
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    metrics, reconstructions = reconstruction_metrics(vae.eval(), pixels)
    with torch.no_grad():
        expected = vae.decode(vae.encode(pixels).latent_dist.mode()).sample.clamp(-1, 1)
    assert torch.allclose(reconstructions, expected)
    assert metrics["mse"] == pytest.approx((((expected - pixels) / 2) ** 2).mean().item(), rel=1e-5)
    assert report["compositional_ceiling"]["overall"] < 0.5  # an untrained VAE draws nothing recognisable
    with pytest.raises(ValueError, match="config.json"):
        evaluate_image_tokenizer(str(tmp_path / "missing"), "shapes", num_images=2)


def test_the_tokenizer_is_evaluated_on_the_chosen_split():
    def encoded_pixels(**kwargs):
        tokenizer = MemoryTokenizer()  # keeps the pixels it last encoded
        report = evaluate_image_tokenizer(tokenizer, "shapes", num_images=6, **kwargs)
        assert report["num_images"] == 6 and report["compositional_originals"] == 1.0
        return tokenizer.last

    def split_pixels(split):
        images = list(load_eval_split("shapes", 6, 32, split=split)["image"])
        return T2IImageProcessor(image_size=32)(images, return_tensors="pt")["pixel_values"]

    validation = encoded_pixels(split="validation")
    assert torch.equal(validation, split_pixels("validation"))
    assert not torch.equal(validation, split_pixels("test"))
    assert torch.equal(encoded_pixels(), split_pixels("test"))  # the default is unchanged
    with pytest.raises(ValueError, match="`split` .*'validation'.*'emoji'"):
        evaluate_image_tokenizer(MemoryTokenizer(), "emoji", num_images=2, split="validation")


def test_cli_passes_the_split_to_the_tokenizer_evaluation(tmp_path, monkeypatch):
    splits = []

    def spy(*args, split="test", **kwargs):
        splits.append(split)
        return load_eval_split(*args, split=split, **kwargs)

    monkeypatch.setattr(runner, "load_eval_split", spy)
    config = DalleDVAEConfig(image_size=32, vocab_size=16, hidden_size=8, channel_multipliers=[1, 2])
    DalleDVAE(config).save_pretrained(tmp_path / "dvae")
    parser = argparse.ArgumentParser()
    add_eval_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["eval", "--tokenizer", str(tmp_path / "dvae"), "--dataset", "shapes", "--num-images", "4"]
        + ["--split", "validation", "--output-dir", str(tmp_path / "out")]
    )
    assert args.func(args) == 0 and splits == ["validation"]
    report = json.loads((tmp_path / "out" / "tokenizer_report.json").read_text())
    assert report["settings"]["split"] == "validation" and report["metrics"]["num_images"] == 4


def test_fid_of_the_reconstructions_is_zero_for_a_perfect_tokenizer_and_shares_the_pipeline_reference(tmp_path):
    import os

    from hf_t2i.evaluation.fid import fid_cache_path

    from .test_fid import PooledColours  # the tests' cheap feature network

    options = {"fid": True, "fid_cache_dir": str(tmp_path), "fid_feature_extractor": PooledColours()}
    perfect = evaluate_image_tokenizer(MemoryTokenizer(), "shapes", num_images=8, **options)
    assert perfect["fid_reconstructions"] == pytest.approx(0.0, abs=1e-3)
    # the real side is cached under the same file a pipeline evaluation of that split reads
    assert os.path.isfile(fid_cache_path("shapes", "test", 8, 32, 0, str(tmp_path)))
    grey = MemoryTokenizer()
    grey.decode = lambda ids: grey.last * 0
    assert evaluate_image_tokenizer(grey, "shapes", num_images=8, **options)["fid_reconstructions"] > 1.0
    assert "fid_reconstructions" not in evaluate_image_tokenizer(MemoryTokenizer(), "shapes", num_images=4)
    with pytest.raises(ValueError, match="num_images"):
        evaluate_image_tokenizer(MemoryTokenizer(), "shapes", num_images=1, fid=True)


def test_cli_takes_only_fid_as_a_tokenizer_metric(tmp_path):
    config = DalleDVAEConfig(image_size=32, vocab_size=16, hidden_size=8, channel_multipliers=[1, 2])
    DalleDVAE(config).save_pretrained(tmp_path / "dvae")
    parser = argparse.ArgumentParser()
    add_eval_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["eval", "--tokenizer", str(tmp_path / "dvae"), "--dataset", "shapes", "--num-images", "2"]
        + ["--metrics", "fid,compositional"]
    )
    with pytest.raises(ValueError, match="--metrics 'fid,compositional' with --tokenizer"):
        args.func(args)
