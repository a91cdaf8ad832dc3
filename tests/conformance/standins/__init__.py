"""Minimal stand-ins, written for hf_t2i, for the subpackages of transformers' `tests/` that its sdist does not ship
but `test_modeling_common.py` / `test_configuration_common.py` import. They are copied next to the upstream common
tests by `fetch_upstream.py`; this file itself is not copied (the target package has its own `__init__.py`)."""
