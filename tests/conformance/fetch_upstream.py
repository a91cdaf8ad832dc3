"""Fetch transformers' own common model tests for `make test-conformance`.

The transformers source distribution on the package index ships `tests/test_modeling_common.py` (`ModelTesterMixin`)
and the other top-level common testers, but not the subpackages they import (`tests/generation`, `tests/exporters`,
`tests/utils`). This script downloads the sdist of the *installed* transformers version with pip (the way the pinned
install fetches packages), unpacks its top-level `tests/*.py` into `.conformance/upstream_tests/` at the repository
root, and adds our minimal stand-ins for the missing subpackages (`tests/conformance/standins/`). Nothing upstream is
committed to this repository. Idempotent: a complete copy of the same version is left as it is.

    python tests/conformance/fetch_upstream.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / ".conformance"
PACKAGE = "upstream_tests"
STANDINS = Path(__file__).resolve().parent / "standins"
VERSION_FILE = "TRANSFORMERS_VERSION"


def installed_transformers_version() -> str:
    import transformers

    return transformers.__version__


def _unpack_common_tests(sdist: Path, version: str, destination: Path) -> list[str]:
    """Top-level `tests/*.py` of the sdist (not its model folders) into `destination`; returns the file names."""
    prefix = f"transformers-{version}/tests/"
    names = []
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            relative = member.name[len(prefix) :] if member.name.startswith(prefix) else None
            if not relative or "/" in relative or not relative.endswith(".py") or not member.isfile():
                continue
            source = archive.extractfile(member)
            (destination / relative).write_bytes(source.read())
            names.append(relative)
    if "test_modeling_common.py" not in names:
        raise RuntimeError(f"{sdist.name} has no tests/test_modeling_common.py; cannot run the conformance suite.")
    return sorted(names)


def fetch(target: Path = TARGET) -> Path:
    version = installed_transformers_version()
    package = target / PACKAGE
    if (package / VERSION_FILE).is_file() and (package / VERSION_FILE).read_text().strip() == version:
        return package
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"transformers=={version}",
                "-d",
                download,
            ],
            check=True,
        )
        (sdist,) = Path(download).glob("transformers-*.tar.gz")
        staging = Path(tempfile.mkdtemp(dir=target.parent if target.exists() else None))
        try:
            names = _unpack_common_tests(sdist, version, staging)
            shutil.copytree(STANDINS, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            (staging / "__init__.py").touch()
            (staging / VERSION_FILE).write_text(version + "\n")
            target.mkdir(exist_ok=True)
            shutil.rmtree(package, ignore_errors=True)
            os.replace(staging, package)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"transformers {version}: {len(names)} common test modules in {package}")
    return package


if __name__ == "__main__":
    fetch()
