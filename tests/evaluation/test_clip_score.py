"""The contrastive scorer: `clip_scorer` recipe, CLIP score, retrieval recall, and reranking with it."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel

from hf_t2i import DallePipeline, T2IImageProcessor
from hf_t2i.data import build_shapes_dataset
from hf_t2i.evaluation import (
    clip_score,
    load_scorer,
    matched_vs_contradicting,
    matched_vs_shuffled,
    retrieval_recall,
)
from hf_t2i.evaluation.clip_score import pair_cosines, scorer_metrics
from hf_t2i.pipelines.reranking import clip_scores
from hf_t2i.training import TrainingConfig, train
from hf_t2i.training.recipes.clip import END_OF_TEXT, ClipScorerRecipe, ClipScorerRecipeConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny CPU models train ~10x faster on one thread when the cores are shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_recipe_config(**kwargs) -> ClipScorerRecipeConfig:
    values = dict(
        dataset="shapes",
        dataset_size=2000,
        image_size=32,
        eval_size=64,
        text_vocab_size=300,
        text_seq_len=16,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=8,
        projection_dim=32,
    )
    values.update(kwargs)
    return ClipScorerRecipeConfig(**values)


def train_scorer(output_dir, steps: int, training: dict | None = None, **kwargs) -> str:
    recipe = ClipScorerRecipe(tiny_recipe_config(**kwargs))
    values = dict(train_batch_size=32, learning_rate=2e-3, report_to="none", checkpointing_steps=0, log_steps=steps)
    values.update(training or {})
    train(recipe, TrainingConfig(output_dir=str(output_dir), max_steps=steps, seed=0, **values))
    return str(output_dir / "final")


@pytest.fixture(scope="module")
def trained_scorer(tmp_path_factory):
    """150 steps on 2,000 shapes pairs (~5 s on one core): the scorer the tests below use."""
    scorer, processor = load_scorer(train_scorer(tmp_path_factory.mktemp("clip"), steps=150))
    return scorer, processor


@pytest.fixture(scope="module")
def held_out():
    """Pairs whose colour-shape combinations never occur in training."""
    split = build_shapes_dataset(64, "test", 32)
    return list(split["text"]), list(split["image"])


# -------------------------------------------------------------------------------------------------- training
def test_trained_scorer_ranks_matching_pairs_above_shuffled(trained_scorer, held_out):
    scorer, processor = trained_scorer
    texts, images = held_out
    trained = matched_vs_shuffled(scorer, processor, texts, images)
    recall = retrieval_recall(scorer, processor, texts, images)
    torch.manual_seed(1)
    untrained = CLIPModel(scorer.config).eval()
    baseline = retrieval_recall(untrained, processor, texts, images)

    assert trained["matched_above_shuffled"] >= 0.8
    assert trained["matched_cosine"] > trained["shuffled_cosine"] + 0.3
    assert matched_vs_shuffled(untrained, processor, texts, images)["matched_above_shuffled"] < 0.7
    for direction in ("text_to_image", "image_to_text"):
        assert recall[f"{direction}_recall@5"] >= baseline[f"{direction}_recall@5"] + 0.3


@pytest.mark.slow
def test_longer_training_retrieves_held_out_pairs(tmp_path):
    """600 steps of a 2-layer, 64-wide scorer (~90 s on one busy core): held-out retrieval well above chance."""
    training = {"train_batch_size": 64, "learning_rate": 1e-3, "lr_scheduler": "cosine", "lr_warmup_steps": 50}
    path = train_scorer(
        tmp_path,
        steps=600,
        training=training,
        dataset_size=5000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        projection_dim=64,
    )
    scorer, processor = load_scorer(path)
    split = build_shapes_dataset(256, "test", 32)
    texts, images = list(split["text"]), list(split["image"])
    recall = retrieval_recall(scorer, processor, texts, images)
    assert recall["text_to_image_recall@1"] >= 0.35  # measured 0.50
    assert recall["text_to_image_recall@5"] >= 0.7 and recall["image_to_text_recall@5"] >= 0.65  # 0.81, 0.80
    assert matched_vs_shuffled(scorer, processor, texts, images)["matched_above_shuffled"] >= 0.95  # 0.99


def test_scorer_folder_round_trip_and_end_of_text_pooling(trained_scorer, tmp_path):
    scorer, processor = trained_scorer
    eot = processor.tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    assert scorer.config.text_config.eos_token_id == eot != 2  # 2 would select transformers' legacy argmax pooling
    inputs = processor(text=["a red circle", "two blue squares left of a green diamond"], truncation=True)
    assert all(eot in row for row in inputs.input_ids.tolist())

    # the pooled text feature is the projection of the hidden state at the end-of-text token
    with torch.no_grad():
        hidden = scorer.text_model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
        positions = (inputs.input_ids == eot).int().argmax(1)
        expected = scorer.text_projection(hidden.last_hidden_state[torch.arange(2), positions])
        features = scorer.get_text_features(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
    assert torch.allclose(features.pooler_output if hasattr(features, "pooler_output") else features, expected)

    scorer.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_scorer(tmp_path)
    assert (
        loaded_processor(text=["a red circle"]).input_ids.tolist()
        == processor(text=["a red circle"]).input_ids.tolist()
    )
    texts, images = ["a red circle", "a blue square"], build_shapes_dataset(2, "test", 32)["image"]
    assert clip_score(loaded, loaded_processor, texts, images) == pytest.approx(
        clip_score(scorer, processor, texts, images)
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"image_size": 30}, "image_size"),
        ({"hidden_size": 33}, "hidden_size"),
        ({"eval_split": "train"}, "eval_split"),
    ],
)
def test_recipe_config_bad_values_name_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tiny_recipe_config(**kwargs)


def test_hard_negative_batches_hold_each_pair_and_its_twin(tmp_path):
    """With `hard_negatives` a training batch carries every pair's contradicting twin, the loss is CLIP's over all 2B
    pairs, and a short run trains; without it the batch is unchanged."""
    from hf_t2i.data import build_contradicting_twins

    recipe = ClipScorerRecipe(tiny_recipe_config(dataset_size=64, hard_negatives=True))
    dataset = recipe.build_train_dataset()
    batch = recipe.collate_fn([dataset[i] for i in range(4)])
    twins = build_contradicting_twins(4, "train", 32)
    expected = recipe.processor(text=list(twins["text"]), images=list(twins["image"]), truncation=True)
    assert torch.equal(batch["twin_input_ids"], expected["input_ids"])
    assert torch.equal(batch["twin_pixel_values"], expected["pixel_values"])
    assert batch["twin_pixel_values"].shape == batch["pixel_values"].shape

    model = recipe.build_model()
    loss, _ = recipe.training_step(model, batch, step=0)
    keys = ("input_ids", "attention_mask", "pixel_values")
    both = model(**{key: torch.cat([batch[key], batch[f"twin_{key}"]]) for key in keys}, return_loss=True)
    assert torch.allclose(loss, both.loss)

    plain = ClipScorerRecipe(tiny_recipe_config(dataset_size=64)).build_train_dataset()
    assert "twin_input_ids" not in plain[0]
    # the recipe's evaluation compares each eval pair with its own twin (same split, size and seed)
    scorer, processor = load_scorer(train_scorer(tmp_path, steps=20, dataset_size=256, hard_negatives=True))
    metrics = ClipScorerRecipe(tiny_recipe_config(dataset_size=256, hard_negatives=True)).evaluate(scorer, step=20)
    rows, twins = build_shapes_dataset(64, "validation", 32), build_contradicting_twins(64, "validation", 32)
    expected = matched_vs_contradicting(
        scorer,
        processor,
        list(rows["text"]),
        list(rows["image"]),
        list(twins["text"]),
        list(twins["image"]),
        tasks=list(rows["task"]),
    )
    for name in ("caption_above_contradicting", "image_above_contradicting"):
        assert metrics[name] == pytest.approx(expected[name])
        per_task = expected[f"{name}_per_task"]  # logged flat, one number per task, as trackers want
        assert set(per_task) == set(rows["task"])
        for task, value in per_task.items():
            assert metrics[f"{name}_per_task/{task}"] == pytest.approx(value)
    assert all(isinstance(value, float) for value in metrics.values())


def test_patch_positions_can_start_from_the_2d_sincos_table():
    from hf_t2i.layers.positional import sincos_2d_embedding

    recipe = ClipScorerRecipe(tiny_recipe_config(dataset_size=64, position_embedding_init="sincos_2d"))
    table = recipe.build_model().vision_model.embeddings.position_embedding.weight
    assert torch.equal(table[0], torch.zeros(32))  # the class token's
    assert torch.allclose(table[1:], sincos_2d_embedding(4, 4, 32))  # 32 px / patch 8: a 4 x 4 grid, width 32
    default = ClipScorerRecipe(tiny_recipe_config(dataset_size=64)).build_model()
    assert default.vision_model.embeddings.position_embedding.weight.std() < 0.1  # CLIP's own N(0, 0.02) start
    with pytest.raises(ValueError, match="position_embedding_init"):
        tiny_recipe_config(position_embedding_init="sincos")
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny_recipe_config(position_embedding_init="sincos_2d", hidden_size=34, num_attention_heads=2)


def test_shapes_tasks_weight_the_training_rows_and_their_twins_follow():
    """`shapes_tasks` sets the tasks the training rows cycle through (a repeated name weighs more); each row's twin
    keeps its row's task; evaluation rows keep all six; bad values name the field."""
    from collections import Counter

    from hf_t2i.data import build_contradicting_twins
    from hf_t2i.data.shapes import TASKS

    mix = ("position", "position", "counting")
    recipe = ClipScorerRecipe(tiny_recipe_config(dataset_size=30, hard_negatives=True, shapes_tasks=list(mix)))
    assert recipe.config.shapes_tasks == mix  # a JSON config file's list reads as the tuple
    train_rows, evaluation = recipe._splits()
    assert Counter(train_rows["task"]) == {"position": 20, "counting": 10}
    assert set(evaluation["task"]) == set(TASKS)
    twins = build_contradicting_twins(30, "train", 32, tasks=mix)
    assert twins["task"] == train_rows["task"] and train_rows["twin_text"] == twins["text"]
    with pytest.raises(ValueError, match="shapes_tasks"):
        tiny_recipe_config(shapes_tasks=("position", "spelling"))
    with pytest.raises(ValueError, match="shapes_tasks"):
        tiny_recipe_config(dataset="emoji", shapes_tasks=("position",))


