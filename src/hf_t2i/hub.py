"""Model cards and Hub uploads: the one place that decides what the README.md of a shared hf_t2i checkpoint says.

Every way of sharing a checkpoint ends here: `T2IPipeline.save_pretrained(..., push_to_hub=True)` and
`T2IPipeline.push_to_hub`, `save_pretrained(..., push_to_hub=True)` and `push_to_hub` of every hf_t2i
`PreTrainedModel`, `hf-t2i train ... --push-to-hub` and `hf-t2i export` (with or without `--push-to-hub`). Each first
saves a folder, then calls `push_folder_to_hub` (or `write_model_card` when nothing is uploaded).

The card's metadata is built with huggingface_hub's `ModelCardData` and `EvalResult`:

- `library_name: hf_t2i`; `pipeline_tag: text-to-image` for a model that draws images from captions; tags: the model
  family (its `model_type`, e.g. `dalle`), `text-to-image`, `hf_t2i`; `license` (default apache-2.0, hf_t2i's own);
- `base_model` when the checkpoint was loaded from a Hub repository and saved again (a fine-tune); a checkpoint that
  started from one shipped inside the package says so in the card's text instead (those are not Hub repositories);
- `model-index` results - FID and compositional accuracy with their dataset and split - from the `report.json` that
  `hf-t2i eval` writes.

A card that already exists is kept: the README.md in the folder being pushed (a shipped checkpoint's card, one written
by hand), or else the README.md already in the target repository. Its text stays as it is; its metadata is completed
and corrected (`datasets:` entries that are not Hub dataset ids are dropped). Otherwise a short card is written whose
"How to use" installs hf_t2i and calls the pipeline.

Local paths never reach the Hub through a card: a local folder the checkpoint was loaded from is not a `base_model`.

Every uploaded folder also carries the loader files of `hf_t2i.remote_code` (written by `save_pretrained`, added here
to a folder saved by an older hf_t2i), so `DiffusionPipeline.from_pretrained` and the transformers Auto classes load
it with `trust_remote_code=True` where hf_t2i is installed but not imported; the card's "How to use" says how.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .checkpoints import SHIPPED_CHECKPOINTS, SHIPPED_DIR
from .generation.guidance import FULL_INTERVAL
from .remote_code import INSTALL_COMMAND, pipeline_class_name, write_remote_code


LIBRARY_NAME = "hf_t2i"
TEXT_TO_IMAGE = "text-to-image"
DEFAULT_LICENSE = "apache-2.0"
CARD_NAME = "README.md"
REPORT_NAME = "report.json"  # what `hf-t2i eval` writes
EXAMPLE_PROMPT = "a red circle left of a blue square"

# The keyword arguments of the save / push methods that reach `push_folder_to_hub`.
HUB_ARGUMENTS = (
    "token",
    "private",
    "commit_message",
    "commit_description",
    "create_pr",
    "revision",
    "base_model",
    "eval_report",
    "license",
    "tags",
)

# report.json "metrics" key -> (model-index metric type, its pretty name)
_REPORT_METRICS = {
    "fid": ("fid", "FID"),
    "compositional": ("compositional_accuracy", "Compositional accuracy (GenEval-style, overall)"),
}
# report.json "settings" recorded with each result, so that a number says how it was measured
_REPORT_SETTINGS = ("num_images", "guidance_scale", "seed")


# ------------------------------------------------------------------------------------------------ what a folder is
@dataclass(frozen=True)
class SavedFolder:
    """What a saved folder holds, read from its JSON files (no weights are loaded).

    Attributes:
        library_name: the library whose class loads it (`hf_t2i`, or `diffusers` / `transformers` for their own
            models that hf_t2i recipes train, such as the `AutoencoderKL` of Fluid and Transfusion).
        class_name: that class (`DallePipeline`, `DalleForConditionalGeneration`, `AutoencoderKL`, ...), or None.
        family: the model's `model_type` (`dalle`, `parti`, `fluid`, `transfusion`, `muse`, `mar`, ...), or None.
        is_pipeline: a `T2IPipeline` folder (model_index.json), loadable by `pipeline("text-to-image")` too.
        pipeline_tag: `text-to-image` for what draws images from captions, else None (image tokenizers, base
            models without a head, class-conditional MAR).
        class_conditional: the model draws from class labels (its config has `num_classes`), not captions.
    """

    library_name: str
    class_name: str | None
    family: str | None
    is_pipeline: bool
    pipeline_tag: str | None
    class_conditional: bool = False


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); save the checkpoint again.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}; save the checkpoint again.")
    return value


def describe_folder(folder: str | os.PathLike) -> SavedFolder:
    """What `folder` (written by a `save_pretrained`) holds: a pipeline, an hf_t2i model, or a diffusers /
    transformers model, with its family and whether it draws images from captions."""
    folder = Path(folder)
    index, config = _read_json(folder / "model_index.json"), _read_json(folder / "config.json")
    if index is None and config is None:
        raise ValueError(
            f"`folder` ({folder}) has neither model_index.json nor config.json: it is not a saved pipeline or model. "
            "Save one there with `save_pretrained` first."
        )
    config = config or {}
    family = config.get("model_type")
    class_conditional = bool(config.get("num_classes"))  # MAR: class labels instead of captions
    if index is not None:
        tag = None if class_conditional else TEXT_TO_IMAGE
        return SavedFolder(LIBRARY_NAME, pipeline_class_name(index), family, True, tag, class_conditional)
    if "_diffusers_version" in config:  # a diffusers model, e.g. the autoencoder_kl recipe's AutoencoderKL
        return SavedFolder("diffusers", config.get("_class_name"), None, False, None)
    architectures = config.get("architectures") or [None]
    class_name = architectures[0]
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if family in CONFIG_MAPPING_NAMES:  # one of transformers' own models, e.g. the clip_scorer recipe's CLIPModel
        return SavedFolder("transformers", class_name, family, False, None)
    # hf_t2i's naming: `<Name>ForConditionalGeneration` is the model that generates; `<Name>Model` and the image
    # tokenizers do not draw from captions on their own
    generates = bool(class_name) and class_name.endswith("ForConditionalGeneration") and not class_conditional
    return SavedFolder(
        LIBRARY_NAME, class_name, family, False, TEXT_TO_IMAGE if generates else None, class_conditional
    )


def checkpoint_source(name_or_path: str | os.PathLike | None) -> tuple[str | None, str | None]:
    """Where a checkpoint was loaded from, as `(Hub repository id, shipped checkpoint folder)`; both None for a local
    folder (which is never written into a card) or when unknown."""
    if not name_or_path:
        return None, None
    name = os.fspath(name_or_path)
    path = Path(name)
    if path.exists():
        resolved = path.resolve()
        shipped = SHIPPED_DIR.resolve()
        if resolved.parent == shipped and resolved.name in SHIPPED_CHECKPOINTS.values():
            return None, resolved.name
        return None, None
    if name.startswith((".", "~")) or os.path.isabs(name) or not _is_repo_id(name):
        return None, None
    return name, None


# ---------------------------------------------------------------------------------------------------- eval results
def eval_results_from_report(report: str | os.PathLike | dict) -> list[EvalResult]:
    """The `model-index` results of one `hf-t2i eval` report (its report.json, or the dict `evaluate_pipeline`
    returns): FID and compositional accuracy, each with the dataset, split, number of images, guidance and seed."""
    source = "eval_report"
    if not isinstance(report, dict):
        source = os.fspath(report)
        report = _read_json(Path(source))
        if report is None:
            raise ValueError(
                f"`eval_report` ({source}) does not exist; pass the report.json that `hf-t2i eval` wrote."
            )
    metrics, settings = report.get("metrics"), report.get("settings")
    if not isinstance(metrics, dict) or not isinstance(settings, dict) or not settings.get("dataset"):
        raise ValueError(
            f"`eval_report` ({source}) is not an `hf-t2i eval` report: it needs `metrics` and `settings` (with "
            "`dataset`). Pass the report.json that `hf-t2i eval` wrote."
        )
    dataset, split = settings["dataset"], settings.get("split")
    arguments = {name: settings[name] for name in _REPORT_SETTINGS if settings.get(name) is not None}
    interval = (settings.get("pipeline_kwargs") or {}).get("guidance_interval")
    if interval is not None and tuple(interval) != FULL_INTERVAL:  # guidance on some of the steps only: say which
        arguments["guidance_interval"] = [float(value) for value in interval]
    results = []
    for key, (metric_type, metric_name) in _REPORT_METRICS.items():
        value = metrics.get(key)
        if isinstance(value, dict):  # compositional: {"overall": ..., "per_task": ...}
            value = value.get("overall")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        results.append(
            EvalResult(
                task_type=TEXT_TO_IMAGE,
                task_name="Text-to-Image",
                dataset_type=dataset,
                dataset_name=f"{dataset} ({split} split)" if split else dataset,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=round(float(value), 4),
                metric_args=dict(arguments) or None,
            )
        )
    return results


def _merge_eval_results(old: list[EvalResult] | None, new: list[EvalResult]) -> list[EvalResult] | None:
    """`old` with each result of `new` replacing the one of the same task, dataset, split and metric."""
    merged = {(r.unique_identifier, r.metric_type): r for r in old or []}
    merged.update({(r.unique_identifier, r.metric_type): r for r in new})
    return list(merged.values()) or None


# ------------------------------------------------------------------------------------------------------ the card
def _is_repo_id(name: Any) -> bool:
    """True for a well-formed Hub id (`name` or `namespace/name`), model or dataset."""
    try:
        validate_repo_id(name)
    except (HFValidationError, TypeError):
        return False
    return True


def _generic_loaders(info: SavedFolder, repo_id: str) -> str:
    """A note on the loaders that need hf_t2i installed but not imported (the loader files of
    `hf_t2i.remote_code`)."""
    if info.is_pipeline:
        return (
            "\nThe generic loaders work too, with hf_t2i installed: `DiffusionPipeline.from_pretrained(snapshot_download("
            f'"{repo_id}"), trust_remote_code=True)` (diffusers cannot pick this repository\'s files itself, so '
            "`huggingface_hub.snapshot_download` fetches it first) and `AutoModel.from_pretrained"
            f'("{repo_id}", trust_remote_code=True)`.\n'
        )
    return (
        f'\nWith hf_t2i installed, `AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)` loads it too, '
        "without importing hf_t2i.\n"
    )


def _usage(info: SavedFolder, repo_id: str) -> str:
    """The "How to use" section: install hf_t2i, then load the checkpoint and (for a pipeline) call it."""
    install = (
        "Install hf_t2i from a clone of its repository (it is not on PyPI), after the torch build for your machine:\n\n"
        f"```bash\n{INSTALL_COMMAND}\n```\n\n"
    )
    name = info.class_name or "AutoModel"
    if info.is_pipeline:
        call = "class_labels=[0]" if info.class_conditional else f'"{EXAMPLE_PROMPT}"'
        code = (
            "import torch\n"
            f"from hf_t2i import {name}\n\n"
            f'pipe = {name}.from_pretrained("{repo_id}")\n'
            f"image = pipe({call}, generator=torch.Generator().manual_seed(0)).images[0]\n"
            'image.save("image.png")\n'
        )
        extra = ""
        if info.pipeline_tag == TEXT_TO_IMAGE:
            extra = (
                '\n`import hf_t2i` registers the `text-to-image` task, so `transformers.pipeline("text-to-image", '
                f'model="{repo_id}")` loads this repository too.\n'
            )
        return f"## How to use\n\n{install}```python\n{code}```\n{extra}{_generic_loaders(info, repo_id)}"
    module = "hf_t2i" if info.library_name == LIBRARY_NAME else info.library_name
    code = f'from {module} import {name}\n\nmodel = {name}.from_pretrained("{repo_id}")\n'
    extra = ""
    if info.library_name == LIBRARY_NAME and info.pipeline_tag == TEXT_TO_IMAGE:
        extra = (
            "\nThis repository holds the model without its processor. To draw images, use it in its hf_t2i pipeline "
            "with the processor it was trained with; a pipeline shared with `pipe.push_to_hub(...)` carries both.\n"
        )
    if info.library_name == LIBRARY_NAME:
        extra += _generic_loaders(info, repo_id)
    return f"## How to use\n\n{install}```python\n{code}```\n{extra}"


def _results_table(results: list[EvalResult]) -> str:
    rows = [
        f"| {r.metric_name or r.metric_type} | {r.metric_value} | {r.dataset_type} | {r.dataset_split or ''} | "
        f"{', '.join(f'{k} {v}' for k, v in (r.metric_args or {}).items())} |"
        for r in results
    ]
    header = "| metric | value | dataset | split | settings |\n|---|---|---|---|---|\n"
    return "## Evaluation\n\nMeasured with `hf-t2i eval`:\n\n" + header + "\n".join(rows) + "\n"


def _new_card_text(info: SavedFolder, repo_id: str, title: str, base_model: str | None, shipped: str | None) -> str:
    what = "text-to-image " if info.pipeline_tag == TEXT_TO_IMAGE else ""
    what += "pipeline" if info.is_pipeline else "model"
    if info.class_name:
        what += f" (`{info.class_name}`"
        what += f", model family `{info.family}`)" if info.family else ")"
    lines = [f"\n# {title}\n", f"A {what} saved with hf_t2i."]
    if base_model:
        lines.append(f"Fine-tuned from [`{base_model}`](https://huggingface.co/{base_model}).")
    elif shipped:
        short = {folder: name for name, folder in SHIPPED_CHECKPOINTS.items()}[shipped]
        lines.append(
            f"Trained further from `{shipped}`, a checkpoint shipped inside the hf_t2i package "
            f'(`hf_t2i.checkpoints.resolve_checkpoint("{short}")`).'
        )
    return "\n".join(lines) + "\n\n" + _usage(info, repo_id)


def update_model_card(
    card: ModelCard | None,
    info: SavedFolder,
    repo_id: str,
    *,
    base_model: str | None = None,
    shipped: str | None = None,
    eval_results: list[EvalResult] | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
) -> ModelCard:
    """`card` (kept as written, metadata completed and corrected) or, when None, a new card for `info`."""
    title = repo_id.split("/")[-1]
    if card is None:
        metadata = ModelCardData(library_name=info.library_name).to_yaml()
        card = ModelCard(f"---\n{metadata}\n---\n{_new_card_text(info, repo_id, title, base_model, shipped)}")
        if eval_results:
            card.text += "\n" + _results_table(eval_results)
    data: ModelCardData = card.data
    data.library_name = info.library_name
    if info.pipeline_tag:
        data.pipeline_tag = info.pipeline_tag
    data.license = license or data.license or DEFAULT_LICENSE
    if base_model:
        data.base_model = base_model
    wanted = [info.family, info.pipeline_tag, LIBRARY_NAME, *(tags or [])]
    data.tags = list(dict.fromkeys([*(data.tags or []), *(tag for tag in wanted if tag)]))
    if data.datasets is not None:
        datasets = [data.datasets] if isinstance(data.datasets, str) else list(data.datasets)
        dropped = [name for name in datasets if not _is_repo_id(name)]
        if dropped:
            warnings.warn(
                f"Model card of {repo_id}: dropped `datasets` entries that are not Hub dataset ids: {dropped} (say "
                "where the data comes from in the card's text instead).",
                stacklevel=3,
            )
        data.datasets = [name for name in datasets if name not in dropped] or None
    if eval_results:
        data.model_name = data.model_name or title
        data.eval_results = _merge_eval_results(data.eval_results, eval_results)
    return card


def _load_card(path: str | os.PathLike, where: str) -> ModelCard:
    try:
        return ModelCard.load(path)
    except ValueError as error:
        raise ValueError(
            f"The model card {where} has invalid metadata ({error}); fix its YAML front matter."
        ) from None


def _eval_results(folder: Path, eval_report) -> list[EvalResult]:
    if eval_report is None:
        eval_report = folder / REPORT_NAME if (folder / REPORT_NAME).is_file() else []
    reports = eval_report if isinstance(eval_report, (list, tuple)) else [eval_report]
    return [result for report in reports for result in eval_results_from_report(report)]


def write_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    *,
    source: str | os.PathLike | None = None,
    base_model: str | None = None,
    eval_report: str | os.PathLike | dict | list | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
    existing: ModelCard | None = None,
) -> ModelCard:
    """Write (or complete) `folder`'s README.md and return the card.

    Args:
        folder: a folder written by `save_pretrained` (pipeline or model).
        repo_id: the Hub repository it goes to (default: the folder's name); it names the card and its examples.
        source: where the checkpoint was loaded from before it was saved (its `name_or_path`): a Hub id becomes
            `base_model`, a shipped checkpoint is named in the text, a local folder is left out.
        base_model: the Hub id of the model this one was trained from, overriding what `source` says.
        eval_report: `hf-t2i eval` report(s) (report.json paths or dicts) for `model-index`; default: `folder`'s
            report.json when there is one.
        license: the card's license (default: the existing card's, else apache-2.0).
        tags: extra tags.
        existing: the card to complete when `folder` has no README.md (e.g. the target repository's).
    """
    folder = Path(folder)
    info = describe_folder(folder)
    repo_id = repo_id or folder.resolve().name
    hub_id, shipped = checkpoint_source(source)
    if base_model is None and hub_id != repo_id:
        base_model = hub_id
    if base_model is not None and not _is_repo_id(base_model):
        raise ValueError(f"`base_model` must be a Hub model id such as 'org/name', got {base_model!r}.")
    path = folder / CARD_NAME
    card = _load_card(path, str(path)) if path.is_file() else existing
    card = update_model_card(
        card,
        info,
        repo_id,
        base_model=base_model,
        shipped=shipped,
        eval_results=_eval_results(folder, eval_report),
        license=license,
        tags=tags,
    )
    card.save(path)
    return card


# -------------------------------------------------------------------------------------------------------- upload
def check_repo_id(repo_id: Any, argument: str = "repo_id") -> None:
    """A `ValueError` naming `argument` unless `repo_id` is a well-formed Hub model id (checked before a long export or
    training run, not after it)."""
    if not isinstance(repo_id, str) or not _is_repo_id(repo_id):
        raise ValueError(
            f"`{argument}` must be a Hub repository id such as 'user/name' or 'name' (letters, digits, '-', '_', '.'), "
            f"got {repo_id!r}."
        )


def create_hub_repo(repo_id: str, *, token: str | bool | None = None, private: bool | None = None) -> str:
    """Create the model repository `repo_id` if it does not exist (a clear error for a malformed id) and return its
    full id (`user/name` for a bare `name`)."""
    check_repo_id(repo_id)
    return HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True).repo_id


def _remote_card(api: HfApi, repo_id: str, revision: str | None) -> ModelCard | None:
    """The README.md already in the repository, or None when it has none (or the repository or branch is new)."""
    try:
        path = api.hf_hub_download(repo_id, CARD_NAME, revision=revision)
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        return None
    return _load_card(path, f"{CARD_NAME} of {repo_id}")


def _folder_files(folder: Path) -> list[str]:
    """Files under `folder`, relative and sorted; hidden files and folders (`.git`, `.cache`, temporary saves) are
    not uploaded."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = Path(root).relative_to(folder)
        files += [(relative / name).as_posix() for name in sorted(names) if not name.startswith(".")]
    return files


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    revision: str | None = None,
    source: str | os.PathLike | None = None,
    base_model: str | None = None,
    eval_report: str | os.PathLike | dict | list | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
):
    """Upload a saved pipeline or model folder with its model card as ONE commit; returns the `CommitInfo`.

    The card is `folder`'s README.md if it has one, else the repository's current README.md, else a new one; in
    each case completed as `write_model_card` says (the other arguments are its). The card is also written into
    `folder`, as transformers and diffusers do with `save_pretrained(..., push_to_hub=True)`.

    Args:
        folder: what to upload (every file but hidden ones).
        repo_id: the model repository (`name` or `user/name`); created when missing.
        token, private, commit_message, commit_description, create_pr, revision: as in `HfApi.create_commit` /
            `create_repo` (a `revision` branch is created when missing).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"`folder` ({folder}) is not a folder; save the checkpoint with `save_pretrained` first.")
    describe_folder(folder)  # before anything is created on the Hub
    write_remote_code(folder)  # a folder saved by an older hf_t2i gets its loader files too
    api = HfApi(token=token)
    repo_id = create_hub_repo(repo_id, token=token, private=private)
    if revision is not None and not create_pr and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    existing = None if (folder / CARD_NAME).is_file() else _remote_card(api, repo_id, revision)
    write_model_card(
        folder,
        repo_id,
        source=source,
        base_model=base_model,
        eval_report=eval_report,
        license=license,
        tags=tags,
        existing=existing,
    )
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in _folder_files(folder)
    ]
    return api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or "Upload hf_t2i checkpoint",
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
    )


__all__ = [
    "HUB_ARGUMENTS",
    "LIBRARY_NAME",
    "SavedFolder",
    "check_repo_id",
    "checkpoint_source",
    "create_hub_repo",
    "describe_folder",
    "eval_results_from_report",
    "push_folder_to_hub",
    "update_model_card",
    "write_model_card",
]
