"""transformers' `ModelTesterMixin` (its `tests/test_modeling_common.py`) against hf_t2i's `PreTrainedModel`s: the base
and head classes of the five priors and of class-conditional MAR, and the image tokenizers.

Each class below is the upstream mixin plus a model tester built from the tiny models and inputs of our own tests
(tests/models/*: the priors' `build_model` / `forward_inputs`, the tokenizers' tiny configs), so that the two suites
check the same models. A test that cannot apply to a model is skipped with its reason (`skip` below); nothing is
skipped for failing.
"""

from __future__ import annotations

import inspect
import unittest

import pytest
import torch
from upstream_tests.test_modeling_common import ModelTesterMixin

from hf_t2i import (
    DalleDVAE,
    DalleForConditionalGeneration,
    DalleModel,
    FluidForConditionalGeneration,
    FluidMAEModel,
    FluidModel,
    MarForConditionalGeneration,
    MuseForConditionalGeneration,
    MuseModel,
    PartiForConditionalGeneration,
    PartiModel,
    TransfusionForConditionalGeneration,
    TransfusionModel,
    ViTVQGAN,
    ViTVQGANConfig,
    ViTVQGANUpsampler,
    ViTVQGANUpsamplerConfig,
)

# modules, not classes: importing the test classes would collect our own prior tests here a second time
from ..models import (
    test_dalle,
    test_dalle_dvae,
    test_fluid,
    test_fluid_class_conditional,
    test_muse,
    test_parti,
    test_transfusion,
    test_vit_vqgan,
)


pytestmark = pytest.mark.conformance


def skip(reason: str):
    """Replace an upstream test that cannot apply to a model by a skip with the reason."""

    def skipped(self, *args, **kwargs):
        self.skipTest(reason)

    return skipped


class PriorModelTester:
    """What `ModelTesterMixin` reads from `self.model_tester`, from one of our prior tests' tiny model and inputs.

    The batch is 7 rows: upstream's eager-vs-SDPA test pads smaller batches to 7 with random ids, which are not valid
    image tokens at DALL-E's image positions. Sequence lengths are those of the attention the upstream checks read
    (`outputs.attentions` / `hidden_states`, or the encoder's and decoder's of an encoder-decoder model).
    """

    def __init__(self, parent: PriorConformance, batch_size: int = 7):
        self.parent = parent
        model = parent.build_model()
        self.config = model.config
        self.inputs = parent.forward_inputs(model, list(range(batch_size)))
        self.batch_size = batch_size
        self.is_training = True
        self.hidden_size = self.config.hidden_size
        self.num_hidden_layers = self.config.num_hidden_layers
        self.num_attention_heads = self.config.num_attention_heads
        for name, value in parent.model_tester_attributes(model, self.inputs).items():
            setattr(self, name, value)

    def get_config(self):
        """A fresh config, as a model tester builds it: no attention implementation chosen yet."""
        return type(self.config).from_dict(self.config.to_dict())

    def prepare_config_and_inputs_for_common(self):
        inputs = {key: value for key, value in self.inputs.items() if key not in ("labels", "use_cache")}
        return self.get_config(), inputs


class PriorConformance(ModelTesterMixin):
    prior_test: type
    # `generate()` of DALL-E / Parti / Transfusion is checked by our own suite (tests/models/, tests/generation/):
    # transformers' `GenerationTesterMixin` is not in its sdist, so no upstream generate test runs here.
    all_generative_model_classes = ()
    test_resize_embeddings = False  # image and text vocabularies are fixed by the tokenizers the model was built for
    test_torch_exportable = False

    def setUp(self):
        self.prior = self.prior_test()
        self.model_tester = PriorModelTester(self)

    # -- family hooks ------------------------------------------------------------------------------------------------
    def build_model(self):
        return self.prior.build_model()

    def forward_inputs(self, model, rows):
        return self.prior.forward_inputs(model, rows)

    def model_tester_attributes(self, model, inputs) -> dict[str, int]:
        """The model tester's sizes that upstream tests read besides the config's: the sequence lengths of the
        attention weights and hidden states they check (`seq_length`, `encoder_seq_length`, ...) and the like."""
        return {"seq_length": inputs["input_ids"].shape[1]}

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """Only the inputs `model_class.forward` takes (a base model has no `labels`); labels from the prior test."""
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=False)
        if return_labels and "labels" in self.model_tester.inputs:
            inputs["labels"] = self.model_tester.inputs["labels"]
        accepted = inspect.signature(model_class.forward).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
            return inputs
        return {key: value for key, value in inputs.items() if key in accepted}


