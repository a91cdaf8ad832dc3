"""The caption-binding probe of continuous Fluid heads, on the shipped fluid checkpoint (64 px, which binds the
caption: another image's caption makes its x0 predictions clearly worse)."""

import pytest
import torch

from hf_t2i.checkpoints import resolve_checkpoint
from hf_t2i.evaluation.caption_binding import caption_binding_probe, main
from hf_t2i.pipelines import T2IPipeline


@pytest.fixture(scope="module")
def fluid():
    return T2IPipeline.from_pretrained(resolve_checkpoint("fluid"), dtype=torch.float32)


def test_shipped_fluid_binds_the_caption(fluid):
    report = caption_binding_probe(fluid, num_images=8, timesteps=(300, 850), num_noise_draws=2)
    assert set(report) == {"zero_predictor", "true", "swapped", "empty"}
    true, swapped = report["true"], report["swapped"]
    assert true[300] < true[850] < report["zero_predictor"]  # more noise, less known; still far better than 0
    assert all(swapped[t] > 1.2 * true[t] for t in (300, 850))


def test_probe_refuses_bad_arguments(fluid):
    with pytest.raises(ValueError, match="num_images"):
        caption_binding_probe(fluid, num_images=1)
    # a model of another kind: tests/evaluation/test_context_probe.py checks both probes


def test_command_prints_the_report(capsys):
    assert main(["fluid", "--num-images", "2"]) == 0
    assert '"swapped"' in capsys.readouterr().out
