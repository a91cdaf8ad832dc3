"""`--report-to`: tensorboard, wandb, all or none, as in diffusers' training scripts."""

import importlib.util

import pytest

from hf_t2i.training import TrainingConfig, train

from .training_toy import ToyRecipe


def config(tmp_path, report_to, **kwargs):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=2, train_batch_size=4, log_steps=1, report_to=report_to)
    return TrainingConfig(**{**values, **kwargs})


def event_files(tmp_path):
    return list((tmp_path / "out" / "logs").glob("*/events.out.tfevents.*"))  # hparams go one level deeper


def test_unknown_tracker_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"report_to='mlflow'.*\['tensorboard', 'wandb', 'all', 'none'\]"):
        config(tmp_path, "mlflow")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_missing_wandb_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="report_to='wandb' needs the 'wandb' package: `pip install wandb`"):
        train(ToyRecipe(), config(tmp_path, "wandb"))
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.parametrize("report_to", ["all", "tensorboard"])
def test_tensorboard_gets_scalars_and_sample_grids(tmp_path, report_to):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(ToyRecipe(), config(tmp_path, report_to, sample_steps=2))
    (events,) = event_files(tmp_path)
    accumulator = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    accumulator.Reload()
    assert "train/loss" in accumulator.Tags()["scalars"] and accumulator.Tags()["images"] == ["samples"]


def test_none_writes_no_logs(tmp_path):
    train(ToyRecipe(), config(tmp_path, "none"))
    assert event_files(tmp_path) == []