class DalleConformanceTest(PriorConformance, unittest.TestCase):
    all_model_classes = (DalleModel, DalleForConditionalGeneration)
    prior_test = test_dalle.TestDallePrior


class PartiConformanceTest(PriorConformance, unittest.TestCase):
    all_model_classes = (PartiModel, PartiForConditionalGeneration)
    prior_test = test_parti.TestPartiPrior
    is_encoder_decoder = True

    def build_model(self):
        # as many text-encoder blocks as decoder blocks: upstream counts both with `num_hidden_layers`
        return self.prior.build_model(encoder_layers=2)

    def forward_inputs(self, model, rows):
        inputs = self.prior.forward_inputs(model, rows)
        return {**inputs, "decoder_input_ids": model.decoder_inputs(inputs["labels"])}

    def model_tester_attributes(self, model, inputs):
        text, image = inputs["input_ids"].shape[1], inputs["decoder_input_ids"].shape[1]
        return {"seq_length": text, "encoder_seq_length": text, "decoder_seq_length": image}


class _ImagePositionConformance(PriorConformance):
    """Fluid and Muse: the backbone runs over the N image positions and reads the caption through cross-attention,
    so its attention weights and hidden states are (.., N, N) and (B, N, C)."""

    image_inputs: tuple[str, ...]

    @property
    def additional_model_inputs(self):  # what upstream's eager-vs-SDPA test passes besides `input_ids`
        return ["attention_mask", *self.image_inputs]

    def model_tester_attributes(self, model, inputs):
        # two kinds of hidden states in the outputs: the backbone's and the text encoder's
        return {"seq_length": model.config.num_image_tokens, "num_hidden_states_types": 2}

    test_inputs_embeds = test_inputs_embeds_matches_input_ids = skip(
        "`inputs_embeds` replaces the embedded image tokens, not `input_ids` (the caption, read by the text encoder)"
    )


class FluidConformanceTest(_ImagePositionConformance, unittest.TestCase):
    all_model_classes = (FluidModel, FluidForConditionalGeneration)
    prior_test = test_fluid.TestFluidContinuousRandomPrior
    image_inputs = ("image_tokens", "mask")

    test_model_get_set_embeddings = skip(
        "continuous image tokens (VAE latents) are projected by an nn.Linear: there is no vocabulary to embed"
    )


class TransfusionConformanceTest(PriorConformance, unittest.TestCase):
    all_model_classes = (TransfusionModel, TransfusionForConditionalGeneration)
    prior_test = test_transfusion.TestTransfusionPriorLinearDDPM
    # what upstream's eager-vs-SDPA test passes besides `input_ids`: each row holds an image run, which needs its latent
    additional_model_inputs = ["attention_mask", "image_latents", "timesteps"]

    def model_tester_attributes(self, model, inputs):
        # the same eager-vs-SDPA test passes an MAE-style `noise` (batch, patches per image) to any model whose forward
        # takes `noise`; ours is the training noise, read only with `labels` (which that test does not pass)
        config = model.config
        patch_size = config.image_size // config.patch_grid_size
        return {
            **super().model_tester_attributes(model, inputs),
            "image_size": config.image_size,
            "patch_size": patch_size,
        }


class MuseConformanceTest(_ImagePositionConformance, unittest.TestCase):
    all_model_classes = (MuseModel, MuseForConditionalGeneration)
    prior_test = test_muse.TestMusePrior
    image_inputs = ("image_token_ids", "mask")


