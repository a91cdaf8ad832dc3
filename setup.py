"""Packaging for hf_t2i: autoregressive and unified text-to-image models for the Hugging Face ecosystem."""

from setuptools import find_packages, setup

# torch is listed without a build tag on purpose: install the CPU build first (`make install` does) so that
# pip does not resolve a multi-GB CUDA wheel on machines without a GPU.
# Honest ranges for people who install hf_t2i into their own environment: `make test-lowest` tests the lower bounds,
# `make test-latest` the newest releases; `make install` uses the tested pins of constraints.txt.
# transformers >= 5.24: the KV cache is `cache` (5.24 renamed `past_key_values` in forward kwargs and outputs);
# tokenizers, safetensors and huggingface_hub bounds are the ones transformers 5.24 itself needs; numpy >= 2.0 because
# the pyarrow that datasets pulls in today refuses older numpy (pyarrow does not declare it); torch >= 2.6 is what
# transformers and diffusers require (test-lowest keeps torch at TORCH_VERSION: older builds are multi-GB downloads);
# scipy >= 1.13 and tensorboard >= 2.18 are the first releases that work beside numpy 2.
# gradio serves `hf-t2i demo` and the Space (spaces/hf-t2i-demo): 6.0 is the first release with the event API it uses
# (`api_visibility`); selenium drives headless Chromium in the demo's browser test (`make test-slow`). Both are in
# `dev` so that `make test` runs the demo's own tests.
INSTALL_REQUIRES = [
    "torch>=2.6",
    "transformers>=5.24,<6",
    "diffusers>=0.40",
    "accelerate>=1.10",
    "datasets>=4.0",
    "tokenizers>=0.23.1",
    "safetensors>=0.8",
    "huggingface_hub>=1.31",
    "numpy>=2.0",
    "pillow>=10.0",
    "tqdm>=4.66.3",
]

EXTRAS = {
    "train": ["tensorboard>=2.18"],
    "eval": ["torchmetrics>=1.4", "scipy>=1.13"],
    "convert": [],
    "demo": ["gradio>=6.0,<7"],
    "dev": [
        "pytest>=8.0",
        "ruff>=0.6",
        "tensorboard>=2.18",
        "torchmetrics>=1.4",
        "scipy>=1.13",
        "parameterized>=0.9",
        "gradio>=6.0,<7",
        "selenium>=4.11",
    ],
}

setup(
    name="hf_t2i",
    version="0.1.0.dev0",
    description="DALL-E, Parti, Fluid and Transfusion as first-class transformers / diffusers citizens",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"hf_t2i": ["shipped/*/*", "shipped/*/*/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["hf-t2i=hf_t2i.cli:main"]},
)
