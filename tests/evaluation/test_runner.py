"""`evaluate_pipeline` / `hf-t2i eval` on a tiny random DALL-E saved to a temporary folder."""

import argparse
import functools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPModel

from hf_t2i import DalleForConditionalGeneration, DallePipeline, T2IImageProcessor, T2IProcessor
from hf_t2i.evaluation import (
    evaluate_for_training,
    evaluate_pipeline,
    evaluate_scorer,
    flatten_metrics,
    load_eval_split,
)
from hf_t2i.evaluation import runner as eval_runner
from hf_t2i.evaluation.cli import add_eval_subparser, run_eval
from hf_t2i.training import Recipe, TrainingConfig, train
from hf_t2i.training.recipes.clip import ClipScorerRecipeConfig, build_clip_config, build_scorer_tokenizer
from tests.conftest import tiny_dalle_config


REPORT_KEYS = {"metrics", "settings", "timings", "versions", "machine", "files", "grid_captions"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class PooledColours(torch.nn.Module):
    """Cheap FID features (4x4 pooled colours), so the runner tests do not pay for Inception."""

    num_features = 48
    feature_name = "test-pooled-colours"

    def forward(self, images):
        return F.adaptive_avg_pool2d(images, 4).flatten(1)


@pytest.fixture
def pipeline_dir(dalle_pipeline, tmp_path):
    path = tmp_path / "dalle"
    dalle_pipeline.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory):
    """An untrained scorer folder (model + T2IProcessor), as the clip_scorer recipe exports it."""
    path = tmp_path_factory.mktemp("scorer")
    config = ClipScorerRecipeConfig(
        image_size=32,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        text_seq_len=16,
    )
    tokenizer = build_scorer_tokenizer(["a red circle", "two blue squares", "a green triangle"] * 20, 300, 16)
    torch.manual_seed(0)
    CLIPModel(build_clip_config(config, tokenizer)).save_pretrained(path)
    T2IProcessor(T2IImageProcessor(image_size=32), tokenizer).save_pretrained(path)
    return str(path)


def evaluate(pipe, tmp_path, **kwargs):
    values = dict(
        num_images=6,
        batch_size=4,
        seed=0,
        fid_cache_dir=str(tmp_path / "fid"),
        fid_feature_extractor=PooledColours(),
        progress=False,
    )
    values.update(kwargs)
    return evaluate_pipeline(pipe, "shapes", **values)


def test_report_and_grid_are_written(pipeline_dir, scorer_dir, tmp_path):
    output_dir = tmp_path / "eval"
    report = evaluate(pipeline_dir, tmp_path, scorer_path=scorer_dir, output_dir=str(output_dir))
    on_disk = json.loads((output_dir / "report.json").read_text())
    assert set(on_disk) == REPORT_KEYS and on_disk["metrics"] == report["metrics"]

    metrics = on_disk["metrics"]
    assert set(metrics) == {
        "fid",
        "compositional",
        "clip_score",
        "clip_cosine",
        "clip_score_real_images",
        "clip_cosine_real_images",
    }
    assert metrics["fid"] > 0
    assert metrics["compositional"]["num_samples"] == 6
    assert set(metrics["compositional"]["per_task"]) == {
        "single_object",
        "two_objects",
        "counting",
        "colors",
        "position",
        "color_attr",
    }
    settings = on_disk["settings"]
    assert settings["model"] == pipeline_dir and settings["split"] == "test" and settings["image_size"] == 16
    assert settings["metrics"] == ["fid", "compositional", "clip"]
    assert {"generation_s", "fid_reference_s", "compositional_s", "clip_s", "total_s"} <= set(on_disk["timings"])
    assert on_disk["timings"]["fid_reference_cached"] == 0.0
    assert {"hf_t2i", "torch", "transformers", "diffusers"} <= set(on_disk["versions"])
    assert on_disk["machine"]["device"] == "cpu" and on_disk["machine"]["cpu_count"] >= 1
    assert len(on_disk["grid_captions"]) == 6

    grid = Image.open(output_dir / "grid.png")
    assert grid.size == (4 * 128, 2 * 128)  # 6 images of 16 px, 4 per row, upscaled 8x


