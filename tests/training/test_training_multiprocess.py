"""Two real processes (gloo on CPU) through `torchrun`, as `accelerate launch --multi_gpu` would start them."""

import os
import sys
import textwrap
from pathlib import Path

import pytest

from .training_toy import TORCHRUN, launch_two_processes


SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from tests.training.training_toy import ToyConfig, ToyRecipe, write_rank_marker
    from hf_t2i.training import TrainingConfig, train

    output_dir, max_steps = sys.argv[1], int(sys.argv[2])
    recipe = ToyRecipe(ToyConfig(num_samples=32))
    config = TrainingConfig(
        output_dir=output_dir, max_steps=max_steps, train_batch_size=4, checkpointing_steps=2,
        ema_decay=0.9, report_to="none", resume_from_checkpoint="latest", log_steps=1,
    )
    metrics = train(recipe, config)
    write_rank_marker(recipe, metrics, output_dir)
    """
)


def launch(tmp_path: Path, max_steps: int) -> list[dict]:
    """Run the script on 2 processes; return each rank's marker."""
    script = tmp_path / "train_two.py"
    script.write_text(SCRIPT)
    command = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path / "out"), str(max_steps)]
    return launch_two_processes(command, tmp_path / "out", timeout=600)[0]


def test_two_processes_train_shard_and_resume(tmp_path):
    markers = launch(tmp_path, max_steps=4)
    assert [m["rank"] for m in markers] == [0, 1] and {m["world_size"] for m in markers} == {2}
    # Each step, the two ranks see disjoint halves of one global batch; DDP keeps their weights equal.
    for (step_0, idx_0), (step_1, idx_1) in zip(markers[0]["seen"], markers[1]["seen"], strict=True):
        assert step_0 == step_1 and not set(idx_0) & set(idx_1)
    assert markers[0]["checksum"] == markers[1]["checksum"]
    assert markers[0]["metrics"]["train_loss"] == markers[1]["metrics"]["train_loss"]  # reduced over ranks
    out = tmp_path / "out"
    assert (out / "final" / "toy.safetensors").exists()
    assert {"rng_state_0.safetensors", "rng_state_1.safetensors"} <= set(os.listdir(out / "checkpoint-000004"))

    # Same command again with more steps: both ranks resume from checkpoint-000004.
    markers = launch(tmp_path, max_steps=6)
    assert [m["seen"][0][0] for m in markers] == [4, 4]
    assert markers[0]["checksum"] == markers[1]["checksum"] and markers[0]["metrics"]["global_step"] == 6


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
