"""Print pip constraints that pin every direct requirement of setup.py (install + the `dev` extra) at its lower bound.

`make test-lowest` installs with them, so the ranges in setup.py are tested at the bottom as well as at the top
(`make test-latest`). setup.py is read, not run. torch is left out: the Makefile installs it first at TORCH_VERSION
(the CPU build), since an old torch from the package index would be a multi-GB CUDA build.
"""

import ast
import re
from pathlib import Path


def requirement_lists(setup_py: Path) -> list[str]:
    tree = ast.parse(setup_py.read_text(encoding="utf-8"))
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return list(values["INSTALL_REQUIRES"]) + list(values["EXTRAS"]["dev"])


def main() -> None:
    for requirement in requirement_lists(Path(__file__).resolve().parents[1] / "setup.py"):
        match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:\[.*\])?\s*.*>=\s*([0-9][^,;\s]*)", requirement)
        if match and match[1] != "torch":
            print(f"{match[1]}=={match[2]}")


if __name__ == "__main__":
    main()
