"""Importers of peers that more than one benchmark script times, each returning the module (or None) and a note.

A missing peer is never an error: the importer returns None and the reason with the install hint, and the scripts
turn it into a skipped row.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types


DALLE_PYTORCH_VERSION = "1.6.6"  # the version tests/conversion and bench_dalle.py's cache fix are checked against
DALLE_PYTORCH_INSTALL = (
    f"pip install --no-deps dalle-pytorch=={DALLE_PYTORCH_VERSION} axial-positional-embedding rotary-embedding-torch "
    "einops"
)


def import_dalle_pytorch() -> tuple[types.ModuleType | None, str]:
    """`dalle_pytorch.dalle_pytorch` without its pretrained-VAE module, or None and the reason.

    `dalle_pytorch/vae.py` imports omegaconf and taming-transformers for the OpenAI and VQGAN VAEs, which a
    `DALLE` on a `DiscreteVAE` never touches; a stand-in module takes its place (and the package `__init__`, which
    imports it, is not run). The note is `"dalle-pytorch <version>"` when it imports.
    """
    spec = importlib.util.find_spec("dalle_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None, f"dalle-pytorch is not installed, so its rows are skipped; to add them: {DALLE_PYTORCH_INSTALL}"
    version = importlib.metadata.version("dalle-pytorch")
    if "dalle_pytorch" not in sys.modules:
        package = types.ModuleType("dalle_pytorch")
        package.__path__ = list(spec.submodule_search_locations)
        vae = types.ModuleType("dalle_pytorch.vae")
        vae.OpenAIDiscreteVAE = vae.VQGanVAE = type("PretrainedVAEStandIn", (), {})
        sys.modules.update({"dalle_pytorch": package, "dalle_pytorch.vae": vae})
    try:
        module = importlib.import_module("dalle_pytorch.dalle_pytorch")
    except ImportError as error:
        return None, f"dalle-pytorch {version} cannot be imported: {error} ({DALLE_PYTORCH_INSTALL})"
    return module, f"dalle-pytorch {version}"
