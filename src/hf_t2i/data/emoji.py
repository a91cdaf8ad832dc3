"""The `emoji` dataset: emoji images in several art styles with captions from emojibase names and keywords.

Sources (npm packages with pinned versions, installed once into a cache directory outside the repository):

- `emoji-datasource-twitter@16.0.0` (Twemoji, CC-BY 4.0) and `emoji-datasource-google@16.0.0` (Noto, Apache-2.0):
  64x64 RGBA PNGs at `img/<set>/64/<image>` and the metadata `emoji.json` (`unified` codepoints, skin variations).
- `emojibase-data@17.0.0`: `en/data.json` with an English `label` and keyword `tags` per `hexcode`.

The two are joined by codepoint, ignoring the variation selector FE0F (emojibase writes "2764", the datasource
"2764-FE0F"). Captions are lower case: the label, up to 3 tags that are not already words of the label, and the
style, e.g. "nerd face, brainy, clever, expert, in google style".
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from ._images import default_cache_dir, encode_png, flatten_on_white


NPM_PACKAGES = {
    "emoji-datasource-twitter": "16.0.0",
    "emoji-datasource-google": "16.0.0",
    "emojibase-data": "17.0.0",
}
STYLES = ("twitter", "google")
MAX_TAGS = 3

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "style": datasets.Value("string"),
        "label": datasets.Value("string"),
        "codepoint": datasets.Value("string"),
        "concept": datasets.Value("string"),
    }
)


def _installed(node_modules: Path) -> bool:
    for name, version in NPM_PACKAGES.items():
        manifest = node_modules / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text(encoding="utf-8")).get("version") != version:
            return False
    return True


def install_emoji_packages(cache_dir: str | Path | None = None) -> Path:
    """Install the pinned emoji npm packages into `<cache_dir>/npm` (skipped when already there).

    Args:
        cache_dir: cache root; default `$HF_T2I_CACHE` or `~/.cache/hf_t2i`. Keep it outside the repository.

    Returns:
        The `node_modules` directory holding the three packages.
    """
    npm_dir = Path(cache_dir or default_cache_dir()).expanduser() / "npm"
    node_modules = npm_dir / "node_modules"
    if _installed(node_modules):
        return node_modules
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "`npm` is not on PATH, so the emoji packages cannot be installed. Install Node.js/npm "
            "(e.g. `apt-get install npm`), or install them yourself with "
            f"`npm install --no-save --prefix {npm_dir} "
            + " ".join(f"{n}@{v}" for n, v in NPM_PACKAGES.items())
            + "`."
        )
    npm_dir.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--no-save", "--prefix", str(npm_dir)] + [f"{n}@{v}" for n, v in NPM_PACKAGES.items()]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not _installed(node_modules):
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return node_modules


def _normalize(codepoint: str) -> str:
    """Join key: upper-case codepoints without the emoji variation selector FE0F."""
    return "-".join(part for part in codepoint.upper().split("-") if part != "FE0F")


def _emojibase_index(node_modules: Path) -> dict[str, dict]:
    """Normalised hexcode -> {"label", "tags"} for every emoji and skin-tone variant (variants inherit tags)."""
    entries = json.loads((node_modules / "emojibase-data" / "en" / "data.json").read_text(encoding="utf-8"))
    index = {}
    for entry in entries:
        tags = entry.get("tags") or []
        index[_normalize(entry["hexcode"])] = {"label": entry["label"], "tags": tags}
        for skin in entry.get("skins") or []:
            index[_normalize(skin["hexcode"])] = {"label": skin["label"], "tags": skin.get("tags") or tags}
    return index


def make_caption(label: str, tags: Sequence[str], style: str, max_tags: int = MAX_TAGS) -> str:
    """'nerd face, brainy, clever, expert, in google style': label, new tags (in emojibase order), style."""
    label = label.lower()
    label_words = set(label.replace(":", " ").replace(",", " ").split())
    extra = [t.lower() for t in tags if t.lower() not in label_words][:max_tags]
    return ", ".join([label, *extra, f"in {style} style"])


def _records(node_modules: Path, style: str, include_skin_tones: bool) -> list[dict]:
    """One record per emoji of `style` with an image file: image path, label, tags, codepoint, concept."""
    package = node_modules / f"emoji-datasource-{style}"
    emoji = json.loads((package / "emoji.json").read_text(encoding="utf-8"))
    names = _emojibase_index(node_modules)
    records = []
    for entry in sorted(emoji, key=lambda e: e.get("sort_order", 0)):
        concept = entry["unified"].lower()
        variants = [entry]
        if include_skin_tones:
            variants += list((entry.get("skin_variations") or {}).values())
        for variant in variants:
            path = package / "img" / style / "64" / variant["image"]
            meta = names.get(_normalize(variant["unified"]))
            if meta is None or not variant.get(f"has_img_{style}", True) or not path.is_file():
                continue
            records.append({"path": path, "codepoint": variant["unified"].lower(), "concept": concept, **meta})
    return records


def build_emoji_dataset(
    cache_dir: str | Path | None = None,
    styles: Sequence[str] = STYLES,
    image_size: int = 64,
    include_skin_tones: bool = False,
) -> datasets.Dataset:
    """Build the emoji text-image dataset (installs the npm packages on first use).

    Args:
        cache_dir: where the npm packages live (`<cache_dir>/npm`); default `$HF_T2I_CACHE` or `~/.cache/hf_t2i`.
        styles: art styles, any of `STYLES`.
        image_size: side of the RGB output images; the 64 px sources are resized (Lanczos) when it differs.
        include_skin_tones: also add the skin-tone variants (about doubles the rows, same concepts).

    Returns:
        Dataset with columns image (RGB on white), text, style, label, codepoint, concept (base codepoint shared
        by an emoji and its skin-tone variants; `split_by_concept` splits on it).
    """
    styles = (styles,) if isinstance(styles, str) else tuple(styles)
    if not styles or any(s not in STYLES for s in styles):
        raise ValueError(f"styles={styles!r} must be a non-empty subset of {STYLES}.")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive int.")
    node_modules = install_emoji_packages(cache_dir)
    columns = {name: [] for name in FEATURES}
    for style in styles:
        for record in _records(node_modules, style, include_skin_tones):
            with Image.open(record["path"]) as source:
                image = flatten_on_white(source)
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
            columns["image"].append(encode_png(image))
            columns["text"].append(make_caption(record["label"], record["tags"], style))
            columns["style"].append(style)
            columns["label"].append(record["label"].lower())
            columns["codepoint"].append(record["codepoint"])
            columns["concept"].append(record["concept"])
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def split_by_concept(
    dataset: datasets.Dataset, test_fraction: float = 0.05, seed: int = 0, column: str = "concept"
) -> datasets.DatasetDict:
    """Deterministic train/test split in which every concept (all its styles and skin tones) lands on one side.

    Held-out concepts give retrieval and generation tests prompts the model never saw in any style.

    Args:
        dataset: a dataset with a `column` of concept ids (the emoji dataset's "concept").
        test_fraction: share of concepts in "test", in (0, 1); at least one concept is held out.
        seed: seeds the permutation of the sorted concept ids.
        column: the concept column.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must lie strictly between 0 and 1.")
    if column not in dataset.column_names:
        raise ValueError(f"column={column!r} is not in the dataset columns {dataset.column_names}.")
    values = dataset[column]
    concepts = sorted(set(values))
    if len(concepts) < 2:
        raise ValueError(f"need at least 2 distinct values in column {column!r} to split, got {len(concepts)}.")
    order = np.random.default_rng(seed).permutation(len(concepts))
    n_test = min(len(concepts) - 1, max(1, round(test_fraction * len(concepts))))
    test_concepts = {concepts[i] for i in order[:n_test]}
    test_rows = [i for i, v in enumerate(values) if v in test_concepts]
    train_rows = [i for i, v in enumerate(values) if v not in test_concepts]
    return datasets.DatasetDict(train=dataset.select(train_rows), test=dataset.select(test_rows))
