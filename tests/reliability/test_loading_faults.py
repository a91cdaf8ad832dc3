"""A saved model folder that does not fit together is refused with an error naming the file and the keys/fix.

Built on a copy of the shipped Parti checkpoint (small, loads in well under a second).
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from hf_t2i.configuration_utils import check_heads
from hf_t2i.models.image_tokenizers import load_image_tokenizer
from hf_t2i.models.parti.modeling_parti import PartiForConditionalGeneration
from hf_t2i.pipelines import T2IPipeline


SHIPPED = Path(__file__).resolve().parents[2] / "src" / "hf_t2i" / "shipped" / "parti-shapes"


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "parti"
    shutil.copytree(SHIPPED, path)
    return path


def edit_config(folder, **values):
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


def layers(n):
    return {"num_hidden_layers": n, "decoder_attention_types": ["full"] * n}


@pytest.mark.parametrize(
    "change, match",
    [
        (layers(3), r"would be dropped\): model\.decoder\.layers\.3\."),
        (layers(5), r"randomly initialised\): model\.decoder\.layers\.4\."),
        (
            {"intermediate_size": 512},
            r"another shape: model\.decoder\.layers\.0\.mlp\.fc1\.bias \[768\] in the weights vs \[512\]",
        ),
    ],
)
def test_config_not_matching_weights_is_refused(folder, change, match):
    edit_config(folder, **change)
    with pytest.raises(
        ValueError, match=rf"weights \['model.safetensors'\] in {folder} do not match its config.json.*{match}"
    ):
        PartiForConditionalGeneration.from_pretrained(folder)
    # The pipeline loads the model through the same from_pretrained.
    with pytest.raises(ValueError, match=r"do not match its config.json"):
        T2IPipeline.from_pretrained(folder)


def test_missing_tensor_is_refused_and_lenient_loading_stays_possible(folder):
    weights = load_file(folder / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"missing from the weights \(would be randomly initialised\): lm_head.weight\."
    ):
        PartiForConditionalGeneration.from_pretrained(folder)
    _, info = PartiForConditionalGeneration.from_pretrained(folder, output_loading_info=True)  # the escape hatch
    assert set(info["missing_keys"]) == {"lm_head.weight"}


def test_missing_config_json(folder):
    os.remove(folder / "config.json")
    with pytest.raises(FileNotFoundError, match=rf"{folder}/config.json is missing"):
        PartiForConditionalGeneration.from_pretrained(folder)


def test_invalid_config_json(folder):
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"{folder}/config.json is not valid JSON"):
        PartiForConditionalGeneration.from_pretrained(folder)


@pytest.mark.parametrize("field, value", [("hidden_size", "192"), ("num_attention_heads", "6")])
def test_string_where_an_int_belongs(folder, field, value):
    edit_config(folder, **{field: value})
    with pytest.raises(
        ValueError,
        match=rf"config.json has an invalid value: `{field}` must be a positive int, got '{value}'\. Fix that field",
    ):
        PartiForConditionalGeneration.from_pretrained(folder)


def test_check_heads_reports_a_string_instead_of_crashing():
    with pytest.raises(ValueError, match=r"`hidden_size` must be a positive int, got '192'"):
        check_heads("hidden_size", "192", "num_attention_heads", 6)


def test_truncated_weights(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{folder}/model.safetensors is truncated or not a safetensors file"):
        PartiForConditionalGeneration.from_pretrained(folder)


@pytest.mark.parametrize(
    "content, match",
    [
        (None, r"tokenizer.json is missing"),
        ("{not json", r"tokenizer.json is not valid JSON"),
        ('{"a": 1}', r"tokenizer.json is not a tokenizers file"),
    ],
)
def test_missing_or_invalid_tokenizer_json(folder, content, match):
    if content is None:
        os.remove(folder / "tokenizer.json")
    else:
        (folder / "tokenizer.json").write_text(content)
    with pytest.raises(ValueError, match=rf"Cannot load PartiProcessor from {folder}.*{match}"):
        T2IPipeline.from_pretrained(folder)


def test_load_image_tokenizer_invalid_config(tmp_path):
    (tmp_path / "config.json").write_text("[1,")
    with pytest.raises(ValueError, match=rf"{tmp_path}/config.json is not valid JSON"):
        load_image_tokenizer(tmp_path)


def test_intact_folder_still_loads(folder):
    assert isinstance(PartiForConditionalGeneration.from_pretrained(folder), PartiForConditionalGeneration)


def _saved_tiny_vae(path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    vae.save_pretrained(path)
    return path / "diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda weights: weights.pop("decoder.conv_in.bias"), r"missing: decoder\.conv_in\.bias"),
        (
            lambda weights: weights.update({"extra.weight": weights["decoder.conv_in.bias"].clone()}),
            r"unexpected: extra\.weight",
        ),
    ],
)
def test_load_image_tokenizer_refuses_autoencoder_kl_weights_not_matching_config(tmp_path, edit, match):
    weights_file = _saved_tiny_vae(tmp_path)
    weights = load_file(weights_file)
    edit(weights)
    save_file(weights, weights_file)
    with pytest.raises(ValueError, match=rf"weights in '{tmp_path}' do not match its config.json \({match}"):
        load_image_tokenizer(tmp_path)


def test_load_image_tokenizer_refuses_autoencoder_kl_of_another_shape(tmp_path):
    _saved_tiny_vae(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["latent_channels"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"Cannot load the AutoencoderKL in '{tmp_path}'.*shape"):
        load_image_tokenizer(tmp_path)


def test_load_image_tokenizer_loads_an_intact_autoencoder_kl(tmp_path):
    _saved_tiny_vae(tmp_path)
    vae = load_image_tokenizer(tmp_path)
    assert not vae.training and vae.config.latent_channels == 4
