"""`DallePytorchDVAE`: DALLE-pytorch's own `DiscreteVAE` as an image tokenizer, alone and nested in the DALL-E prior.
Parity against the original is in tests/conversion/test_convert_dalle_pytorch.py (marker `convert`)."""

import pytest
import torch
from transformers import AutoConfig, AutoModel

from hf_t2i import DalleForConditionalGeneration, DallePytorchDVAE, DallePytorchDVAEConfig
from hf_t2i.models.image_tokenizers import build_image_tokenizer, load_image_tokenizer

from ..conftest import tiny_dalle_config


def tiny_config(**kwargs) -> DallePytorchDVAEConfig:
    defaults = dict(image_size=16, vocab_size=32, codebook_dim=8, num_layers=2, hidden_size=8)
    return DallePytorchDVAEConfig(**{**defaults, **kwargs})


def tiny(**kwargs) -> DallePytorchDVAE:
    torch.manual_seed(0)
    return DallePytorchDVAE(tiny_config(**kwargs)).eval()


def pixels(batch=2, size=16, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_module_tree_keeps_dalle_pytorchs_names():
    keys = set(tiny(num_resnet_blocks=1).state_dict())
    expected = {
        "codebook.weight",
        "encoder.0.0.weight",  # stride-2 conv + ReLU
        "encoder.1.0.weight",
        "encoder.2.net.4.weight",  # the residual block's 1x1 conv
        "encoder.3.weight",  # 1x1 conv to logits
        "decoder.0.weight",  # 1x1 conv from the codebook width
        "decoder.1.net.0.weight",
        "decoder.2.0.weight",  # stride-2 transposed conv + ReLU
        "decoder.4.weight",  # 1x1 conv to pixels
    }
    assert expected <= keys
    assert "decoder.0.weight" not in tiny().state_dict()  # without residual blocks the codes go straight in


def test_encode_is_the_argmax_of_the_logits_in_raster_order():
    model = tiny(num_resnet_blocks=1)
    x = pixels()
    ids = model.encode(x)
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    logits = model.get_logits(x)  # (2, 32, 4, 4)
    assert torch.equal(ids.view(2, 4, 4), logits.argmax(dim=1))


def test_normalization_is_applied_before_encoding_and_undone_after_decoding():
    """With mean 0.5 / std 0.5 the normalised space is [-1, 1] itself; another normalisation maps through it."""
    x = pixels()
    plain = tiny()
    assert torch.allclose(plain.normalize(x), x) and torch.allclose(plain.denormalize(x), x)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    custom = tiny(normalization_mean=mean, normalization_std=std)
    custom.load_state_dict(plain.state_dict())
    expected = ((x + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(custom.normalize(x), expected)
    torch.testing.assert_close(custom.denormalize(custom.normalize(x)), x)
    assert not torch.equal(custom.get_logits(x), plain.get_logits(x))
    ids = plain.encode(x)
    raw = plain.decoder(plain.codebook(ids.view(2, 4, 4)).permute(0, 3, 1, 2))  # the decoder's own output
    torch.testing.assert_close(custom.decode(ids), custom.denormalize(raw))


def test_decode_shapes_and_grid_forms():
    model = tiny()
    ids = model.encode(pixels())
    out = model.decode(ids)
    assert out.shape == (2, 3, 16, 16)
    assert torch.equal(model.decode(ids.view(2, 4, 4)), out)


def test_forward_trains_and_is_seeded():
    model = tiny(kl_div_loss_weight=0.1, straight_through=True)
    model.train()
    x = pixels()
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.loss > 0 and out.kl_loss >= 0
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 0.1 * out.kl_loss)
    assert out.reconstruction.shape == x.shape and out.logits.shape == (2, 32, 4, 4)
    out.loss.backward()
    assert model.encoder[0][0].weight.grad.abs().sum() > 0 and model.codebook.weight.grad.abs().sum() > 0
    again = model(x, generator=torch.Generator().manual_seed(0)).loss
    other = model(x, generator=torch.Generator().manual_seed(1)).loss
    assert torch.equal(again, out.loss) and not torch.equal(other, out.loss)


def test_save_load_and_auto_classes(tmp_path):
    model = tiny(num_resnet_blocks=1, normalization_mean=[0.4, 0.5, 0.6])
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is DallePytorchDVAEConfig
    for loaded in (AutoModel.from_pretrained(tmp_path), load_image_tokenizer(tmp_path)):
        assert type(loaded) is DallePytorchDVAE
        assert loaded.config.normalization_mean == [0.4, 0.5, 0.6]
        ids = model.encode(pixels())
        assert torch.equal(loaded.encode(pixels()), ids)
        torch.testing.assert_close(loaded.decode(ids), model.decode(ids), rtol=1e-5, atol=1e-6)


def test_nested_in_the_dalle_prior(tmp_path):
    """The prior builds it from its `vq_config`, reads the grid from it, and a saved folder comes back with it."""
    torch.manual_seed(0)
    config = tiny_dalle_config(100, num_hidden_layers=2, vq_config=tiny_config())
    model = DalleForConditionalGeneration(config).eval()
    assert isinstance(model.vqmodel, DallePytorchDVAE) and config.num_image_tokens == 16
    assert not any(p.requires_grad for p in model.vqmodel.parameters())
    text = torch.randint(1, 100, (2, config.text_seq_len), generator=torch.Generator().manual_seed(0))
    codes = model.sample_image_tokens(text, do_sample=False)
    model.save_pretrained(tmp_path)
    loaded = DalleForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.vqmodel, DallePytorchDVAE)
    assert torch.equal(loaded.sample_image_tokens(text, do_sample=False), codes)
    torch.testing.assert_close(loaded.decode_image_tokens(codes), model.decode_image_tokens(codes))
    assert isinstance(build_image_tokenizer(config.vq_config), DallePytorchDVAE)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(image_size=18, num_layers=2), "image_size"),
        (dict(num_layers=0), "num_layers"),
        (dict(num_resnet_blocks=-1), "num_resnet_blocks"),
        (dict(normalization_std=[0.5, 0.0, 0.5]), "normalization_std"),
        (dict(normalization_mean=[0.5, 0.5]), "normalization_mean"),
        (dict(reconstruction_loss="l1"), "reconstruction_loss"),
        (dict(gumbel_temperature=0.0), "gumbel_temperature"),
    ],
)
def test_bad_config_names_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tiny_config(**kwargs)


def test_bad_inputs_name_the_argument():
    model = tiny()
    with pytest.raises(ValueError, match="pixel_values"):
        model.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="image_token_ids"):
        model.decode(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="image_token_ids"):
        model.decode(torch.full((1, 16), 32))
    with pytest.raises(TypeError, match="vq_config"):
        tiny_dalle_config(100, vq_config=object())