def test_same_seed_same_numbers_and_cached_reference(dalle_pipeline, tmp_path):
    first = evaluate(dalle_pipeline, tmp_path, metrics="fid,compositional")
    second = evaluate(dalle_pipeline, tmp_path, metrics=["fid", "compositional"])
    other_seed = evaluate(dalle_pipeline, tmp_path, metrics="fid", seed=1)
    assert second["timings"]["fid_reference_cached"] == 1.0
    assert second["metrics"] == first["metrics"]
    assert other_seed["metrics"]["fid"] != first["metrics"]["fid"]


def test_evaluate_for_training_returns_flat_floats(dalle_pipeline, tmp_path):
    metrics = evaluate_for_training(
        dalle_pipeline,
        "shapes",
        num_images=4,
        metrics="fid,compositional",
        fid_cache_dir=str(tmp_path),
        fid_feature_extractor=PooledColours(),
    )
    assert {"fid", "compositional/overall", "compositional/per_task/single_object"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    assert flatten_metrics({"a": {"b": 1, "c": [1, 2]}, "d": True}) == {"a/b": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dataset_name": "mnist"}, "dataset_name"),
        ({"metrics": "fid,sharpness"}, "metrics"),
        ({"metrics": "clip"}, "scorer_path"),
        ({"dataset_name": "fashion_mnist", "metrics": "compositional"}, "compositional"),
        ({"num_images": 0}, "num_images"),
        ({"num_images": 1, "metrics": "fid"}, "num_images"),
        ({"batch_size": 0}, "batch_size"),
        ({"pipe": "/does/not/exist"}, "--model"),
        ({"scorer_path": "/does/not/exist"}, "scorer_path"),
        ({"split": "train"}, "`split` .*'train'"),
        ({"dataset_name": "emoji", "split": "validation"}, "`split` .*'validation'.*'emoji'.*--split test"),
    ],
)
def test_bad_input_names_the_argument(dalle_pipeline, kwargs, name):
    values = {"pipe": dalle_pipeline, "dataset_name": "shapes", "num_images": 2, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=name):
        evaluate_pipeline(**values)


def test_the_split_reaches_the_report_and_each_split_has_its_own_fid_cache(dalle_pipeline, tmp_path):
    test = evaluate(dalle_pipeline, tmp_path, metrics="fid,compositional", output_dir=str(tmp_path / "test"))
    validation = evaluate(
        dalle_pipeline, tmp_path, metrics="fid,compositional", split="validation", output_dir=str(tmp_path / "val")
    )
    assert test["settings"]["split"] == "test"
    assert json.loads((tmp_path / "val" / "report.json").read_text())["settings"]["split"] == "validation"
    # the captions really come from the validation split
    assert validation["grid_captions"] == load_eval_split("shapes", 6, 16, split="validation")["text"]
    assert validation["grid_captions"] != test["grid_captions"]
    # validation must not reuse the test split's cached FID reference (nor overwrite it)
    assert validation["timings"]["fid_reference_cached"] == 0.0
    assert validation["metrics"]["fid"] != test["metrics"]["fid"]
    cached = sorted(path.name for path in (tmp_path / "fid").iterdir())
    assert len(cached) == 2 and any("-test-" in name for name in cached)
    assert any("-validation-" in name for name in cached)
    again = evaluate(dalle_pipeline, tmp_path, metrics="fid", split="validation")
    assert again["timings"]["fid_reference_cached"] == 1.0 and again["metrics"]["fid"] == validation["metrics"]["fid"]


@pytest.fixture
def split_spy(monkeypatch):
    """The `split` of every `load_eval_split` call the runner makes."""
    splits = []

    def spy(*args, split="test", **kwargs):
        splits.append(split)
        return load_eval_split(*args, split=split, **kwargs)

    monkeypatch.setattr(eval_runner, "load_eval_split", spy)
    return splits


