"""`load_image_text_dataset`: shards and folders `datasets` reads, standardized to `image` (RGB) and `text`."""

import datasets
import pytest

from hf_t2i.data import load_image_text_dataset

from ..training.streaming_toy import caption, write_parquet_shards, write_webdataset_shards


@pytest.mark.parametrize("streaming", [False, True])
def test_webdataset_shards_need_no_column_flags(tmp_path, streaming):
    write_webdataset_shards(tmp_path / "wds", num_shards=2, rows_per_shard=3)
    dataset = load_image_text_dataset(
        str(tmp_path / "wds" / "*.tar"), split="train", streaming=streaming, cache_dir=str(tmp_path / "cache")
    )
    assert isinstance(dataset, datasets.IterableDataset if streaming else datasets.Dataset)
    rows = list(dataset)
    assert [row["text"] for row in rows] == [caption(i) for i in range(6)]  # `txt` -> text; json, __key__ dropped
    assert set(rows[0]) == {"image", "text"} and rows[0]["image"].mode == "RGB"  # RGBA PNG -> RGB


def test_parquet_folder_keeps_its_splits_and_takes_named_columns(tmp_path):
    write_parquet_shards(tmp_path / "pq", num_shards=2, rows_per_shard=2)
    write_parquet_shards(tmp_path / "pq", num_shards=1, rows_per_shard=1, split="validation")
    splits = load_image_text_dataset(
        str(tmp_path / "pq"), image_column="picture", caption_column="caption", cache_dir=str(tmp_path / "cache")
    )
    assert {name: len(split) for name, split in splits.items()} == {"train": 4, "validation": 1}
    assert splits["train"].column_names == ["image", "text"]


def test_save_to_disk_folder(tmp_path):
    write_parquet_shards(tmp_path / "pq", num_shards=1, rows_per_shard=2)
    saved = datasets.load_dataset("parquet", data_dir=str(tmp_path / "pq"), cache_dir=str(tmp_path / "cache"))
    saved["train"].rename_column("caption", "text").save_to_disk(str(tmp_path / "saved"))
    stream = load_image_text_dataset(str(tmp_path / "saved"), split="train", image_column="picture", streaming=True)
    assert [row["text"] for row in stream] == [caption(0), caption(1)]


def test_errors_name_the_argument_and_the_fix(tmp_path):
    write_parquet_shards(tmp_path / "pq", num_shards=1, rows_per_shard=2)
    glob = str(tmp_path / "pq" / "*.parquet")
    with pytest.raises(ValueError, match=r"none of the columns \['picture', 'caption', 'index'\].*image_column"):
        load_image_text_dataset(glob, split="train", streaming=True)
    with pytest.raises(ValueError, match="caption_column='index' holds"):
        load_image_text_dataset(glob, split="train", image_column="picture", caption_column="index", streaming=True)
    with pytest.raises(ValueError, match="image_column='nope' is not a column"):
        load_image_text_dataset(glob, split="train", image_column="nope", streaming=True)
    with pytest.raises(ValueError, match="split='test' is not a split"):
        load_image_text_dataset(glob, split="test", image_column="picture", streaming=True)
    with pytest.raises(ValueError, match="matches no file"):
        load_image_text_dataset(str(tmp_path / "none" / "*.tar"))
    (tmp_path / "pq" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="one format"):
        load_image_text_dataset(str(tmp_path / "pq" / "*"))
    with pytest.raises(ValueError, match="neither an existing folder"):
        load_image_text_dataset("./missing/folder")
