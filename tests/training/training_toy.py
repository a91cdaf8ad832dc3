"""A tiny recipe for the training-loop tests: a 2-layer MLP regressing a fixed function of 4 random inputs.

The training step adds input noise from the global RNG and from `self.generator`, and the model has dropout, so an
exact resume also needs the RNG states of the checkpoint. Shared by the tests and by the two-process test's script.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import torch
from PIL import Image

from hf_t2i.training import Recipe, RecipeConfig


# `torchrun` of the interpreter running the tests: a virtual environment's launcher, whether or not its bin/ is on PATH.
TORCHRUN = (sys.executable, "-m", "torch.distributed.run")
ROOT = Path(__file__).resolve().parents[2]


def write_rank_marker(recipe, metrics: dict, output_dir: str) -> None:
    """In a launched process after `train`: write `rank<i>.json` with what this process saw (`recipe.seen`), a checksum
    of its unwrapped model's weights and the run's metrics, for the two-process tests to compare."""
    accelerator = recipe.accelerator
    model = accelerator.unwrap_model(accelerator._models[0])
    marker = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "seen": recipe.seen,
        "checksum": sum(p.double().sum().item() for p in model.parameters()),
        "metrics": metrics,
    }
    with open(os.path.join(output_dir, f"rank{accelerator.process_index}.json"), "w") as f:
        json.dump(marker, f)


def launch_two_processes(command: list[str], output_dir: Path, timeout: int) -> tuple[list[dict], str]:
    """Run a launcher command (torchrun / accelerate launch of a script calling `write_rank_marker`) with the repository
    importable and one thread per process; return the two ranks' markers and the launch's stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=output_dir.parent)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)], result.stderr


@dataclasses.dataclass
class ToyConfig(RecipeConfig):
    hidden: int = dataclasses.field(default=16, metadata={"help": "MLP width"})
    num_samples: int = 20
    input_noise: float = 0.05
    crash_at_step: int | None = None  # raise in training_step once `step` reaches this (a simulated crash)


def toy_dataset(num_samples: int, seed: int = 0) -> datasets.Dataset:
    """Rows `x` (4,), `y` (2,) and their index `idx`, in torch format."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, 4, generator=generator)
    y = torch.stack([2 * x[:, 0] - x[:, 1], x[:, 2] * x[:, 3]], dim=1)  # (N, 2)
    data = {"x": x.tolist(), "y": y.tolist(), "idx": list(range(num_samples))}
    return datasets.Dataset.from_dict(data).with_format("torch")


class ToyRecipe(Recipe):
    """MLP regression; records the data it saw and its losses."""

    name = "toy"
    config_class = ToyConfig

    def __init__(self, config=None):
        super().__init__(config)
        self.seen: list[tuple[int, list[int]]] = []  # (step, dataset indices) per micro-batch
        self.losses: list[float] = []

    def build_model(self):
        hidden = self.config.hidden
        return torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(hidden, 2)
        )

    def build_train_dataset(self):
        return toy_dataset(self.config.num_samples)

    def training_step(self, model, batch, step):
        if self.config.crash_at_step is not None and step >= self.config.crash_at_step:
            raise RuntimeError(f"simulated crash at step {step}")
        # Noise from the global RNG (restored by Accelerate) and from the recipe's generator (restored by train).
        noise = torch.randn_like(batch["x"]) + torch.randn(batch["x"].shape, generator=self.generator)
        x = batch["x"] + self.config.input_noise * noise
        loss = torch.nn.functional.mse_loss(model(x), batch["y"])
        if model.training:
            self.seen.append((step, batch["idx"].tolist()))
            self.losses.append(loss.item())
        return loss, {"abs_y": batch["y"].abs().mean().item()}

    def sample_images(self, model, step):
        return [Image.new("RGB", (4, 4), (60 * i, 0, 0)) for i in range(3)]

    def save_pretrained(self, model, output_dir):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{output_dir}/toy.safetensors")


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide singletons, as a new process would (a crash, another precision)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
