"""Catch upstream deprecations that hf_t2i's own code triggers, the day upstream deprecates, not the day it removes.

Two channels carry a deprecation:

- Python warnings (`DeprecationWarning`, `PendingDeprecationWarning`, `FutureWarning`): torch, diffusers'
  `deprecate()`, transformers' `deprecate_kwarg`.
- log records of the libraries' own loggers: transformers announces renames with `logger.warning_once(...)`
  ("`past_key_values`/`cache_params` are deprecated. Use `cache` instead."), which no warnings filter sees.

Both are delivered synchronously, inside the call that triggers them, so the guard walks the Python stack at that
moment. A deprecation counts as ours when a frame of the installed `hf_t2i` package is on that stack: hf_t2i called
(directly or through an upstream helper) something that is going away. A deprecation that an upstream library
triggers on its own, with no hf_t2i frame under it (an import-time notice of torch, say), is upstream's business.

`tests/conftest.py` wraps every test phase in a `DeprecationGuard` and fails the test that triggered one;
`tests/test_deprecations.py` checks the guard itself and runs the demo path in a fresh interpreter, where import-time
deprecations show too.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass


DEPRECATION_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# The loggers that announce deprecations of the libraries hf_t2i builds on (their children propagate to them).
UPSTREAM_LOGGERS = ("transformers", "diffusers", "accelerate", "huggingface_hub", "datasets", "torch", "safetensors")
# How those libraries word a deprecation in a log message.
DEPRECATION_WORDS = re.compile(r"deprecat|will be removed|no longer (be )?supported|use .+ instead", re.IGNORECASE)
# Deprecations between two upstream libraries that no hf_t2i call can avoid, each with why. diffusers' DPM-Solver /
# UniPC / Euler `set_timesteps` call `np.array(tensor)`, and numpy 2.4 warns because torch 2.13's `Tensor.__array__`
# takes no `copy` keyword: torch's to fix, and the shipped `fluid` checkpoint samples with DPM-Solver++ by default.
UPSTREAM_ONLY = re.compile(r"__array__ implementation doesn't accept a copy keyword")


@functools.cache
def package_dir() -> str:
    """The folder of the `hf_t2i` that Python imports (found without importing it), with a trailing separator.
    Found once: tests that fake a missing package patch `find_spec`."""
    spec = importlib.util.find_spec("hf_t2i")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("hf_t2i is not importable: install it (`make install`) before running the tests")
    return os.path.realpath(next(iter(spec.submodule_search_locations))) + os.sep


@dataclass(frozen=True)
class Deprecation:
    """One deprecation that hf_t2i triggered: what upstream said, and the innermost hf_t2i line under it."""

    source: str  # "FutureWarning", "DeprecationWarning", ... or "log:<logger name>"
    message: str
    caller: str  # "path/inside/hf_t2i.py:LINE"

    def __str__(self) -> str:
        return f"{self.source} triggered at {self.caller}: {self.message}"


class _LogHandler(logging.Handler):
    def __init__(self, guard: DeprecationGuard):
        super().__init__(level=logging.WARNING)
        self.guard = guard

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if DEPRECATION_WORDS.search(message):
            self.guard._record(f"log:{record.name}", message)


class DeprecationGuard:
    """Context manager collecting in `found` every upstream deprecation triggered from hf_t2i code inside it.

    Warnings of the deprecation categories are always shown to the guard (no "once per location" suppression), and
    are then handed on to whatever recorded them before (pytest's warning summary, an outer `pytest.warns`). Inside a
    `pytest.warns` / `warnings.catch_warnings(record=True)` block opened later, that block owns the warnings; inside
    a nested guard, the nested guard owns them.
    """

    _active: list[DeprecationGuard] = []  # nested guards: the innermost one owns what is triggered inside it

    def __init__(self):
        self.root = package_dir()
        self.found: list[Deprecation] = []
        self._handler = _LogHandler(self)

    def _caller(self) -> str | None:
        frame = sys._getframe(1)
        while frame is not None:
            filename = os.path.realpath(frame.f_code.co_filename)
            if filename.startswith(self.root):
                return f"{os.path.relpath(filename, os.path.dirname(self.root.rstrip(os.sep)))}:{frame.f_lineno}"
            frame = frame.f_back
        return None

    def _record(self, source: str, message: str) -> None:
        if self._active[-1] is not self or UPSTREAM_ONLY.search(message):
            return
        caller = self._caller()
        if caller is not None:
            self.found.append(Deprecation(source, message.strip(), caller))

    def __enter__(self) -> DeprecationGuard:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        for category in DEPRECATION_CATEGORIES:
            warnings.simplefilter("always", category)
        show = warnings._showwarnmsg_impl  # restored by catch_warnings on exit

        def show_and_check(message: warnings.WarningMessage) -> None:
            if issubclass(message.category, DEPRECATION_CATEGORIES):
                self._record(message.category.__name__, str(message.message))
            show(message)

        warnings._showwarnmsg_impl = show_and_check
        shown_by = warnings.showwarning  # a replaced `showwarning` (logging.captureWarnings) bypasses the impl
        if shown_by is not warnings._showwarning_orig:

            def showwarning(message, category, *args, **kwargs):
                if issubclass(category, DEPRECATION_CATEGORIES):
                    self._record(category.__name__, str(message))
                shown_by(message, category, *args, **kwargs)

            warnings.showwarning = showwarning
        # `Logger.warning_once` (transformers) remembers what it said in the whole process: forget it, so a
        # deprecation that an earlier test (or an import) triggered first is still seen here.
        once = getattr(logging.Logger, "warning_once", None)
        if hasattr(once, "cache_clear"):
            once.cache_clear()
        for name in UPSTREAM_LOGGERS:
            logging.getLogger(name).addHandler(self._handler)
        self._active.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        self._active.remove(self)
        for name in UPSTREAM_LOGGERS:
            logging.getLogger(name).removeHandler(self._handler)
        self._warnings.__exit__(*exc_info)

    def report(self) -> str:
        """One line per distinct deprecation, for a test failure."""
        lines = dict.fromkeys(str(found) for found in self.found)
        return "hf_t2i triggered upstream deprecations (update the call to the new API):\n" + "\n".join(
            f"  - {line}" for line in lines
        )
