"""The package's layering, read from the source (every import statement, lazy ones included):

- no model family imports another; the image tokenizers that priors nest come through `models/image_tokenizers.py`;
- the building blocks (`models/`, `layers/`, `generation/`, `checkpoints.py`, ...) never import the layers built on
  them (`pipelines/`, `evaluation/`, `training/`, the CLI);
- a training recipe imports its model, processor and pipeline inside its methods, never at module level."""

import ast
from pathlib import Path

import pytest

import hf_t2i


PACKAGE = Path(hf_t2i.__file__).parent
LOWER = ("models", "layers", "generation", "checkpoints", "configuration_utils", "modeling_utils")
UPPER = ("pipelines", "evaluation", "training", "cli", "export", "auto")
SHARED_TOKENIZERS = "hf_t2i.models.image_tokenizers"
# Imports between families that predate the rule, each to go through `image_tokenizers` when its file is next edited.
KNOWN_CROSS_FAMILY: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = ("hf_t2i", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, top_level_only: bool = False) -> list[str]:
    """The absolute names of the hf_t2i modules that `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = []
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.append(".".join([*base, node.module] if node.module else base))
    return [name for name in names if name == "hf_t2i" or name.startswith("hf_t2i.")]


def sources(*subpackages: str) -> list[Path]:
    paths = []
    for name in subpackages:
        folder, single = PACKAGE / name, PACKAGE / f"{name}.py"
        paths += sorted(folder.rglob("*.py")) if folder.is_dir() else [single]
    return paths


def within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_source_tree_is_found():
    assert len(sources(*LOWER)) > 20 and (PACKAGE / "models" / "image_tokenizers.py").is_file()


def test_model_families_do_not_import_each_other():
    bad = []
    for path in sources("models"):
        name = module_name(path)
        parts = name.split(".")
        if len(parts) < 4:  # hf_t2i.models, hf_t2i.models.image_tokenizers: shared, not a family
            continue
        family = ".".join(parts[:3])
        for imported in imported_modules(path):
            crossing = within(imported, "hf_t2i.models") and not within(imported, family, SHARED_TOKENIZERS)
            if crossing and (name, imported) not in KNOWN_CROSS_FAMILY:
                bad.append(f"{name} imports {imported}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("lower", LOWER)
def test_building_blocks_do_not_import_upward(lower):
    upper = [f"hf_t2i.{name}" for name in UPPER]
    bad = [
        f"{module_name(path)} imports {imported}"
        for path in sources(lower)
        for imported in imported_modules(path)
        if imported == "hf_t2i" or within(imported, *upper)
    ]
    assert not bad, "\n".join(bad)


def test_recipes_import_their_models_lazily():
    bad = [
        f"{module_name(path)} imports {imported} at module level"
        for path in sources("training/recipes")
        if path.name != "__init__.py"
        for imported in imported_modules(path, top_level_only=True)
        if not within(imported, "hf_t2i.training")
    ]
    assert not bad, "\n".join(bad)
