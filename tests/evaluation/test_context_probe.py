"""The context probe of random-order Fluid backbones (does the backbone read the tokens it has revealed?), on copies
of the shipped fluid checkpoint whose attention or head is made to ignore the context."""

import copy

import pytest
import torch

from hf_t2i.checkpoints import resolve_checkpoint
from hf_t2i.evaluation.caption_binding import caption_binding_probe
from hf_t2i.evaluation.context_probe import DISTANCES, context_probe, format_report, main
from hf_t2i.pipelines import T2IPipeline


@pytest.fixture(scope="module")
def fluid():
    return T2IPipeline.from_pretrained(resolve_checkpoint("fluid"), dtype=torch.float32)


def test_uniform_attention_reads_one_at_every_distance(fluid):
    pipe = copy.deepcopy(fluid)
    with torch.no_grad():
        for layer in pipe.model.model.layers:  # zero queries: every key gets the same score
            qkv = layer.self_attn.qkv_proj
            width = qkv.weight.shape[1]
            qkv.weight[:width].zero_()
            qkv.bias[:width].zero_()
    report = context_probe(pipe, num_images=4)
    assert len(report["attention"]) == pipe.model.config.num_hidden_layers
    for cells in report["attention"]:
        assert set(cells) == set(DISTANCES)
        assert all(abs(value - 1.0) < 1e-4 for value in cells.values())
    assert pipe.model.config._attn_implementation == fluid.model.config._attn_implementation  # restored


def test_x0_error_ignores_the_context_when_the_head_ignores_its_condition(fluid):
    pipe = copy.deepcopy(fluid)
    head = pipe.model.diffusion_head
    with torch.no_grad():  # the condition enters only through the modulations
        for block in head.blocks:
            block.modulation[-1].weight.zero_()
        head.final_modulation[-1].weight.zero_()
    report = context_probe(pipe, num_images=4, visible_fractions=(0.0, 0.9))
    errors = list(report["x0_error"].values())
    assert errors[0] == pytest.approx(errors[1], rel=1e-6) and report["token_variance"] > 0

    shipped = context_probe(fluid, num_images=4, visible_fractions=(0.0, 0.9))
    assert shipped["x0_error"][0.0] != shipped["x0_error"][0.9]  # the real head reads its condition
    assert "| 90% |" in format_report(shipped) and "| d = >=4 |" in format_report(shipped)


def test_probe_refuses_bad_arguments(fluid):
    with pytest.raises(ValueError, match="num_images"):
        context_probe(fluid, num_images=0)
    with pytest.raises(ValueError, match="masked_fraction"):
        context_probe(fluid, masked_fraction=1.0)
    with pytest.raises(ValueError, match="timestep"):
        context_probe(fluid, timestep=1000)


@pytest.mark.parametrize("probe", [context_probe, caption_binding_probe])
def test_probes_refuse_a_model_of_another_kind(fluid, probe):
    fluid.model.config.generation_order = "raster"
    try:
        with pytest.raises(ValueError, match="random order.*generation_order='raster'"):
            probe(fluid)
    finally:
        fluid.model.config.generation_order = "random"


def test_command_prints_the_tables(capsys):
    assert main(["fluid", "--num-images", "2"]) == 0
    out = capsys.readouterr().out
    assert "| layer | d = 1 |" in out and "x0 error" in out