def test_the_scorer_is_evaluated_on_the_chosen_split(scorer_dir, split_spy):
    results = evaluate_scorer(scorer_dir, "shapes", num_pairs=6, split="validation")
    assert {"text_to_image_recall@1", "num_pairs"} <= set(results)
    evaluate_scorer(scorer_dir, "shapes", num_pairs=6)
    assert split_spy == ["validation", "test"]
    with pytest.raises(ValueError, match="`split` .*'validation'.*'fashion_mnist'"):
        evaluate_scorer(scorer_dir, "fashion_mnist", num_pairs=6, split="validation")


def eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_eval_subparser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_split_flag_parses_and_its_help_says_what_each_split_is_for(capsys):
    parser = eval_parser()
    assert parser.parse_args(["eval", "--dataset", "shapes"]).split == "test"
    assert parser.parse_args(["eval", "--dataset", "shapes", "--split", "validation"]).split == "validation"
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--dataset", "shapes", "--split", "train"])
    assert "--split: invalid choice: 'train'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--split {test,validation}" in help_text
    assert "validation (shapes only): in-distribution captions, for choosing settings such as guidance" in help_text
    assert "test (default): held-out captions" in help_text and "for reporting" in help_text


def test_cli_split_validation_reaches_the_report_and_its_own_default_folder(pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = eval_parser()
    args = parser.parse_args(
        ["eval", "--model", pipeline_dir, "--dataset", "shapes", "--num-images", "3", "--batch-size", "3"]
        + ["--metrics", "compositional", "--split", "validation"]
    )
    assert args.func(args) == 0
    report = json.loads((tmp_path / "eval" / "shapes-validation" / "report.json").read_text())
    assert report["settings"]["split"] == "validation"
    assert report["grid_captions"] == load_eval_split("shapes", 3, 16, split="validation")["text"]
    assert not (tmp_path / "eval" / "shapes").exists()  # the test split's default report is not overwritten

    args = parser.parse_args(["eval", "--model", pipeline_dir, "--dataset", "emoji", "--split", "validation"])
    with pytest.raises(ValueError, match="`split` .*'validation'.*'emoji'"):
        run_eval(args)


def test_cli_passes_the_split_to_the_scorer_evaluation(scorer_dir, tmp_path, split_spy):
    args = eval_parser().parse_args(
        ["eval", "--scorer", scorer_dir, "--dataset", "shapes", "--metrics", "retrieval", "--num-images", "4"]
        + ["--split", "validation", "--output-dir", str(tmp_path)]
    )
    assert args.func(args) == 0 and split_spy == ["validation"]
    assert json.loads((tmp_path / "scorer_report.json").read_text())["settings"]["split"] == "validation"


def test_cli_writes_a_report(pipeline_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_eval_subparser(parser.add_subparsers(dest="command"))
    output_dir = tmp_path / "cli"
    args = parser.parse_args(
        ["eval", "--model", pipeline_dir, "--dataset", "shapes", "--num-images", "3", "--batch-size", "2"]
        + ["--metrics", "compositional", "--output-dir", str(output_dir), "--guidance-scale", "2.0"]
    )
    assert args.func(args) == 0
    report = json.loads((output_dir / "report.json").read_text())
    assert report["settings"]["guidance_scale"] == 2.0 and report["settings"]["num_images"] == 3
    assert "compositional" in report["metrics"] and "compositional" in capsys.readouterr().out

    args = parser.parse_args(["eval", "--dataset", "shapes", "--metrics", "compositional"])
    with pytest.raises(ValueError, match="--model"):
        run_eval(args)


def test_cli_sampling_options_reach_the_pipeline_and_the_report(pipeline_dir, tmp_path):
    parser = eval_parser()
    base = ["eval", "--model", pipeline_dir, "--dataset", "shapes", "--num-images", "2", "--batch-size", "2"]
    base += ["--metrics", "compositional", "--output-dir", str(tmp_path)]
    calls = []
    original = DallePipeline.__call__

    @functools.wraps(original)  # keeps the signature the runner checks the options against
    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DallePipeline, "__call__", spy)
        args = parser.parse_args(base + ["--temperature", "0.5", "--top-k", "4", "--guidance-schedule", "linear"])
        assert args.func(args) == 0
    chosen = {"temperature": 0.5, "guidance_schedule": "linear", "top_k": 4}
    assert calls and all(call.items() >= chosen.items() for call in calls)
    settings = json.loads((tmp_path / "report.json").read_text())["settings"]
    assert settings["pipeline_kwargs"] == chosen
    assert settings["sampling"] == {"temperature": 0.5, "top_k": 4, "top_p": None, "min_p": None, "do_sample": True}

    # a setting the call leaves out is the checkpoint's (its generation_config.json), and the report says so
    config_path = Path(pipeline_dir) / "generation_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "temperature": 0.8}))
    assert run_eval(parser.parse_args(base + ["--top-k", "4"])) == 0
    sampling = json.loads((tmp_path / "report.json").read_text())["settings"]["sampling"]
    assert sampling["temperature"] == 0.8 and sampling["top_k"] == 4

    args = parser.parse_args(base + ["--num-inference-steps", "8"])  # DALL-E decodes one token per step
    with pytest.raises(ValueError, match="num_inference_steps.*DallePipeline.*--num-inference-steps"):
        run_eval(args)
    args = parser.parse_args(base + ["--guidance-interval", "0.2,1"])  # a diffusion sampler's option
    assert args.guidance_interval == (0.2, 1.0)
    with pytest.raises(ValueError, match="guidance_interval.*DallePipeline.*--guidance-interval"):
        run_eval(args)


@pytest.mark.parametrize("value", ["0.5,0.2", "0.2", "a,b", "0,1.5"])
def test_cli_guidance_interval_refuses_bad_pairs(value, capsys):
    with pytest.raises(SystemExit):
        eval_parser().parse_args(["eval", "--dataset", "shapes", "--guidance-interval", value])
    assert "expected START,STOP with 0 <= START < STOP <= 1" in capsys.readouterr().err


class TinyDalleRecipe(Recipe):
    """A recipe whose `evaluate` calls `evaluate_for_training`, as `dalle_prior` would."""

    name = "test_tiny_dalle_eval"

    def __init__(self, processor):
        super().__init__()
        self.processor = processor

    def build_model(self):
        return DalleForConditionalGeneration(tiny_dalle_config(len(self.processor.tokenizer)))

    def build_train_dataset(self):
        generator = torch.Generator().manual_seed(0)
        text = self.processor(text=["a red circle", "two blue squares"] * 4).input_ids
        image = torch.randint(0, 32, (8, 64), generator=generator)
        return [{"input_ids": t, "image_token_ids": i} for t, i in zip(text, image)]

    def training_step(self, model, batch, step):
        ids = torch.cat([batch["input_ids"], batch["image_token_ids"] + model.config.text_vocab_size], dim=1)
        return model(input_ids=ids, labels=ids, use_cache=False).loss, {}

    def evaluate(self, model, step):
        pipe = DallePipeline(model=model, processor=self.processor)
        return evaluate_for_training(pipe, "shapes", num_images=4, metrics="compositional")


def test_training_loop_logs_generation_metrics(dalle_processor, tmp_path):
    config = TrainingConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        train_batch_size=4,
        eval_steps=1,
        report_to="none",
        checkpointing_steps=0,
    )
    results = train(TinyDalleRecipe(dalle_processor), config)
    assert 0.0 <= results["eval/compositional/overall"] <= 1.0
    assert "eval/compositional/num_samples" in results