def test_hard_negatives_need_shapes():
    with pytest.raises(ValueError, match="hard_negatives"):
        tiny_recipe_config(dataset="emoji", hard_negatives=True)


def test_recipe_config_runs_the_data_fields_checks():
    # --dataset-name must replace the default shapes set, not be ignored
    assert tiny_recipe_config(dataset_name="some/dataset").dataset == "datasets"
    with pytest.raises(ValueError, match="eval_size"):
        tiny_recipe_config(eval_size=0)


def test_load_scorer_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="scorer_path"):
        load_scorer(tmp_path / "missing")


# -------------------------------------------------------------------------------------- scores and reranking
def test_clip_score_agrees_with_the_reranking_scores(trained_scorer, held_out):
    scorer, processor = trained_scorer
    texts, images = held_out[0][:8], held_out[1][:8]
    pixel_values = T2IImageProcessor(image_size=32)(images, return_tensors="pt")["pixel_values"]  # [-1, 1]
    rerank_scores = clip_scores(scorer, processor, texts, pixel_values)
    assert torch.allclose(pair_cosines(scorer, processor, texts, images, batch_size=3), rerank_scores, atol=1e-5)
    expected = max(0.0, 100 * rerank_scores.mean().item())
    assert clip_score(scorer, processor, texts, images) == pytest.approx(expected, abs=1e-3)
    arrays = np.stack([np.asarray(image) for image in images])  # uint8 (N, H, W, 3)
    assert clip_score(scorer, processor, texts, arrays) == pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError, match="one caption per image"):
        clip_score(scorer, processor, texts[:3], images)


