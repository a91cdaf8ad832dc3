"""transformers' `ModelTesterMixin` (its `tests/test_modeling_common.py`) against every hf_t2i `PreTrainedModel`.

Each class below is the upstream mixin plus a model tester built from the tiny models and inputs of our own prior
tests (tests/models/*: `build_model` / `forward_inputs`), so that the two suites check the same models. A test that
cannot apply to a model is skipped with the reason in `SKIPS`; nothing is skipped for failing.
"""

from __future__ import annotations

import inspect
import unittest

import pytest
from upstream_tests.test_modeling_common import ModelTesterMixin

from hf_t2i import (
    DalleForConditionalGeneration,
    DalleModel,
    FluidForConditionalGeneration,
    FluidModel,
    MuseForConditionalGeneration,
    MuseModel,
    PartiForConditionalGeneration,
    PartiModel,
    TransfusionForConditionalGeneration,
    TransfusionModel,
)

# modules, not classes: importing the test classes would collect our own prior tests here a second time
from ..models import test_dalle, test_fluid, test_muse, test_parti, test_transfusion


pytestmark = pytest.mark.conformance


class PriorModelTester:
    """What `ModelTesterMixin` reads from `self.model_tester`, from one of our prior tests' tiny model and inputs.

    The batch is 7 rows: upstream's eager-vs-SDPA test pads smaller batches to 7 with random ids, which are not valid
    image tokens at DALL-E's image positions.
    """

    def __init__(self, parent, prior_test, batch_size: int = 7):
        self.parent = parent
        model = prior_test.build_model()
        self.config = model.config
        self.inputs = prior_test.forward_inputs(model, list(range(batch_size)))
        self.batch_size = batch_size
        self.is_training = True
        self.hidden_size = self.config.hidden_size
        self.num_hidden_layers = self.config.num_hidden_layers
        self.num_attention_heads = self.config.num_attention_heads
        self.seq_length = self.inputs["input_ids"].shape[1]

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
        self.model_tester = PriorModelTester(self, self.prior_test())

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


class FluidConformanceTest(PriorConformance, unittest.TestCase):
    all_model_classes = (FluidModel, FluidForConditionalGeneration)
    prior_test = test_fluid.TestFluidContinuousRandomPrior


class TransfusionConformanceTest(PriorConformance, unittest.TestCase):
    all_model_classes = (TransfusionModel, TransfusionForConditionalGeneration)
    prior_test = test_transfusion.TestTransfusionPriorLinearDDPM


class MuseConformanceTest(PriorConformance, unittest.TestCase):
    all_model_classes = (MuseModel, MuseForConditionalGeneration)
    prior_test = test_muse.TestMusePrior