def test_best_of_n_keeps_the_candidate_the_reranker_ranks_first(dalle_pipeline, scorer_dir, tmp_path, monkeypatch):
    """`num_candidates` draws N images per caption and keeps the reranker's first; the scorer is detached after."""
    from hf_t2i.evaluation import compositional
    from hf_t2i.pipelines import reranking

    kept = []
    original = reranking.rerank

    def spy(scorer, processor, prompts, pixels, num_images_per_prompt):
        index, scores = original(scorer, processor, prompts, pixels, num_images_per_prompt)
        kept.append((pixels.shape[0], index.tolist()))
        return index, scores

    monkeypatch.setattr("hf_t2i.pipelines.pipeline_utils.rerank", spy)
    seen = []
    monkeypatch.setattr(
        compositional,
        "compositional_accuracy",
        lambda images, specs: seen.append(len(images)) or {"overall": 0.0, "correct": []},
    )
    report = evaluate(
        dalle_pipeline, tmp_path, metrics="compositional", num_candidates=3, rerank_scorer_path=scorer_dir
    )
    assert seen == [6]  # one kept image per caption
    assert [n for n, _ in kept] == [12, 6]  # batches of 4 and 2 captions, 3 candidates each
    for n, index in kept:  # one per caption, chosen among that caption's own candidates
        assert [i // 3 for i in index] == list(range(n // 3))
    assert report["settings"]["num_candidates"] == 3 and report["settings"]["rerank_scorer"] == scorer_dir
    assert dalle_pipeline.scorer is None and dalle_pipeline.scorer_processor is None


def test_best_of_n_refuses_without_a_reranker_or_a_pipeline_that_reranks(dalle_pipeline, tmp_path):
    with pytest.raises(ValueError, match="rerank_scorer_path.*--rerank-scorer"):
        evaluate(dalle_pipeline, tmp_path, metrics="compositional", num_candidates=2)
    with pytest.raises(ValueError, match="num_candidates"):
        evaluate(dalle_pipeline, tmp_path, metrics="compositional", num_candidates=0)
    with pytest.raises(ValueError, match="`rerank_scorer_path` .* is not a scorer folder"):
        evaluate(
            dalle_pipeline, tmp_path, metrics="compositional", num_candidates=2, rerank_scorer_path=tmp_path / "none"
        )

    class NoRerank:
        def __call__(self, prompt, num_images_per_prompt=1, generator=None, output_type="pil"):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match="NoRerank cannot"):
        evaluate(NoRerank(), tmp_path, metrics="compositional", num_candidates=2)


