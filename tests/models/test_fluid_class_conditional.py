"""Class-conditional Fluid with MAR's masked encoder-decoder (`num_classes`) and the MAR head options."""

import pytest
import torch

from hf_t2i import FluidPipeline, MarConfig, MarForConditionalGeneration
from hf_t2i.layers.diffusion_head import DiffusionHead, build_ddpm_scheduler, diffusion_loss

from .test_fluid import tiny_fluid_config


def mar_config(token_type="continuous", **kwargs):
    defaults = dict(
        num_classes=5,
        buffer_size=3,
        layer_norm_eps=1e-6,
        diffusion_head_frequency_dim=16,
        diffusion_head_learned_variance=True,
        diffusion_head_norm_affine=True,
        diffusion_timestep_spacing="linspace",
    )
    defaults.update(kwargs)
    order = defaults.pop("generation_order", "random")
    text_fields = tiny_fluid_config(token_type, order).to_dict()  # the tiny sizes, then MAR's layout on top
    return MarConfig.from_dict({**text_fields, **defaults, "model_type": MarConfig.model_type})


def mar_model(token_type="continuous", **kwargs):
    torch.manual_seed(0)
    model = MarForConditionalGeneration(mar_config(token_type, **kwargs)).eval()
    with torch.no_grad():  # move the zero-initialised head modulations and embeddings away from zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def tokens_for(model, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    if c.is_continuous:
        return torch.randn(batch, c.num_image_tokens, c.token_dim, generator=g)
    return torch.randint(0, c.image_vocab_size, (batch, c.num_image_tokens), generator=g)


@pytest.mark.parametrize("token_type", ["continuous", "discrete"])
def test_masked_tokens_are_never_read_and_rows_with_different_counts_batch(token_type):
    model = mar_model(token_type)
    tokens = tokens_for(model)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, [0, 5]] = True
    mask[1, :12] = True  # 4 visible: the encoder pads rows 0 and 2 differ in length
    labels = torch.tensor([0, 4, 2])
    with torch.no_grad():
        out = model.model(class_labels=labels, image_tokens=tokens, mask=mask).last_hidden_state
        other = tokens_for(model, seed=1)
        changed = torch.where(mask[..., None] if model.config.is_continuous else mask, other, tokens)
        again = model.model(class_labels=labels, image_tokens=changed, mask=mask).last_hidden_state
        singles = torch.cat(
            [
                model.model(
                    class_labels=labels[i : i + 1], image_tokens=tokens[i : i + 1], mask=mask[i : i + 1]
                ).last_hidden_state
                for i in range(3)
            ]
        )
    torch.testing.assert_close(again, out)
    torch.testing.assert_close(singles, out, rtol=1e-5, atol=1e-5)
    # the class matters
    with torch.no_grad():
        relabelled = model.model(class_labels=labels.flip(0), image_tokens=tokens, mask=mask).last_hidden_state
    assert not torch.allclose(relabelled, out)


def test_learned_variance_loss_is_iddpm_hybrid():
    """L_simple + L_vlb: the epsilon half gets the MSE gradient only (the vlb's mean is detached), the variance half
    gets the vlb's gradient."""
    torch.manual_seed(0)
    head = DiffusionHead(4, 8, 16, 2, frequency_dim=8, learned_variance=True, norm_affine=True)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.2)
    scheduler = build_ddpm_scheduler(100, learned_variance=True)
    targets, condition = torch.randn(64, 4), torch.randn(64, 8)
    outputs = {}

    def denoise(x, t):
        out = head(x, t, condition)
        out.retain_grad()
        outputs["out"] = out
        return out

    loss = diffusion_loss(denoise, targets, scheduler, torch.Generator().manual_seed(1))
    loss.backward()
    grad = outputs["out"].grad
    # recompute the MSE-only gradient of the epsilon half with the same draws
    g = torch.Generator().manual_seed(1)
    torch.randint(0, 100, (64,), generator=g)  # the timesteps: advance the generator past them
    noise = torch.randn(64, 4, generator=g)
    eps = outputs["out"].detach()[:, :4]
    torch.testing.assert_close(grad[:, :4], 2 * (eps - noise) / (64 * 4), rtol=1e-4, atol=1e-7)
    assert grad[:, 4:].abs().sum() > 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="learned_range"):
        diffusion_loss(lambda x, t: head(x, t, condition), targets, build_ddpm_scheduler(100))


def test_class_conditional_training_lowers_the_loss_and_round_trips(tmp_path):
    from hf_t2i import AutoModelForTextToImage

    model = mar_model().train()
    tokens = tokens_for(model, batch=4)
    labels = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss = model(image_tokens=tokens, class_labels=labels, generator=torch.Generator().manual_seed(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    model.eval().save_pretrained(tmp_path)
    reloaded = AutoModelForTextToImage.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MarForConditionalGeneration
    assert reloaded.scheduler.config.variance_type == "learned_range"
    assert reloaded.scheduler.config.timestep_spacing == "linspace"
    kwargs = dict(class_labels=labels[:2], num_inference_steps=3, guidance_scale=2.0, guidance_schedule="linear")
    a = model.sample_image_tokens(**kwargs, generator=torch.Generator().manual_seed(0))
    b = reloaded.sample_image_tokens(**kwargs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)


def test_pipeline_class_labels_and_errors():
    model = mar_model("discrete")
    pipe = FluidPipeline(model=model)
    model.config.id2label = dict(enumerate(["cat", "dog", "fox", "owl", "bee"]))
    kwargs = dict(num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0))
    by_name = pipe(class_labels=["dog", "Owl"], num_images_per_prompt=2, **kwargs).images
    kwargs["generator"] = torch.Generator().manual_seed(0)
    by_id = pipe(class_labels=[1, 3], num_images_per_prompt=2, **kwargs).images
    assert by_name.shape == (4, 3, 16, 16) and torch.equal(by_name, by_id)
    with pytest.raises(ValueError, match="unknown class name 'emu'"):
        pipe(class_labels="emu")
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        pipe(class_labels=[7])
    with pytest.raises(ValueError, match="not `prompt`"):
        pipe("a dog")
    with pytest.raises(ValueError, match="pass `class_labels`"):
        model.sample_image_tokens(input_ids=torch.ones(1, 10, dtype=torch.long))


def test_bad_class_conditional_configs():
    with pytest.raises(ValueError, match="random order"):
        mar_config(generation_order="raster")
    with pytest.raises(ValueError, match="buffer_size"):
        mar_config(buffer_size=0)
    with pytest.raises(ValueError, match="class_dropout_prob"):
        mar_config(class_dropout_prob=1.0)
    with pytest.raises(ValueError, match="diffusion_timestep_spacing"):
        mar_config(diffusion_timestep_spacing="even")
    with pytest.raises(ValueError, match="diffusion_head_frequency_dim"):
        mar_config(diffusion_head_frequency_dim=7)


def test_mar_has_its_own_model_type_and_auto_classes_round_trip_it(tmp_path):
    from transformers import AutoConfig, AutoModel

    from hf_t2i import FluidConfig, FluidMAEModel

    config = mar_config()
    assert config.model_type == "mar" and config.is_class_conditional
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MarConfig and loaded.num_classes == 5
    assert type(AutoModel.from_config(loaded)) is FluidMAEModel
    # the text-conditional config refuses MAR's field and names the class to use
    with pytest.raises(ValueError, match="MarConfig"):
        FluidConfig(num_classes=5)
    with pytest.raises(ValueError, match="num_classes"):
        MarConfig(num_classes=None)