class MarConformanceTest(PriorConformance, unittest.TestCase):
    """Class-conditional MAR: the condition is `class_labels` (B,), copied into the buffer positions the MAE encoder
    reads with the visible image tokens; the decoder runs over the buffer and all N image positions, so its attention
    weights and hidden states are (.., P + N, P + N) and (B, P + N, C)."""

    all_model_classes = (FluidMAEModel, MarForConditionalGeneration)
    prior_test = test_fluid_class_conditional.TestMarPrior
    additional_model_inputs = ["image_tokens", "mask"]  # what upstream's eager-vs-SDPA test passes besides the labels

    def build_model(self):
        # class dropout on about half the rows: upstream's training tests want a gradient in every parameter, and the
        # null class gets one only from dropped rows (the default 0.1 may drop none of the 7). The draws come from the
        # seeded `generator` of the inputs, which the gradient-checkpointing test reuses for its second run: each run
        # must both drop and keep rows for the two to have gradients in the same parameters
        return self.prior.build_model(class_dropout_prob=0.5)

    def model_tester_attributes(self, model, inputs):
        # two kinds of hidden states in the outputs: the decoder's and the MAE encoder's
        config = model.config
        return {"seq_length": config.buffer_size + config.num_image_tokens, "num_hidden_states_types": 2}

    test_model_get_set_embeddings = FluidConformanceTest.test_model_get_set_embeddings  # continuous tokens, as Fluid's


# -- image tokenizers -------------------------------------------------------------------------------------------------
class ImageTokenizerModelTester:
    """What `ModelTesterMixin` reads from `self.model_tester` for an image tokenizer: its tiny config (that of our own
    tokenizer tests) and a batch of inputs."""

    def __init__(self, parent: ImageTokenizerConformance, batch_size: int = 3):
        self.parent = parent
        self.config = parent.get_config()
        self.batch_size = batch_size
        self.inputs = parent.forward_inputs(self.config, batch_size)
        self.is_training = True
        self.hidden_size = self.config.hidden_size
        self.num_hidden_layers = getattr(self.config, "num_hidden_layers", 0)
        self.num_attention_heads = getattr(self.config, "num_attention_heads", 0)

    def get_config(self):
        return type(self.config).from_dict(self.config.to_dict())

    def prepare_config_and_inputs_for_common(self):
        return self.get_config(), dict(self.inputs)


def pixels(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class ImageTokenizerConformance(ModelTesterMixin):
    """transformers' own VQ tokenizers (e.g. `JanusVQVAE`) are tested the same way: their outputs are codes, pixels
    and losses, with no per-layer attention weights or hidden states, and no vocabulary embedded from input ids."""

    all_generative_model_classes = ()
    has_attentions = False
    test_resize_embeddings = False
    test_torch_exportable = False

    def setUp(self):
        self.model_tester = ImageTokenizerModelTester(self)

    def get_config(self):
        raise NotImplementedError

    def forward_inputs(self, config, batch_size: int) -> dict:
        return {"pixel_values": pixels(batch_size, config.image_size)}

    test_hidden_states_output = skip(
        "an image tokenizer outputs codes, pixels and losses, not per-layer hidden states"
    )
    test_model_get_set_embeddings = skip("an image tokenizer embeds pixels, not ids: it has no input embeddings")
    test_model_outputs_equivalence = test_retain_grad_hidden_states_attentions = skip(
        "an image tokenizer has no `output_hidden_states`: it outputs codes, pixels and losses"
    )


class DalleDVAEConformanceTest(ImageTokenizerConformance, unittest.TestCase):
    all_model_classes = (DalleDVAE,)

    def get_config(self):
        return test_dalle_dvae.tiny().config

    def forward_inputs(self, config, batch_size):
        # the Gumbel noise of the relaxation comes from the generator (copied for each call by the upstream tests)
        return {**super().forward_inputs(config, batch_size), "generator": torch.Generator().manual_seed(0)}

    test_batching_equivalence = skip(
        "the Gumbel-softmax relaxation draws one noise tensor for the whole batch: a row's sample depends on its place"
    )


class ViTVQGANConformanceTest(ImageTokenizerConformance, unittest.TestCase):
    all_model_classes = (ViTVQGAN,)

    def get_config(self):
        return ViTVQGANConfig(**test_vit_vqgan.TINY)


class ViTVQGANUpsamplerConformanceTest(ImageTokenizerConformance, unittest.TestCase):
    all_model_classes = (ViTVQGANUpsampler,)

    def get_config(self):
        return ViTVQGANUpsamplerConfig.from_tokenizer_config(
            ViTVQGANConfig(**test_vit_vqgan.TINY),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
        )

    def forward_inputs(self, config, batch_size):
        codes = torch.randint(
            0, config.vocab_size, (batch_size, config.grid_size**2), generator=torch.Generator().manual_seed(0)
        )
        return {"image_token_ids": codes, "pixel_values": pixels(batch_size, config.output_size)}
