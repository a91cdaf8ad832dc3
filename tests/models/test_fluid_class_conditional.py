"""Class-conditional Fluid with MAR's masked encoder-decoder (`num_classes`) and the MAR head options."""

import pytest
import torch

from hf_t2i import FluidMAEModel, FluidPipeline, MarConfig, MarForConditionalGeneration
from hf_t2i.generation.masked import cosine_training_mask
from hf_t2i.layers.diffusion_head import DiffusionHead, build_ddpm_scheduler, diffusion_loss

from .prior_tester import PriorTesterMixin, seeded
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


def test_class_conditional_training_lowers_the_loss():
    model = mar_model().train()
    # MAR's head options reach the DDPM schedule (the save / load round trip is TestMarPrior's)
    assert model.scheduler.config.variance_type == "learned_range"
    assert model.scheduler.config.timestep_spacing == "linspace"
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


def test_mar_has_its_own_model_type():
    from hf_t2i import FluidConfig

    config = mar_config()
    assert config.model_type == "mar" and config.is_class_conditional
    # (the Auto classes' round trip of it is TestMarPrior's)
    # the text-conditional config refuses MAR's field and names the class to use
    with pytest.raises(ValueError, match="MarConfig"):
        FluidConfig(num_classes=5)
    with pytest.raises(ValueError, match="num_classes"):
        MarConfig(num_classes=None)


def test_class_labels_must_match_the_image_batch():
    model = mar_model()
    with pytest.raises(ValueError, match="class_labels"):
        model(image_tokens=tokens_for(model, batch=2), class_labels=torch.tensor([0, 1, 2]))


