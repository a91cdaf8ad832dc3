"""Sharing a checkpoint uploads hf_t2i's model card: every save / push path (pipeline, model, `hf-t2i export`,
`hf-t2i train --push-to-hub`) commits a README.md whose metadata says `library_name: hf_t2i`, `pipeline_tag:
text-to-image`, the family tags, the license, `base_model` for a fine-tune of a Hub model and `model-index` results
from an `hf-t2i eval` report; an existing card keeps its text. The Hub is a fake recording each commit's
`CommitOperationAdd`s: nothing leaves the machine.

Also: the shipped cards parse with valid metadata whose results are the numbers of their own Evaluation sections, and
no shipped or saved JSON file records a local path."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.repocard import metadata_load

from hf_t2i import DalleDVAE, DalleDVAEConfig
from hf_t2i.checkpoints import SHIPPED_CHECKPOINTS, SHIPPED_DIR, resolve_checkpoint
from hf_t2i.cli import main
from hf_t2i.hub import INSTALL_COMMAND, write_model_card
from hf_t2i.pipelines import T2IPipeline

from .training.training_toy import reset_accelerate_state


MODEL_CARDS = Path(__file__).resolve().parents[1] / "model_cards"
REPORT = {  # the shape of what `hf-t2i eval` writes (hf_t2i.evaluation.evaluate_pipeline)
    "metrics": {"fid": 123.456789, "compositional": {"overall": 0.3125, "per_task": {"single_object": 0.5}}},
    "settings": {"dataset": "shapes", "split": "test", "num_images": 64, "guidance_scale": 3.0, "seed": 0},
}


class FakeHub:
    """`HfApi.create_repo` / `create_commit` / `hf_hub_download` against a dict: each commit's operations are recorded
    and the files they add can be downloaded again (so a second push finds the first one's README.md)."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.files: dict[str, dict[str, bytes]] = {}  # repo id -> path -> content
        self.commits: list[tuple[str, list[CommitOperationAdd], dict]] = []
        self.calls: list[str] = []
        self.refuse: Exception | None = None  # raised by create_repo, as a missing login would be
        self.watch = None  # called at each create_repo, its results kept in `watched`
        self.watched: list = []

    def create_repo(self, api, repo_id, *, token=None, private=None, exist_ok=False, **kwargs):
        full = repo_id if "/" in repo_id else f"user/{repo_id}"
        self.calls.append(f"create_repo {full}")
        if self.watch is not None:
            self.watched.append(self.watch())
        if self.refuse is not None:
            raise self.refuse
        self.files.setdefault(full, {})
        return RepoUrl(f"https://huggingface.co/{full}")

    def create_commit(self, api, repo_id, operations, *, commit_message, **kwargs):
        operations = list(operations)
        assert all(isinstance(op, CommitOperationAdd) for op in operations)
        self.calls.append(f"create_commit {repo_id}")
        for op in operations:
            with op.as_file() as f:
                self.files[repo_id][op.path_in_repo] = f.read()
        self.commits.append((repo_id, operations, {"commit_message": commit_message, **kwargs}))
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{len(self.commits):040x}",
            commit_message=commit_message,
            commit_description="",
            oid=f"{len(self.commits):040x}",
        )

    def hf_hub_download(self, api, repo_id, filename, **kwargs):
        if filename not in self.files.get(repo_id, {}):
            raise EntryNotFoundError(f"{filename} is not in {repo_id}")
        path = self.cache / repo_id / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.files[repo_id][filename])
        return str(path)

    def uploaded(self, index: int = -1) -> dict[str, bytes]:
        """path -> content of one commit."""
        repo_id, operations, _ = self.commits[index]
        return {op.path_in_repo: self.files[repo_id][op.path_in_repo] for op in operations}

    def card(self, index: int = -1) -> ModelCard:
        return ModelCard(self.uploaded(index)["README.md"].decode("utf-8"))


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    hub = FakeHub(tmp_path / "hub-cache")
    for name in ("create_repo", "create_commit", "hf_hub_download"):
        method = getattr(hub, name)
        monkeypatch.setattr(HfApi, name, lambda api, *args, _method=method, **kwargs: _method(api, *args, **kwargs))
    return hub


def assert_hf_t2i_metadata(card: ModelCard, family: str, pipeline_tag: str | None = "text-to-image"):
    data = card.data
    assert data.library_name == "hf_t2i"
    assert data.pipeline_tag == pipeline_tag
    assert data.license == "apache-2.0"
    expected_tags = {family, "hf_t2i"} | ({"text-to-image"} if pipeline_tag else set())
    assert expected_tags <= set(data.tags)