def test_dalle_reranks_candidates_with_the_trained_scorer(trained_scorer, dalle_model, dalle_processor):
    scorer, processor = trained_scorer
    pipe = DallePipeline(model=dalle_model, processor=dalle_processor, scorer=scorer, scorer_processor=processor)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a red circle", num_candidates=4, generator=torch.Generator().manual_seed(0), output_type="pt", truncation=True
    )
    candidates = pipe(
        "a red circle",
        num_images_per_prompt=4,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        truncation=True,
    ).images
    scores = clip_scores(scorer, processor, ["a red circle"], candidates * 2 - 1)
    best = scores.argmax()
    assert torch.allclose(out.images[0], candidates[best], atol=1e-6)
    assert out.scores[0].item() == pytest.approx(scores[best].item(), abs=1e-5)


# ------------------------------------------------------------------------------------ retrieval bookkeeping
class AngleScorer(torch.nn.Module):
    """Stub scorer: every caption and every image is a unit vector at a given angle (degrees)."""

    dtype = torch.float32

    def __init__(self, text_angles: dict, image_angles: list):
        super().__init__()
        self.text_angles, self.image_angles = text_angles, image_angles
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @staticmethod
    def _vectors(degrees) -> torch.Tensor:
        radians = torch.tensor(degrees, dtype=torch.float32) * math.pi / 180
        return torch.stack([radians.cos(), radians.sin()], dim=-1)

    def get_text_features(self, input_ids, attention_mask):
        return self._vectors([self.text_angles[int(i)] for i in input_ids[:, 0]])

    def get_image_features(self, pixel_values):
        return self._vectors([self.image_angles[int(i)] for i in pixel_values[:, 0, 0, 0]])


