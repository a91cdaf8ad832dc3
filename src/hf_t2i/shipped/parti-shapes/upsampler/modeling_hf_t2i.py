"""Loads this model's classes from the installed hf_t2i package; written by hf_t2i's `save_pretrained`.

This file holds no model code. It lets

    transformers.AutoModel.from_pretrained(..., trust_remote_code=True)

find hf_t2i's classes in a program that does not import hf_t2i.
"""

import importlib


# imported by name: the remote-code import checks of transformers and diffusers would otherwise suggest
# `pip install hf_t2i`, and hf_t2i is not on PyPI
try:
    hf_t2i = importlib.import_module("hf_t2i")
except ModuleNotFoundError as error:
    if error.name != "hf_t2i":
        raise
    raise ImportError(
        "This checkpoint was saved with hf_t2i, which is not installed. hf_t2i is not on PyPI: install it from a "
        "clone of its repository, then load the checkpoint again:\n    pip install -e ./hf_t2i  # a clone of the hf_t2i repository"
    ) from error

ViTVQGANUpsampler = hf_t2i.ViTVQGANUpsampler