def local_paths(value, roots: tuple[str, ...], key: str = "") -> list[str]:
    """Strings anywhere in a JSON value that contain one of `roots`, and `*_name_or_path` / `*_path` values that are
    absolute paths."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in local_paths(v, roots, k) + local_paths(k, roots)]
    if isinstance(value, list):
        return [p for v in value for p in local_paths(v, roots, key)]
    if isinstance(value, str):
        absolute = key.endswith("_path") and (os.path.isabs(value) or re.match(r"^[A-Za-z]:\\", value))
        if absolute or any(root in value for root in roots):
            return [value]
    return []


# ------------------------------------------------------------------------------------------------- pipelines
def test_pipeline_save_pretrained_push_uploads_the_card(dalle_pipeline, fake_hub, tmp_path):
    folder = tmp_path / "tiny-dalle"
    dalle_pipeline.save_pretrained(folder, push_to_hub=True, repo_id="me/tiny-dalle")
    assert fake_hub.calls == ["create_repo me/tiny-dalle", "create_commit me/tiny-dalle"]
    files = fake_hub.uploaded()
    assert {"README.md", "model_index.json", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert not [name for name in files if any(part.startswith(".") for part in name.split("/"))]
    card = fake_hub.card()
    assert_hf_t2i_metadata(card, "dalle")
    assert card.data.base_model is None and card.data.eval_results is None
    # "How to use" installs the package first, then loads the repository and calls the pipeline
    usage = card.text[card.text.index("## How to use") :]
    assert usage.index(INSTALL_COMMAND) < usage.index('DallePipeline.from_pretrained("me/tiny-dalle")')
    assert 'pipe("a red circle left of a blue square"' in usage
    # the card is also written into the folder, and parses with huggingface_hub's metadata reader
    assert metadata_load(folder / "README.md")["library_name"] == "hf_t2i"
    assert (folder / "README.md").read_bytes() == files["README.md"]
    # the default repository name is the folder's
    dalle_pipeline.save_pretrained(tmp_path / "other-name", push_to_hub=True)
    assert fake_hub.commits[-1][0] == "user/other-name"


def test_pipeline_push_to_hub_adds_eval_results_from_a_report(dalle_pipeline, fake_hub, tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORT))
    dalle_pipeline.push_to_hub("tiny-dalle", eval_report=report, commit_message="first")
    repo_id, operations, options = fake_hub.commits[-1]
    assert repo_id == "user/tiny-dalle" and options["commit_message"] == "first"
    card = fake_hub.card()
    assert_hf_t2i_metadata(card, "dalle")
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"fid", "compositional_accuracy"}
    assert results["fid"].metric_value == pytest.approx(123.4568)
    assert results["compositional_accuracy"].metric_value == 0.3125
    for result in results.values():
        assert (result.task_type, result.dataset_type, result.dataset_split) == ("text-to-image", "shapes", "test")
        assert result.metric_args == {"num_images": 64, "guidance_scale": 3.0, "seed": 0}
    # a second push with another split's report keeps the first results: the card is the repository's README.md
    validation = {**REPORT, "settings": {**REPORT["settings"], "split": "validation"}}
    dalle_pipeline.push_to_hub("tiny-dalle", eval_report=validation)
    splits = sorted({r.dataset_split for r in fake_hub.card().data.eval_results})
    assert splits == ["test", "validation"]
    # a limited guidance interval (`hf-t2i eval --guidance-interval`) is part of the setting the numbers hold for;
    # every step guided (the report's [0.0, 1.0]) is the plain setting and not named
    for interval, expected in [([0.2, 1.0], {"guidance_interval": [0.2, 1.0]}), ([0.0, 1.0], {})]:
        settings = {**REPORT["settings"], "pipeline_kwargs": {"guidance_interval": interval}}
        dalle_pipeline.push_to_hub("tiny-dalle", eval_report={**REPORT, "settings": settings})
        results = [r for r in fake_hub.card().data.eval_results if r.dataset_split == "test"]
        assert all(r.metric_args == {"num_images": 64, "guidance_scale": 3.0, "seed": 0, **expected} for r in results)


def test_a_folder_report_json_is_used_by_default(dalle_pipeline, fake_hub, tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(REPORT))
    dalle_pipeline.save_pretrained(folder, push_to_hub=True, repo_id="me/tiny")
    assert {r.metric_type for r in fake_hub.card().data.eval_results} == {"fid", "compositional_accuracy"}
    assert "| FID | 123.4568 | shapes | test |" in fake_hub.card().text


def test_base_model_is_the_hub_repository_the_pipeline_came_from(dalle_pipeline, fake_hub, tmp_path):
    dalle_pipeline.register_to_config(_name_or_path="org/base-dalle")  # as `from_pretrained("org/base-dalle")` does
    dalle_pipeline.push_to_hub("me/finetuned")
    card = fake_hub.card()
    assert card.data.base_model == "org/base-dalle"
    assert "Fine-tuned from [`org/base-dalle`]" in card.text
    # re-pushing to the repository it came from names no base model
    dalle_pipeline.push_to_hub("org/base-dalle")
    assert fake_hub.card().data.base_model is None
    # an explicit base_model wins
    dalle_pipeline.push_to_hub("me/other", base_model="org/root")
    assert fake_hub.card().data.base_model == "org/root"


def test_a_local_source_path_reaches_neither_card_nor_json(dalle_pipeline, dalle_model, fake_hub, tmp_path):
    source = tmp_path / "runs" / "prior" / "final"
    source.mkdir(parents=True)
    dalle_pipeline.register_to_config(_name_or_path=str(source))
    nested = dalle_model.config.vq_config
    nested._name_or_path = str(tmp_path / "runs" / "dvae" / "final")  # as a recipe's `--dvae-path` leaves it
    dalle_pipeline.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="me/tiny")
    files = fake_hub.uploaded()
    card = fake_hub.card()
    assert card.data.base_model is None
    assert str(tmp_path) not in files["README.md"].decode()
    for name, content in files.items():
        if name.endswith(".json"):
            assert local_paths(json.loads(content), (str(tmp_path),)) == [], name
    assert "_name_or_path" not in json.loads(files["model_index.json"])
    # the objects in memory still know where they came from
    assert dalle_pipeline.name_or_path == str(source)
    assert nested._name_or_path == str(tmp_path / "runs" / "dvae" / "final")


def test_a_pipeline_from_a_shipped_checkpoint_names_it(fake_hub):
    pipe = T2IPipeline.from_pretrained(resolve_checkpoint("dalle"))
    pipe.push_to_hub("me/dalle-more")
    card = fake_hub.card()
    assert card.data.base_model is None  # not a Hub repository
    assert "`dalle-shapes`, a checkpoint shipped inside the hf_t2i package" in card.text
    assert 'resolve_checkpoint("dalle")' in card.text
    files = fake_hub.uploaded()
    assert local_paths(json.loads(files["model_index.json"]), (str(SHIPPED_DIR),)) == []
    assert local_paths(json.loads(files["config.json"]), (str(SHIPPED_DIR),)) == []


def test_an_existing_card_keeps_its_text_and_gets_its_metadata_fixed(dalle_pipeline, fake_hub, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    body = "# My tiny DALL-E\n\nWritten by hand: trained on my own shapes.\n"
    (folder / "README.md").write_text(
        "---\nlicense: mit\nlibrary_name: diffusers\ntags:\n- mine\ndatasets:\n- shapes (generated in code)\n"
        "- someone/real-dataset\n---\n" + body
    )
    with pytest.warns(UserWarning, match="not Hub dataset ids"):
        dalle_pipeline.save_pretrained(folder, push_to_hub=True, repo_id="me/mine")
    card = fake_hub.card()
    assert card.text == body
    assert card.data.license == "mit"  # the author's choice stays
    assert card.data.library_name == "hf_t2i" and card.data.pipeline_tag == "text-to-image"
    assert card.data.tags == ["mine", "dalle", "text-to-image", "hf_t2i"]
    assert card.data.datasets == ["someone/real-dataset"]


def test_the_repository_card_is_kept_when_the_folder_has_none(dalle_pipeline, fake_hub):
    fake_hub.files["me/tiny"] = {
        "README.md": b"---\nlibrary_name: diffusers\ntags:\n- diffusers\n---\n# Described on the Hub\n\nKeep me.\n"
    }
    dalle_pipeline.push_to_hub("me/tiny")
    card = fake_hub.card()
    assert card.text == "# Described on the Hub\n\nKeep me.\n"
    assert_hf_t2i_metadata(card, "dalle")


# ---------------------------------------------------------------------------------------------------- models
def test_model_push_to_hub_uploads_the_hf_t2i_card(dalle_model, fake_hub, tmp_path):
    dalle_model.push_to_hub("me/tiny-prior", tags=["extra"])
    files = fake_hub.uploaded()
    assert {"README.md", "config.json", "model.safetensors"} <= set(files)
    card = fake_hub.card()
    assert_hf_t2i_metadata(card, "dalle")
    assert "extra" in card.data.tags
    usage = card.text[card.text.index("## How to use") :]
    assert usage.index(INSTALL_COMMAND) < usage.index('DalleForConditionalGeneration.from_pretrained("me/tiny')
    # save_pretrained(..., push_to_hub=True) takes the same path and writes the card into the folder
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORT))
    dalle_model.save_pretrained(tmp_path / "prior", push_to_hub=True, repo_id="me/prior", eval_report=report)
    assert fake_hub.commits[-1][0] == "me/prior"
    assert {r.metric_type for r in fake_hub.card().data.eval_results} == {"fid", "compositional_accuracy"}
    assert (tmp_path / "prior" / "README.md").is_file()


def test_an_image_tokenizer_is_not_tagged_text_to_image(fake_hub):
    dvae = DalleDVAE(DalleDVAEConfig(image_size=16, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2]))
    dvae.push_to_hub("me/dvae")
    card = fake_hub.card()
    assert_hf_t2i_metadata(card, "dalle_dvae", pipeline_tag=None)
    assert 'DalleDVAE.from_pretrained("me/dvae")' in card.text


# -------------------------------------------------------------------------------------------- export, train
def test_export_writes_the_card_and_pushes(dalle_pipeline, fake_hub, tmp_path, capsys):
    dalle_pipeline.save_pretrained(tmp_path / "full")
    (tmp_path / "full" / "report.json").write_text(json.dumps(REPORT))
    assert main(["export", str(tmp_path / "full"), str(tmp_path / "half"), "--push-to-hub", "me/half"]) == 0
    assert "pushed" in capsys.readouterr().out
    card = fake_hub.card()
    assert_hf_t2i_metadata(card, "dalle")
    assert {r.metric_type for r in card.data.eval_results} == {"fid", "compositional_accuracy"}
    assert fake_hub.uploaded()["README.md"] == (tmp_path / "half" / "README.md").read_bytes()
    # a malformed repository id is refused before the export runs
    assert main(["export", str(tmp_path / "full"), str(tmp_path / "x"), "--push-to-hub", "not a repo"]) == 2
    assert "--push-to-hub" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_train_push_to_hub_uploads_the_final_pipeline(fake_hub, tmp_path, capsys):
    torch.manual_seed(0)
    dvae = DalleDVAE(
        DalleDVAEConfig(
            image_size=32, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2, 4], num_blocks_per_group=1
        )
    )
    dvae.save_pretrained(tmp_path / "dvae")
    flags = [
        "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--train-batch-size", "8", "--report-to", "none",
        "--log-steps", "1", "--checkpointing-steps", "0", "--lr-warmup-steps", "0", "--dvae-path", str(tmp_path / "dvae"),
        "--dataset", "shapes", "--dataset-size", "16", "--eval-size", "8", "--image-size", "32",
        "--text-vocab-size", "300", "--text-seq-len", "12", "--hidden-size", "32", "--num-hidden-layers", "2",
        "--num-attention-heads", "4", "--intermediate-size", "64", "--conv-kernel-size", "3",
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    fake_hub.watch = lambda: (tmp_path / "run" / "final").exists()
    reset_accelerate_state()
    try:
        assert main(["train", "dalle_prior", *flags, "--push-to-hub", "--hub-model-id", "me/tiny-run"]) == 0
    finally:
        reset_accelerate_state()
    # the repository is created before training (no final export yet), the final export committed at the end
    assert fake_hub.calls == ["create_repo me/tiny-run", "create_repo me/tiny-run", "create_commit me/tiny-run"]
    assert fake_hub.watched == [False, True]
    files = fake_hub.uploaded()
    assert {"README.md", "model_index.json", "config.json", "model.safetensors"} <= set(files)
    assert fake_hub.commits[-1][2]["commit_message"] == "dalle_prior: step 2"
    card = fake_hub.card()
    assert_hf_t2i_metadata(card, "dalle")
    assert 'DallePipeline.from_pretrained("me/tiny-run")' in card.text
    for name, content in files.items():
        if name.endswith(".json"):
            assert local_paths(json.loads(content), (str(tmp_path),)) == [], name
    # a refused repository (no login) stops the run before any training or data preparation
    fake_hub.refuse = PermissionError("401: log in with `hf auth login`")
    reset_accelerate_state()
    try:
        with pytest.raises(PermissionError, match="401"):
            main(["train", "dalle_prior", *flags, "--output-dir", str(tmp_path / "refused"), "--push-to-hub"])
    finally:
        reset_accelerate_state()
    assert fake_hub.calls[-1] == "create_repo user/refused" and not (tmp_path / "refused").exists()
    # --hub-model-id without --push-to-hub is refused (exit status 2, the flag named)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "dalle_prior", *flags, "--hub-model-id", "me/x"])
    assert exit_info.value.code == 2 and "hub_model_id" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_is_a_clear_error(dalle_pipeline, fake_hub, tmp_path):
    with pytest.raises(ValueError, match="repo_id"):
        dalle_pipeline.push_to_hub("not a valid id")
    with pytest.raises(ValueError, match="eval_report"):
        dalle_pipeline.push_to_hub("me/x", eval_report={"metrics": {"fid": 1.0}})
    with pytest.raises(ValueError, match="eval_report"):
        dalle_pipeline.push_to_hub("me/x", eval_report=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="base_model"):
        dalle_pipeline.push_to_hub("me/x", base_model="/home/me/runs/base")
    (tmp_path / "empty").mkdir()
    from hf_t2i.hub import push_folder_to_hub

    with pytest.raises(ValueError, match="model_index.json nor config.json"):
        push_folder_to_hub(tmp_path / "empty", "me/x")
    assert fake_hub.commits == []


# ----------------------------------------------------------------------------------------- shipped checkpoints
# shipped folder -> (model-index dataset, metric types, words the card must hold about where the data comes from)
SHAPES_CARD_DATA = ("shapes", {"fid", "compositional_accuracy"}, ("generated in code",))
SHIPPED_CARD_DATA = {
    # the emoji images are npm packages' files, credited under their licences; no compositional detector exists there
    "dalle-emoji": (
        "emoji",
        {"fid"},
        ("emoji-datasource-twitter", "CC-BY 4.0", "emoji-datasource-google", "Apache-2.0"),
    ),
}


@pytest.mark.parametrize("name", sorted(SHIPPED_CHECKPOINTS))
def test_shipped_card_has_valid_metadata_and_its_own_numbers(name, tmp_path):
    folder = SHIPPED_DIR / SHIPPED_CHECKPOINTS[name]
    family = json.loads((folder / "config.json").read_text())["model_type"]  # dalle, parti, fluid, ...
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert readme == (MODEL_CARDS / f"{folder.name}.md").read_text(encoding="utf-8")
    metadata = metadata_load(folder / "README.md")
    assert metadata["library_name"] == "hf_t2i" and metadata["pipeline_tag"] == "text-to-image"
    assert {family, "text-to-image", "hf_t2i"} <= set(metadata["tags"])
    assert metadata["license"] == "apache-2.0"
    assert "datasets" not in metadata  # the shapes data is generated in code: no Hub dataset id exists
    card = ModelCard.load(folder / "README.md")
    assert_hf_t2i_metadata(card, family)
    results = {r.metric_type: r for r in card.data.eval_results}
    dataset, metric_types, provenance = SHIPPED_CARD_DATA.get(folder.name, SHAPES_CARD_DATA)
    assert set(results) == metric_types
    body = card.text[card.text.index("## Evaluation") :]
    for result in results.values():
        assert (result.dataset_type, result.dataset_split) == (dataset, "test")
        assert result.metric_args["num_images"] >= 100  # FID on fewer images means little
        # the number is the one the card's own Evaluation section reports (e.g. 134.4, 0.170 -> 0.17)
        assert re.search(rf"\b{re.escape(str(result.metric_value))}0?\b", body), result
    assert all(words in card.text for words in provenance)
    # exporting with this card reproduces it byte for byte (the metadata is already complete)
    copy = tmp_path / folder.name
    copy.mkdir()
    for file in ("README.md", "model_index.json", "config.json"):
        shutil.copyfile(folder / file, copy / file)
    write_model_card(copy)
    assert (copy / "README.md").read_text(encoding="utf-8") == readme


def test_shipped_json_files_hold_no_local_paths():
    checked = 0
    for path in sorted(SHIPPED_DIR.rglob("*.json")):
        value = json.loads(path.read_text(encoding="utf-8"))
        assert local_paths(value, ("/work/", os.path.expanduser("~"))) == [], path
        checked += 1
    assert checked >= 5 * 3
    for folder in SHIPPED_CHECKPOINTS.values():
        assert "_name_or_path" not in json.loads((SHIPPED_DIR / folder / "model_index.json").read_text())
