"""Tiny image-caption shards written in a test (webdataset .tar and parquet), and a recipe that trains a linear layer
on them through `load_image_text_splits` and records which captions it trained on. Shared by the streaming tests
and by the scripts their multi-process launches run."""

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import datasets
import torch
from PIL import Image

from hf_t2i.training import Recipe
from hf_t2i.training.recipes.common import ImageTextDataConfig, load_image_text_splits, with_pixel_values


def caption(index: int) -> str:
    return f"pair {index:03d}"


def png_bytes(index: int, size: int = 8) -> bytes:
    """A small RGBA PNG whose colour encodes `index` (RGBA, so loading must convert it to RGB)."""
    buffer = io.BytesIO()
    Image.new("RGBA", (size, size), (index * 7 % 256, index * 13 % 256, 90, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_webdataset_shards(folder: Path, num_shards: int, rows_per_shard: int) -> list[Path]:
    """LAION-style shards: `<key>.png`, `<key>.txt` and `<key>.json` members per pair; captions 'pair 000', ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        path = folder / f"shard-{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for row in range(rows_per_shard):
                index = shard * rows_per_shard + row
                members = {
                    "png": png_bytes(index),
                    "txt": caption(index).encode(),
                    "json": json.dumps({"index": index}).encode(),
                }
                for extension, payload in members.items():
                    info = tarfile.TarInfo(f"{index:06d}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths


def write_parquet_shards(folder: Path, num_shards: int, rows_per_shard: int, split: str = "train") -> list[Path]:
    """Parquet files `<split>-0000i.parquet` with columns `picture` (image bytes), `caption` and `index`."""
    folder.mkdir(parents=True, exist_ok=True)
    features = datasets.Features(
        {"picture": datasets.Image(), "caption": datasets.Value("string"), "index": datasets.Value("int64")}
    )
    paths = []
    for shard in range(num_shards):
        indices = [shard * rows_per_shard + row for row in range(rows_per_shard)]
        rows = {
            "picture": [{"bytes": png_bytes(i), "path": None} for i in indices],
            "caption": [caption(i) for i in indices],
            "index": indices,
        }
        path = folder / f"{split}-{shard:05d}.parquet"
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
        paths.append(path)
    return paths


@dataclasses.dataclass
class StreamToyConfig(ImageTextDataConfig):
    crash_at_step: int | None = None  # raise in training_step once `step` reaches this (a simulated crash)


class StreamToyRecipe(Recipe):
    """A linear layer regressing the mean colour of 8x8 images; records the captions of every training batch."""

    name = "stream_toy"
    config_class = StreamToyConfig

    def __init__(self, config=None):
        super().__init__(config)
        self.seen: list[tuple[int, list[str]]] = []  # (step, captions) per micro-batch

    def _splits(self):
        if not hasattr(self, "_data"):
            self._data = load_image_text_splits(self.config)
        return self._data

    def build_model(self):
        return torch.nn.Linear(3 * self.config.image_size**2, 3)

    def build_train_dataset(self):
        return with_pixel_values(self._splits()[0], self.config.image_size, keep=("text",))

    def build_eval_dataset(self):
        return with_pixel_values(self._splits()[1], self.config.image_size, keep=("text",))

    def collate_fn(self, rows):
        return {"pixel_values": torch.stack([row["pixel_values"] for row in rows]), "text": [r["text"] for r in rows]}

    def training_step(self, model, batch, step):
        if self.config.crash_at_step is not None and step >= self.config.crash_at_step:
            raise RuntimeError(f"simulated crash at step {step}")
        pixels = batch["pixel_values"]
        target = pixels.mean(dim=(2, 3))  # (B, 3)
        loss = torch.nn.functional.mse_loss(model(pixels.flatten(1)), target)
        if model.training:
            self.seen.append((step, list(batch["text"])))
        return loss, {}

    def save_pretrained(self, model, output_dir):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{output_dir}/toy.safetensors")
