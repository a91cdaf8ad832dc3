"""A training step must not make the host wait for the accelerator more than a few times, whatever the batch size.

On a GPU, `.item()`, `.tolist()`, `bool(tensor)` and boolean-mask indexing each wait until the device has finished
all queued work. Transfusion's recipe used to wait per row (2 x batch + 16 times a step); on an H200 shared
with four other trainings it ran 15x slower than alone, where the other recipes lost about 2x (the likely cause; not
measured apart). The tensors here are on the CPU, so this counts the calls that would wait on a GPU, with
benchmarks/_waits.py (the optimizer's `.item()` reads CPU step counters and does not wait)."""

from pathlib import Path

import pytest
import torch

from hf_t2i.training import TrainingConfig, train
from hf_t2i.training import trainer as trainer_module
from hf_t2i.training.recipes.dalle import DallePriorRecipe, DallePriorRecipeConfig
from hf_t2i.training.recipes.fluid import FluidRecipe, FluidRecipeConfig
from hf_t2i.training.recipes.muse import MuseRecipe, MuseRecipeConfig
from hf_t2i.training.recipes.parti import PartiPriorRecipe, PartiPriorRecipeConfig
from hf_t2i.training.recipes.transfusion import TransfusionRecipe, TransfusionRecipeConfig


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


# family -> (recipe, config class, the most waits one micro-step may make)
FAMILIES = {
    "parti": (PartiPriorRecipe, PartiPriorRecipeConfig, 0),
    "fluid": (FluidRecipe, FluidRecipeConfig, 1),  # the masked positions (their number varies)
    "muse": (MuseRecipe, MuseRecipeConfig, 2),  # the masked positions, the range of the codes
    "dalle": (DallePriorRecipe, DallePriorRecipeConfig, 2),  # the ranges of the text ids and the image ids
    # the sequences are written on the host (captions and draws read once each), one read of the image spans, the
    # text targets
    "transfusion": (TransfusionRecipe, TransfusionRecipeConfig, 4),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_training_step_waits_for_the_device_a_fixed_few_times(family, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from _waits import HostWaits

    recipe_class, config_class, budget = FAMILIES[family]
    steps = []
    micro_step = trainer_module._TrainingRun._micro_step

    def counted(self, batch):
        with HostWaits() as waits:
            micro_step(self, batch)
        steps.append((batch_rows(batch), waits.counts))

    monkeypatch.setattr(trainer_module._TrainingRun, "_micro_step", counted)
    config = config_class(
        dataset="shapes", dataset_size=12, eval_size=8, pretrained_model_name_or_path=family, cache_dir=str(tmp_path)
    )
    run = TrainingConfig(output_dir=str(tmp_path / "run"), max_steps=2, train_batch_size=8, report_to="none",
                         log_steps=100, eval_steps=100, sample_steps=100, checkpointing_steps=100)  # fmt: skip
    train(recipe_class(config), run)
    # the second micro-step has 4 rows, the first 8: the same waits in both, within the budget
    assert [rows for rows, _ in steps] == [8, 4]
    (_, first), (_, second) = steps
    assert first == second, f"{family}: the waits depend on the batch size: {dict(first)} vs {dict(second)}"
    assert sum(second.values()) <= budget, f"{family}: {sum(second.values())} waits a step: {dict(second)}"


def batch_rows(batch) -> int:
    return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))


def test_the_counter_sees_each_kind_of_wait_and_leaves_the_optimizer_out(monkeypatch):
    """Without this, a counter that saw nothing would pass every budget above."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from _waits import HostWaits

    x = torch.arange(6.0)
    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.ones(3)
    optimizer = torch.optim.AdamW([parameter])
    with HostWaits() as waits:
        x.sum().item()
        x.tolist()
        bool(x.any())
        x[x > 2]
        x.nonzero()
        optimizer.step()  # reads its CPU step counter with `.item()`: not a wait
        optimizer.step()
    assert waits.total == 5, dict(waits.counts)