class IndexProcessor:
    """Stub processor: a caption becomes its index in `texts`, an image its (constant) pixel value."""

    def __init__(self, texts):
        self.ids = {text: i for i, text in enumerate(dict.fromkeys(texts))}

    def __call__(self, text=None, images=None, return_tensors="pt", **kwargs):
        if text is not None:
            ids = torch.tensor([[self.ids[t]] for t in text])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return {
            "pixel_values": torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() for im in images])
        }


def solid(value: int) -> Image.Image:
    return Image.new("RGB", (2, 2), (value, value, value))


def test_retrieval_recall_counts_exactly():
    # captions a, b, c at 0, 60, 120 degrees; image 0 sits nearer caption b than its own caption a
    texts = ["a", "b", "c"]
    scorer = AngleScorer({0: 0, 1: 60, 2: 120}, [55, 70, 125])
    recall = retrieval_recall(scorer, IndexProcessor(texts), texts, [solid(i) for i in range(3)], k=(1, 2))
    assert recall["text_to_image_recall@1"] == pytest.approx(2 / 3)  # b retrieves image 0 first
    assert recall["text_to_image_recall@2"] == 1.0
    assert recall["image_to_text_recall@1"] == pytest.approx(2 / 3)  # image 0 retrieves b first
    assert recall["num_pairs"] == 3


