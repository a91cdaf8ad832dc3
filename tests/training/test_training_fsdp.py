"""Two CPU processes launched with the shipped FSDP config (examples/accelerate/fsdp.yaml) on a streamed, sharded
dataset, and `accelerate launch --use_fsdp` with its defaults, which no longer needs `--fsdp_sync_module_states
false` on a CPU. On a CPU Accelerate runs FSDP launches as plain data parallel (it only shards on accelerators);
these tests cover the launch path, the per-process stream split and the resume."""

import sys
import textwrap
from pathlib import Path

from .streaming_toy import caption, write_webdataset_shards
from .training_toy import ROOT, launch_two_processes


ACCELERATE = (sys.executable, "-m", "accelerate.commands.launch")

SCRIPT = textwrap.dedent(
    """
    import sys
    from tests.training.streaming_toy import StreamToyConfig, StreamToyRecipe
    from tests.training.training_toy import write_rank_marker
    from hf_t2i.training import TrainingConfig, train

    data, output_dir, max_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    recipe = StreamToyRecipe(
        StreamToyConfig(dataset_name=data, streaming=True, image_size=8, eval_size=4, shuffle_buffer_size=4)
    )
    config = TrainingConfig(
        output_dir=output_dir, max_steps=max_steps, train_batch_size=2, checkpointing_steps=2, report_to="none",
        resume_from_checkpoint="latest", log_steps=1,
    )
    metrics = train(recipe, config)
    write_rank_marker(recipe, metrics, output_dir)
    """
)


def launch(tmp_path: Path, launcher_flags: list[str], max_steps: int) -> tuple[list[dict], str]:
    """Run the script on 2 processes; return each rank's marker and the launch's stderr."""
    script = tmp_path / "train_stream.py"
    script.write_text(SCRIPT)
    data = tmp_path / "wds"
    if not data.exists():
        write_webdataset_shards(data, num_shards=4, rows_per_shard=5)
    out = tmp_path / "out"
    command = [*ACCELERATE, *launcher_flags, str(script), str(data / "*.tar"), str(out), str(max_steps)]
    return launch_two_processes(command, out, timeout=300)


def test_shipped_fsdp_config_trains_on_a_stream_split_across_processes(tmp_path):
    config = ["--config_file", str(ROOT / "examples" / "accelerate" / "fsdp.yaml"), "--main_process_port", "0"]
    markers, stderr = launch(tmp_path, config, max_steps=4)
    assert "only shards on accelerators" in stderr  # FSDP on a CPU is data parallel, and the run says so
    assert [m["world_size"] for m in markers] == [2, 2]
    held_out = {caption(i) for i in range(4)}
    for (step_0, rows_0), (step_1, rows_1) in zip(markers[0]["seen"], markers[1]["seen"], strict=True):
        assert step_0 == step_1 and not set(rows_0) & set(rows_1)  # each process reads its own shards
        assert not (set(rows_0) | set(rows_1)) & held_out
    assert markers[0]["checksum"] == markers[1]["checksum"]
    assert (tmp_path / "out" / "final" / "toy.safetensors").exists()

    markers, _ = launch(tmp_path, config, max_steps=6)  # resumes from checkpoint-000004 on both processes
    assert [m["seen"][0][0] for m in markers] == [4, 4] and markers[0]["metrics"]["global_step"] == 6


def test_use_fsdp_defaults_need_no_sync_module_states_flag_on_cpu(tmp_path):
    flags = ["--use_fsdp", "--num_processes", "2", "--num_machines", "1"]  # FSDP1, sync_module_states true
    flags += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    markers, _ = launch(tmp_path, flags, max_steps=2)  # accelerate's default --fsdp_sync_module_states is true
    assert markers[0]["checksum"] == markers[1]["checksum"] and markers[0]["metrics"]["global_step"] == 2
