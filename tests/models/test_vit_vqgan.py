import pytest
import torch

from hf_t2i.models.vit_vqgan import ViTVQGAN, ViTVQGANConfig, ViTVQGANUpsampler, ViTVQGANUpsamplerConfig


TINY = dict(
    image_size=16,
    patch_size=4,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=32,
    code_dim=8,
)


def tiny(**kwargs):
    torch.manual_seed(0)
    return ViTVQGAN(ViTVQGANConfig(**{**TINY, **kwargs}))


def pixels(batch=2, size=16, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encode_decode_shapes_and_range():
    model = tiny()
    ids = model.encode(pixels())
    assert ids.shape == (2, 16) and ids.dtype == torch.long and ids.min() >= 0 and ids.max() < 32
    decoded = model.decode(ids)
    assert decoded.shape == (2, 3, 16, 16) and decoded.min() >= -1 and decoded.max() <= 1
    assert torch.equal(model.decode(ids.view(2, 4, 4)), decoded)  # grid-shaped ids too
    out = model(pixels())
    assert torch.equal(out.image_token_ids, ids) and out.latents.shape == (2, 16, 8)
    assert torch.allclose(out.reconstruction.clamp(-1, 1), decoded, atol=1e-5)  # forward decodes the same codes
    assert torch.allclose(out.loss, out.reconstruction_loss + out.vq_loss)
    assert 1 <= out.perplexity <= 32


def test_logit_laplace_weight_enters_the_loss():
    x = pixels()
    l2_only, both = tiny()(x), tiny(logit_laplace_loss_weight=0.1)(x)
    assert torch.allclose(l2_only.logit_laplace_loss, both.logit_laplace_loss)
    assert torch.allclose(both.reconstruction_loss, l2_only.l2_loss + 0.1 * l2_only.logit_laplace_loss)


def test_gradient_reaches_the_encoder_through_the_codebook():
    model = tiny()
    model(pixels()).reconstruction_loss.backward()  # no VQ loss: only the straight-through path
    assert model.encoder.patch_embedding.weight.grad.abs().sum() > 0
    assert model.quantizer.codebook.weight.grad is None  # codes only move through the VQ loss


def test_with_decoder_grows_a_decoder_that_starts_as_the_trained_one(tmp_path):
    """Parti's larger decoder: `with_decoder` copies the encoder and codebook (same codes); more blocks of the same
    width decode exactly as before until trained, other sizes start from scratch; both save and load as they are."""
    model = tiny().eval()
    x = pixels()
    ids = model.encode(x)
    deeper = model.with_decoder(decoder_num_hidden_layers=3).eval()
    assert len(deeper.decoder.layers) == 3 and deeper.config.decoder_num_hidden_layers == 3
    assert model.config.decoder_num_hidden_layers == 1  # the original is untouched
    assert torch.equal(deeper.encode(x), ids)
    with torch.no_grad():
        torch.testing.assert_close(deeper.decode(ids), model.decode(ids), rtol=0, atol=0)
    assert all(p.requires_grad for p in deeper.decoder.layers[2].parameters())  # trainable, not frozen at zero
    deeper.decoder.layers[2].mlp.fc2.weight.data.normal_(0.0, 1.0)  # once trained, the added blocks change the picture
    assert not torch.allclose(deeper.decode(ids), model.decode(ids), atol=1e-4)

    wider = model.with_decoder(decoder_hidden_size=64, decoder_intermediate_size=128)
    assert wider.decoder.code_projection.out_features == 64 and torch.equal(wider.encode(x), ids)
    wider.save_pretrained(tmp_path / "wider")
    loaded = ViTVQGAN.from_pretrained(tmp_path / "wider")
    assert loaded.config.decoder_hidden_size == 64 and loaded.config.hidden_size == 32
    torch.testing.assert_close(loaded.decode(ids), wider.decode(ids))
    with pytest.raises(ValueError, match="`with_decoder`.*hidden_size.*decoder_hidden_size"):
        model.with_decoder(hidden_size=64)


def test_upsampler_outputs_twice_the_size_and_round_trips(tmp_path):
    tokenizer = tiny()
    torch.manual_seed(2)
    upsampler = ViTVQGANUpsampler.from_tokenizer(
        tokenizer, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    )
    assert torch.allclose(upsampler.codebook, tokenizer.quantizer.normalized_codebook())
    assert "codebook" not in dict(upsampler.named_parameters())  # frozen: a buffer
    ids = tokenizer.encode(pixels())
    out = upsampler.decode(ids)
    assert out.shape == (2, 3, 32, 32) and out.min() >= -1 and out.max() <= 1
    result = upsampler(ids, pixels(2, 32))
    assert result.reconstruction.shape == (2, 3, 32, 32) and result.loss > 0
    upsampler.save_pretrained(tmp_path)
    loaded = ViTVQGANUpsampler.from_pretrained(tmp_path)
    assert torch.equal(loaded.codebook, upsampler.codebook)
    assert torch.allclose(loaded.decode(ids), out)


def test_paper_config():
    config = ViTVQGANConfig.paper()
    assert (config.image_size, config.patch_size, config.grid_size, config.vocab_size, config.code_dim) == (
        256,
        8,
        32,
        8192,
        32,
    )
    assert config.decoder_hidden_size == config.hidden_size == 768
    assert ViTVQGANUpsamplerConfig.from_tokenizer_config(config).output_size == 512


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="image_size"):
        ViTVQGANConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="num_attention_heads"):
        ViTVQGANConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="decoder_num_attention_heads"):
        ViTVQGANConfig(decoder_hidden_size=30)
    with pytest.raises(ValueError, match="vocab_size"):
        ViTVQGANConfig(vocab_size=1)
    with pytest.raises(ValueError, match="l2_loss_weight"):
        ViTVQGANConfig(l2_loss_weight=0.0)
    with pytest.raises(ValueError, match="scale_factor"):
        ViTVQGANUpsamplerConfig(scale_factor=1)
    with pytest.raises(ValueError, match="image_size"):
        ViTVQGANUpsamplerConfig.from_tokenizer_config(ViTVQGANConfig(), image_size=32)
    model = tiny()
    with pytest.raises(ValueError, match="pixel_values"):
        model.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="image_token_ids"):
        model.decode(torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="image_token_ids"):
        model.decode(torch.full((1, 16), 99))