def test_cli_guidance_sweep_writes_one_report_per_scale_and_a_table(pipeline_dir, tmp_path):
    parser = argparse.ArgumentParser()
    add_eval_subparser(parser.add_subparsers(dest="command"))
    output_dir = tmp_path / "sweep"
    args = parser.parse_args(
        ["eval", "--model", pipeline_dir, "--dataset", "shapes", "--num-images", "3", "--batch-size", "3"]
        + ["--metrics", "compositional", "--output-dir", str(output_dir), "--guidance-scale", "1,2.5"]
    )
    assert args.guidance_scale == [1.0, 2.5]
    assert args.func(args) == 0
    reports = [json.loads((output_dir / f"guidance_{g}" / "report.json").read_text()) for g in ("1", "2.5")]
    assert [r["settings"]["guidance_scale"] for r in reports] == [1.0, 2.5]
    sweep = json.loads((output_dir / "sweep.json").read_text())
    assert [row["guidance_scale"] for row in sweep["rows"]] == [1.0, 2.5]
    for row, report in zip(sweep["rows"], reports):
        assert row["compositional/overall"] == report["metrics"]["compositional"]["overall"]
    table = (output_dir / "sweep.md").read_text().splitlines()
    assert table[2].startswith("| guidance_scale | compositional/overall | single_object")
    assert table[4].startswith("| 1 | 0.") and table[5].startswith("| 2.5 | 0.")


@pytest.mark.parametrize("value", ["x", "1,,2", "-1", "2,2", "inf", "nan"])
def test_cli_guidance_scale_refuses_bad_lists(value, capsys):
    parser = argparse.ArgumentParser()
    add_eval_subparser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--dataset", "shapes", "--guidance-scale", value])
    assert "--guidance-scale" in capsys.readouterr().err
