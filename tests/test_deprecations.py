"""The deprecation guard (tests/deprecation_guard.py) catches what hf_t2i triggers, and only that; the demo path in a
fresh interpreter (import-time notices included) triggers no upstream deprecation."""

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

from transformers.modeling_outputs import BaseModelOutputWithPast

from .deprecation_guard import DeprecationGuard, package_dir


ROOT = Path(__file__).resolve().parents[1]


def code_at(filename: str, source: str) -> dict:
    """Run `source` as if it were the file `filename`, so that its frames carry that file name."""
    namespace = {"warnings": warnings, "logging": logging, "BaseModelOutputWithPast": BaseModelOutputWithPast}
    exec(compile(textwrap.dedent(source), filename, "exec"), namespace)
    return namespace


INSIDE = os.path.join(package_dir(), "_deprecation_probe.py")  # a file name inside the installed hf_t2i
OUTSIDE = os.path.join(os.path.dirname(package_dir().rstrip(os.sep)), "_not_hf_t2i_probe.py")

CALLERS = """
def warn(category):
    warnings.warn("`old_name` is deprecated, use `new_name` instead", category, stacklevel=2)

def log():
    logging.getLogger("transformers.some_module").warning_once("`old_name` is deprecated. Use `new_name` instead.")

def old_cache_name():
    return BaseModelOutputWithPast(last_hidden_state=None, past_key_values=None)
"""


def test_a_warning_triggered_from_hf_t2i_is_caught_with_its_line():
    probe = code_at(INSIDE, CALLERS)
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        with warnings.catch_warnings(record=True), DeprecationGuard() as guard:  # record: keep pytest's summary quiet
            probe["warn"](category)
        assert [found.source for found in guard.found] == [category.__name__]
        assert guard.found[0].caller == "hf_t2i/_deprecation_probe.py:3"
        assert "old_name" in guard.report()


def test_a_warning_from_elsewhere_is_not_ours():
    probe = code_at(OUTSIDE, CALLERS)
    with warnings.catch_warnings(record=True), DeprecationGuard() as guard:
        probe["warn"](FutureWarning)
        probe["log"]()
    assert guard.found == []


def test_transformers_log_messages_are_caught_every_time_despite_warning_once():
    probe = code_at(INSIDE, CALLERS)
    for _ in range(2):  # `warning_once` would say it once per process
        with DeprecationGuard() as guard:
            probe["log"]()
        assert [found.source for found in guard.found] == ["log:transformers.some_module"]


def test_transformers_cache_rename_is_caught():
    """The deprecation that broke the package: building an output with the pre-5.24 name `past_key_values`."""
    probe = code_at(INSIDE, CALLERS)
    with DeprecationGuard() as guard:
        probe["old_cache_name"]()
    assert len(guard.found) == 1
    assert "`past_key_values`/`cache_params` are deprecated" in guard.found[0].message


def test_plain_warnings_are_not_deprecations():
    probe = code_at(INSIDE, "def warn():\n    warnings.warn('check your input', UserWarning)\n")
    with DeprecationGuard() as guard, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        probe["warn"]()
    assert guard.found == []


DEMO = """
import sys
sys.path.insert(0, {root!r})
from tests.deprecation_guard import DeprecationGuard

with DeprecationGuard() as guard:
    import hf_t2i
    from hf_t2i.cli import main

    main(["generate", "a red circle", "--output", {output!r}, "--seed", "0"])
print(guard.report() if guard.found else "no deprecation")
"""


def test_demo_in_a_fresh_interpreter_triggers_no_deprecation(tmp_path):
    """`make demo`'s path, from `import hf_t2i` on: import-time notices only show in a new process."""
    script = DEMO.format(root=str(ROOT), output=str(tmp_path / "out.png"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "no deprecation", result.stdout
    assert (tmp_path / "out.png").is_file()
