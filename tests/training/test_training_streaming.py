"""Training on a user dataset read by `datasets`: webdataset / parquet shards written here, streamed (no length) or
not, with held-out rows that are never trained on, per-epoch shuffling and an exact resume inside an epoch."""

import pytest
import torch
from safetensors.torch import load_file

from hf_t2i.training import TrainingConfig, train
from hf_t2i.training.recipes.common import load_image_text_splits

from .streaming_toy import StreamToyConfig, StreamToyRecipe, caption, write_parquet_shards, write_webdataset_shards


ALL = {caption(i) for i in range(20)}


@pytest.fixture
def tar_glob(tmp_path):
    write_webdataset_shards(tmp_path / "wds", num_shards=2, rows_per_shard=10)
    return str(tmp_path / "wds" / "*.tar")


def stream_config(dataset_name, **kwargs):
    values = dict(dataset_name=dataset_name, streaming=True, image_size=8, eval_size=4, shuffle_buffer_size=8)
    return StreamToyConfig(**{**values, **kwargs})


def run(recipe, output_dir, **kwargs):
    values = dict(output_dir=str(output_dir), train_batch_size=4, report_to="none", log_steps=1)
    return train(recipe, TrainingConfig(**{**values, **kwargs}))


def seen_rows(recipe, steps=None):
    return [c for step, captions in recipe.seen if steps is None or step in steps for c in captions]


def test_stream_holds_out_eval_rows_and_reshuffles_each_epoch(tar_glob, tmp_path):
    recipe = StreamToyRecipe(stream_config(tar_glob))
    metrics = run(recipe, tmp_path / "out", max_steps=8)  # 16 training rows, 4 per batch: two epochs
    held_out = set(recipe._splits()[1]["text"])
    assert held_out == {caption(i) for i in range(4)}  # the first rows of the stream
    first, second = seen_rows(recipe, range(4)), seen_rows(recipe, range(4, 8))
    assert sorted(first) == sorted(second) == sorted(ALL - held_out)  # every training row once per epoch
    assert first != second and first != sorted(first)  # shuffled, and differently each epoch
    assert metrics["epoch"] == 1 and (tmp_path / "out" / "final" / "toy.safetensors").exists()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_resume_inside_an_epoch_is_exact(tar_glob, tmp_path, num_workers):
    straight = StreamToyRecipe(stream_config(tar_glob))
    run(straight, tmp_path / "straight", max_steps=6, dataloader_num_workers=num_workers)

    crashing = StreamToyRecipe(stream_config(tar_glob, crash_at_step=4))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crashing, tmp_path / "resumed", max_steps=6, checkpointing_steps=3, dataloader_num_workers=num_workers)
    resumed = StreamToyRecipe(stream_config(tar_glob))
    run(
        resumed,
        tmp_path / "resumed",
        max_steps=6,
        checkpointing_steps=3,
        resume_from_checkpoint="latest",
        dataloader_num_workers=num_workers,
    )
    # The resumed run continues epoch 0 after its 3 trained batches, then epoch 1, exactly as the straight run.
    assert resumed.seen[0][0] == 3
    assert seen_rows(resumed) == seen_rows(straight, range(3, 6))
    a = load_file(tmp_path / "straight" / "final" / "toy.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "toy.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_parquet_folder_uses_its_validation_split_and_named_columns(tmp_path):
    folder = tmp_path / "pq"
    write_parquet_shards(folder, num_shards=2, rows_per_shard=6)
    write_parquet_shards(folder, num_shards=1, rows_per_shard=3, split="validation")
    flags = dict(dataset_name=str(folder), image_column="picture", caption_column="caption", image_size=8)

    train_split, evaluation = load_image_text_splits(StreamToyConfig(**flags, eval_size=2))
    assert len(train_split) == 12 and evaluation["text"] == [caption(0), caption(1)]  # the validation split
    assert evaluation[0]["image"].mode == "RGB" and set(evaluation.column_names) == {"image", "text"}

    stream, evaluation = load_image_text_splits(StreamToyConfig(**flags, eval_size=2, streaming=True))
    assert stream.exclude == frozenset()  # the validation split is held out already: nothing to skip
    assert sorted(stream.head(100)["text"]) == sorted(caption(i) for i in range(12))


def test_map_style_dataset_name_holds_out_a_seeded_split(tar_glob, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    config = StreamToyConfig(dataset_name=tar_glob, image_size=8, eval_size=5)
    train_split, evaluation = load_image_text_splits(config)
    assert len(train_split) == 15 and len(evaluation) == 5
    assert not set(train_split["text"]) & set(evaluation["text"])
    assert load_image_text_splits(config)[1]["text"] == evaluation["text"]  # seeded


def test_dataset_flags_are_checked():
    with pytest.raises(ValueError, match="dataset='emoji' and dataset_name='x/y' are both set"):
        StreamToyConfig(dataset="emoji", dataset_name="x/y")
    with pytest.raises(ValueError, match="streaming=True only applies with dataset_name"):
        StreamToyConfig(streaming=True)
    with pytest.raises(ValueError, match="caption_column='c' only applies"):
        StreamToyConfig(caption_column="c")
    with pytest.raises(ValueError, match="shuffle_buffer_size=-1"):
        StreamToyConfig(dataset_name="x/y", shuffle_buffer_size=-1)
    assert StreamToyConfig(dataset_name="x/y").dataset == "datasets"  # what the run records


def test_empty_training_stream_is_an_error(tmp_path):
    write_webdataset_shards(tmp_path / "wds", num_shards=1, rows_per_shard=3)
    recipe = StreamToyRecipe(stream_config(str(tmp_path / "wds" / "*.tar"), eval_size=3))
    with pytest.raises(ValueError, match="no rows"):
        run(recipe, tmp_path / "out", max_steps=2)


def test_dalle_recipes_train_on_streamed_shards(tar_glob, tmp_path):
    """Stage 1 on pixels, then stage 2 whose image tokens and captions are encoded on the fly (a stream is never
    cached), with a BPE tokenizer trained on the stream's first rows."""
    from hf_t2i import DallePipeline
    from hf_t2i.training.recipes.dalle import (
        DalleDVAERecipe,
        DalleDVAERecipeConfig,
        DallePriorRecipe,
        DallePriorRecipeConfig,
    )

    data = dict(dataset_name=tar_glob, streaming=True, image_size=16, eval_size=4, shuffle_buffer_size=8)
    dvae = DalleDVAERecipeConfig(
        **data, vocab_size=16, hidden_size=8, channel_multipliers="1,2", num_blocks_per_group=1
    )
    metrics = run(DalleDVAERecipe(dvae), tmp_path / "dvae", max_steps=2, eval_steps=2)
    assert {"eval/loss", "eval/mse"} <= set(metrics)

    prior = DallePriorRecipeConfig(
        **data,
        dvae_path=str(tmp_path / "dvae" / "final"),
        cache_dir=str(tmp_path / "cache"),
        text_vocab_size=280,
        text_seq_len=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_kernel_size=3,
    )
    recipe = DallePriorRecipe(prior)
    metrics = run(recipe, tmp_path / "prior", max_steps=2, eval_steps=2)
    assert metrics["global_step"] == 2 and "eval/loss" in metrics
    assert not list((tmp_path / "cache").glob("**/*train*.arrow"))  # the training stream was not cached
    pipe = DallePipeline.from_pretrained(tmp_path / "prior" / "final")
    image = pipe("pair 007", generator=torch.Generator().manual_seed(0), output_type="pil").images[0]
    assert image.size == (16, 16)