def test_retrieval_recall_identical_captions_count_as_matches():
    texts = ["a", "b", "a"]
    scorer = AngleScorer({0: 0, 1: 90}, [10, 80, 5])
    images = [solid(i) for i in range(3)]
    processor = IndexProcessor(texts)
    shared = retrieval_recall(scorer, processor, texts, images, k=(1,))
    strict = retrieval_recall(scorer, processor, texts, images, k=(1,), identical_captions_match=False)
    assert shared["text_to_image_recall@1"] == 1.0  # caption "a" of pair 0 retrieves image 2, also captioned "a"
    assert strict["text_to_image_recall@1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k"):
        retrieval_recall(scorer, processor, texts, images, k=(0,))


def test_matched_vs_contradicting_counts_exactly():
    # pairs (a, image 0), (b, image 1); twins (c, image 2), (d, image 3)
    texts, twin_texts = ["a", "b"], ["c", "d"]
    scorer = AngleScorer({0: 0, 1: 90, 2: 20, 3: 130}, [5, 90, 0, 100])
    images = [solid(i) for i in range(4)]
    result = matched_vs_contradicting(
        scorer, IndexProcessor(texts + twin_texts), texts, images[:2], twin_texts, images[2:]
    )
    # image 0 sits nearer "a" (5 deg) than "c" (15 deg); image 1 on "b"; so both images prefer their own caption
    assert result["caption_above_contradicting"] == 1.0
    # caption "a" prefers twin image 2 (0 deg) to its own image 0 (5 deg); caption "b" prefers image 1 (90) to 3 (100)
    assert result["image_above_contradicting"] == 0.5
    assert result["num_pairs"] == 2
    per_task = matched_vs_contradicting(
        scorer, IndexProcessor(texts + twin_texts), texts, images[:2], twin_texts, images[2:], tasks=["x", "y"]
    )
    assert per_task["image_above_contradicting_per_task"] == {"x": 0.0, "y": 1.0}
    assert per_task["caption_above_contradicting_per_task"] == {"x": 1.0, "y": 1.0}
    with pytest.raises(ValueError, match="task"):
        matched_vs_contradicting(
            scorer, IndexProcessor(texts + twin_texts), texts, images[:2], twin_texts, images[2:], tasks=["x"]
        )
    with pytest.raises(ValueError, match="twin"):
        matched_vs_contradicting(
            scorer, IndexProcessor(texts + twin_texts), texts, images[:2], twin_texts[:1], images[2:3]
        )


def test_scorer_metrics_encodes_each_set_once_and_agrees_with_each_metric():
    texts, twin_texts = ["a", "b", "a"], ["c", "d", "e"]
    scorer = AngleScorer({0: 0, 1: 90, 2: 20, 3: 130, 4: 10}, [5, 90, 3, 0, 100, 30])
    images = [solid(i) for i in range(6)]
    processor = IndexProcessor(texts + twin_texts)
    pairs, twins = (texts, images[:3]), (twin_texts, images[3:])
    calls = {"text": 0, "image": 0}
    text_features, image_features = scorer.get_text_features, scorer.get_image_features

    def counted(kind, features):
        def wrapper(*args, **kwargs):
            calls[kind] += 1
            return features(*args, **kwargs)

        return wrapper

    scorer.get_text_features, scorer.get_image_features = (
        counted("text", text_features),
        counted("image", image_features),
    )
    result = scorer_metrics(scorer, processor, *pairs, twins=twins, tasks=["x", "y", "x"])
    assert calls == {"text": 2, "image": 2}  # the pairs once, the twins once (one batch each)
    expected = retrieval_recall(scorer, processor, *pairs)
    expected.update(matched_vs_shuffled(scorer, processor, *pairs))
    expected.update(matched_vs_contradicting(scorer, processor, *pairs, *twins, tasks=["x", "y", "x"]))
    assert result == expected
    with pytest.raises(ValueError, match="twin"):
        scorer_metrics(scorer, processor, *pairs, twins=(twin_texts[:2], images[3:5]))
    with pytest.raises(ValueError, match="two different captions"):
        scorer_metrics(scorer, processor, ["a", "a"], images[:2])
