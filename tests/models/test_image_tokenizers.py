"""The shared image-tokenizer factory (`hf_t2i.models.image_tokenizers`): one config kind -> one tokenizer class,
fresh from a config or trained from a folder, and the same nested tokenizer in every prior."""

import pytest
import torch
from diffusers import AutoencoderKL, VQModel
from transformers import PreTrainedConfig

from hf_t2i import DalleDVAE, DalleDVAEConfig, PartiConfig, PartiForConditionalGeneration, ViTVQGAN, ViTVQGANConfig
from hf_t2i.models.fluid.configuration_fluid import small_vae_config
from hf_t2i.models.image_tokenizers import (
    DiffusersVQConfig,
    build_image_tokenizer,
    image_tokenizer_size,
    is_continuous_tokenizer,
    load_image_tokenizer,
)


DVAE = dict(image_size=16, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2], num_blocks_per_group=1)
VIT_VQGAN = dict(
    image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
)
VQMODEL = dict(
    sample_size=16,
    block_out_channels=[8, 8],
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    norm_num_groups=8,
    latent_channels=4,
    num_vq_embeddings=32,
    vq_embed_dim=4,
)


def vae_config() -> dict:
    return {**small_vae_config(16), "block_out_channels": [8, 8, 8], "norm_num_groups": 8}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (DalleDVAEConfig(**DVAE), DalleDVAE),
        (ViTVQGANConfig(**VIT_VQGAN), ViTVQGAN),
        (DiffusersVQConfig(vqmodel_config=VQMODEL), VQModel),
        (vae_config(), AutoencoderKL),
    ],
)
def test_each_config_builds_its_tokenizer(config, expected):
    tokenizer = build_image_tokenizer(config)
    assert type(tokenizer) is expected
    assert is_continuous_tokenizer(tokenizer) == (expected is AutoencoderKL)
    assert not any(p.requires_grad for p in tokenizer.parameters())  # a prior never trains its tokenizer


@pytest.mark.parametrize("kind", ["dvae", "vit_vqgan", "vae"])
def test_a_saved_tokenizer_loads_back_with_the_same_weights(kind, tmp_path):
    torch.manual_seed(0)
    config = {"dvae": DalleDVAEConfig(**DVAE), "vit_vqgan": ViTVQGANConfig(**VIT_VQGAN), "vae": vae_config()}[kind]
    tokenizer = build_image_tokenizer(config)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_image_tokenizer(tmp_path)
    assert type(loaded) is type(tokenizer) and not loaded.training
    assert image_tokenizer_size(loaded) == 16
    for name, value in tokenizer.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_parti_nests_a_diffusers_vq_model_from_its_saved_config(tmp_path):
    vq_config = DiffusersVQConfig(vqmodel_config=VQMODEL, output_range=[0.0, 1.0])
    config = PartiConfig(
        vq_config=vq_config,
        text_vocab_size=50,
        text_seq_len=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        encoder_layers=1,
        encoder_attention_heads=4,
        encoder_intermediate_size=64,
    )
    torch.manual_seed(0)
    model = PartiForConditionalGeneration(config).eval()
    assert type(model.vqmodel) is VQModel
    model.save_pretrained(tmp_path)
    loaded = PartiForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.config.vq_config, DiffusersVQConfig)  # the saved `model_type` names it
    ids = torch.randint(0, 32, (1, config.num_image_tokens), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.decode_image_tokens(ids), model.decode_image_tokens(ids))


def test_bad_tokenizer_configs_and_folders(tmp_path):
    with pytest.raises(ValueError, match="AutoencoderKL"):
        build_image_tokenizer(PreTrainedConfig())
    with pytest.raises(ValueError, match="config.json"):
        load_image_tokenizer(tmp_path / "missing")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="'bert'"):
        load_image_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="num_vq_embeddings"):
        DiffusersVQConfig(vqmodel_config={"sample_size": 16, "block_out_channels": [8]})
