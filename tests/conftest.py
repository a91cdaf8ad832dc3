"""Shared tiny fixtures: a BPE tokenizer trained in code and a DALL-E small enough for a 2-core CPU."""

import os

import pytest
import torch

from hf_t2i import (
    DalleConfig,
    DalleDVAEConfig,
    DalleForConditionalGeneration,
    DallePipeline,
    DalleProcessor,
    T2IImageProcessor,
    train_bpe_tokenizer,
)

from .deprecation_guard import DeprecationGuard, package_dir


package_dir()  # before any test patches the import machinery


# Tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CAPTIONS = [
    "a red circle",
    "two blue squares",
    "a green triangle left of a red square",
    "three yellow circles",
    "a purple square above an orange triangle",
]


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe_tokenizer(CAPTIONS * 20, vocab_size=300, model_max_length=12)


def tiny_dalle_config(text_vocab_size: int, **kwargs) -> DalleConfig:
    vq = DalleDVAEConfig(
        image_size=16, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2], num_blocks_per_group=1
    )
    defaults = dict(
        vq_config=vq,
        text_vocab_size=text_vocab_size,
        text_seq_len=12,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        conv_kernel_size=3,
    )
    defaults.update(kwargs)
    return DalleConfig(**defaults)


@pytest.fixture
def dalle_model(tokenizer):
    torch.manual_seed(0)
    return DalleForConditionalGeneration(tiny_dalle_config(len(tokenizer))).eval()


@pytest.fixture
def dalle_processor(tokenizer):
    return DalleProcessor(T2IImageProcessor(image_size=16), tokenizer)


@pytest.fixture
def dalle_pipeline(dalle_model, dalle_processor):
    pipe = DallePipeline(model=dalle_model, processor=dalle_processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _fail_on_upstream_deprecations())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _fail_on_upstream_deprecations())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    return (yield from _fail_on_upstream_deprecations())


def _fail_on_upstream_deprecations():
    """Run one test phase under a `DeprecationGuard`; fail the phase if hf_t2i triggered an upstream deprecation."""
    with DeprecationGuard() as guard:
        result = yield
    if guard.found:
        pytest.fail(guard.report(), pytrace=False)
    return result