# -- the shared prior behaviour ----------------------------------------------------------------------------------------
class TestMarPrior(PriorTesterMixin):
    """The shared prior behaviour (tests/models/prior_tester.py) on class-conditional MAR (4x4 tokens, 5 classes, a
    1-layer encoder and 2-layer decoder of width 32), continuous tokens; `TestMarDiscretePrior` runs it on discrete
    tokens. The condition is `class_labels`; guidance's unconditional branch is the learned null class, so there is no
    negative input. No KV cache (random order only), and the orders and the head's noise are drawn for the whole
    batch, so the mixin's cache and batch == singles sampling checks skip themselves."""

    model_class = MarForConditionalGeneration
    base_model_class = FluidMAEModel
    sampling_kwargs = {"num_inference_steps": 4}
    negative_argument = None  # guidance's unconditional rows are the null class: nothing to pass
    image_size = 16
    token_type = "continuous"

    def build_model(self, **config_overrides):
        model = mar_model(self.token_type, **config_overrides)
        # heads that depend on their input (at init the condition barely moves the samples of a tiny model)
        head = model.diffusion_head.output if model.diffusion_head is not None else model.lm_head
        torch.nn.init.normal_(head.weight, std=0.2 if model.diffusion_head is not None else 0.5)
        return model

    @staticmethod
    def labels(rows):
        """(B,) class ids, distinct for rows 0..4: 1, 3, 0, 2, 4."""
        return torch.tensor([(2 * row + 1) % 5 for row in rows])

    def forward_inputs(self, model, rows):
        config = model.config
        n = config.num_image_tokens
        if config.is_continuous:
            image = [torch.randn(1, n, config.token_dim, generator=seeded(row)) for row in rows]
        else:
            image = [torch.randint(0, config.image_vocab_size, (1, n), generator=seeded(row)) for row in rows]
        # per-row masks with different numbers of visible tokens: the encoder pads the batch
        mask = torch.cat([cosine_training_mask(1, n, seeded(200 + row), "cpu") for row in rows])
        return {
            "class_labels": self.labels(rows),
            "image_tokens": torch.cat(image),
            "mask": mask,
            "generator": seeded(0),
        }

    def forward_outputs(self, model, inputs):
        out = model(**inputs)
        outputs = {"loss": out.loss, "last_hidden_state": out.last_hidden_state}
        if out.logits is not None:
            outputs["logits"] = out.logits
        return outputs

    def generation_inputs(self, model, rows):
        return {"class_labels": self.labels(rows)}

    def negative_inputs(self, model):
        return {}

    def default_negative_inputs(self, model):
        return {}  # the null class is the only unconditional branch (see test_guidance_uses_the_null_class)

    def sample_shape(self, model, batch):
        config = model.config
        return (batch, config.num_image_tokens) + ((config.token_dim,) if config.is_continuous else ())

    # deterministic_kwargs: None (the random orders, and the head's noise, are drawn for the whole batch)

    def guided_first_step(self, model, inputs, guidance_scale, scale, generator):
        settings = model.check_sampling(guidance_scale=guidance_scale, **self.sampling_kwargs)
        state = model.prepare_image_generation(**inputs, settings=settings, generator=generator)
        decoder = model.start_image_tokens(state, num_steps=settings.num_steps)
        positions, _ = decoder.plan(0)
        if model.config.is_continuous:  # the step draws the tokens with the head, guided at `scale`: (B, M, D)
            return model.image_generation_step(state, decoder.tokens, decoder.known, positions, scale)
        # discrete: a 32-code draw of the tiny model often ignores the guidance, so also return the guided logits
        # the step hands to its sampler
        seen, sampler = [], state.sampler
        state.sampler = lambda logits: seen.append(logits) or sampler(logits)
        drawn = model.image_generation_step(state, decoder.tokens, decoder.known, positions, scale)  # (B, M)
        return torch.cat([drawn.float(), seen[0].view(drawn.shape[0], -1)], dim=1)  # (B, M + M * V)

    # cached_and_uncached: none (random order only, no KV cache)

    def bad_sampling_inputs(self, model):
        config = model.config
        cases = [
            ({"class_labels": None}, "class_labels"),
            ({"class_labels": torch.tensor([config.num_classes])}, "class_labels"),
            ({"class_labels": torch.tensor([-1])}, "class_labels"),
            ({"class_labels": torch.tensor([[1]])}, "class_labels"),
            ({"class_labels": torch.tensor([1.0])}, "class_labels"),
            ({"input_ids": torch.ones(1, 10, dtype=torch.long)}, "pass `class_labels`, not `input_ids`"),
            ({"negative_input_ids": torch.zeros(1, 10, dtype=torch.long)}, "pass `class_labels`"),
            ({"guidance_schedule": "cosine"}, "guidance_schedule"),
            ({"num_inference_steps": config.num_image_tokens + 1}, "num_inference_steps"),
            ({"num_inference_steps": 0}, "num_inference_steps"),
        ]
        if config.is_continuous:
            cases += [
                ({"top_k": 4}, "top_k"),
                ({"do_sample": False}, "do_sample"),
                ({"temperature": -1.0}, "temperature"),
                ({"num_diffusion_steps": 0}, "num_diffusion_steps"),
                ({"num_diffusion_steps": config.num_train_timesteps + 1}, "num_diffusion_steps"),
            ]
        else:
            cases += [({"temperature": 0}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p")]
        return cases

    def bad_forward_inputs(self, model, inputs):
        config, image, labels = model.config, inputs["image_tokens"], inputs["class_labels"]
        cases = [
            ({"image_tokens": None}, "image_tokens"),
            ({"image_tokens": image[:, :8]}, "image_tokens"),
            ({"class_labels": None}, "class_labels"),
            ({"class_labels": torch.full_like(labels, config.num_classes)}, "class_labels"),
            ({"class_labels": labels.float()}, "class_labels"),
            ({"class_labels": labels[:, None]}, "class_labels"),
            ({"input_ids": torch.ones(2, 10, dtype=torch.long)}, "pass `class_labels`, not `input_ids`"),
            ({"mask": inputs["mask"].float()}, "mask"),
            ({"mask": inputs["mask"][:, :8]}, "mask"),
        ]
        if config.is_continuous:
            cases.append(({"image_tokens": image.argmax(-1)}, "image_tokens"))
        else:
            cases.append(({"image_tokens": torch.full_like(image, config.image_vocab_size)}, "ids must be in"))
        return cases

    # -- MAR specifics of the mixin's themes --------------------------------------------------------------------------
    def test_guidance_uses_the_null_class(self, model):
        """The doubled batch's unconditional rows are the learned null class, whatever the labels."""
        settings = model.check_sampling(guidance_scale=2.0, **self.sampling_kwargs)
        state = model.prepare_image_generation(**self.generation_inputs(model, [0, 1]), settings=settings)
        null = model.model.null_class_embedding
        assert state.class_embeds.shape == (4, model.config.hidden_size)
        assert torch.equal(state.class_embeds[:2], model.model.class_embeddings(self.labels([0, 1])))
        assert torch.equal(state.class_embeds[2:], null.expand(2, -1))
        assert not torch.equal(null, torch.zeros_like(null))


class TestMarDiscretePrior(TestMarPrior):
    token_type = "discrete"
