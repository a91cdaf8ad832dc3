"""transformers' own common model tests (`make test-conformance`), run on hf_t2i's model classes.

The upstream modules are not in this repository: `fetch_upstream.py` unpacks them from the transformers sdist into
`.conformance/upstream_tests/`. Without that copy the modules here are not collected (the default `make test`),
unless `HF_T2I_CONFORMANCE=1` (set by `make test-conformance`), where a missing copy is an error: an empty
conformance run must never pass as green.
"""

import os
import sys
from pathlib import Path


UPSTREAM_ROOT = Path(__file__).resolve().parents[2] / ".conformance"
_available = (UPSTREAM_ROOT / "upstream_tests" / "test_modeling_common.py").is_file()

if _available:
    sys.path.insert(0, str(UPSTREAM_ROOT))
elif os.environ.get("HF_T2I_CONFORMANCE") == "1":
    raise RuntimeError(
        f"transformers' common tests are not in {UPSTREAM_ROOT}: run `python tests/conformance/fetch_upstream.py` "
        "(`make test-conformance` does)."
    )
else:
    collect_ignore_glob = ["test_*.py"]


# Markers the upstream modules put on their tests (transformers registers them in its own conftest, which the sdist's
# top-level tests do not include); `--strict-markers` would otherwise refuse to collect them.
UPSTREAM_MARKERS = (
    "accelerate_tests",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "is_agent_test",
    "is_expert_parallel_test",
    "is_fsdp_test",
    "is_pipeline_test",
    "is_staging_test",
    "is_tensor_parallel_test",
    "is_training_test",
    "order",
    "torch_compile_test",
)


def _register_base_models():
    """Our base models are what `AutoModel` resolves our configs to (registered by `hf_t2i`); upstream tests skip
    transformers' base models (those in `MODEL_MAPPING_NAMES`) where a head is needed, e.g. `test_training` wants a
    loss. Name ours in that table too, as a model inside transformers would be: `AutoModel` itself still resolves
    them through its registered (extra) content first."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    import hf_t2i

    names = ("Dalle", "Parti", "Fluid", "Transfusion", "Muse")
    base_models = [(getattr(hf_t2i, f"{name}Config"), getattr(hf_t2i, f"{name}Model")) for name in names]
    base_models.append((hf_t2i.MarConfig, hf_t2i.FluidMAEModel))  # class-conditional MAR
    for config_class, model_class in base_models:
        MODEL_MAPPING_NAMES.setdefault(config_class.model_type, model_class.__name__)


def pytest_configure(config):
    if _available:
        _register_base_models()
    for marker in UPSTREAM_MARKERS:
        config.addinivalue_line("markers", f"{marker}: transformers' own marker (upstream common tests)")
