"""The exact sequence likelihood of discrete-token Fluid models (raster and random order), on tiny models built here."""

import math

import pytest
import torch

from hf_t2i import FluidForConditionalGeneration, FluidPipeline, FluidProcessor, T2IImageProcessor
from hf_t2i.evaluation.sequence_nll import format_report, main, sequence_nll, token_nll

from ..models.test_fluid import tiny_fluid_config


def make_pipeline(tokenizer, order: str, token_type: str = "discrete") -> FluidPipeline:
    torch.manual_seed(0)
    config = tiny_fluid_config(
        token_type, order, text_vocab_size=len(tokenizer), text_seq_len=tokenizer.model_max_length
    )
    model = FluidForConditionalGeneration(config).eval()
    if token_type == "discrete":
        torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # logits that differ between tokens
    return FluidPipeline(model=model, processor=FluidProcessor(T2IImageProcessor(image_size=16), tokenizer))


def captions(tokenizer, batch: int):
    text = tokenizer(
        ["a red circle", "two blue squares", "a green triangle"][:batch], padding="max_length", return_tensors="pt"
    )
    return text["input_ids"], text["attention_mask"]


def test_raster_order_is_the_teacher_forced_loss(tokenizer):
    model = make_pipeline(tokenizer, "raster").model
    ids, mask = captions(tokenizer, 3)
    tokens = torch.randint(0, model.config.image_vocab_size, (3, model.config.num_image_tokens))
    nll = token_nll(model, ids, mask, tokens, None)
    with torch.no_grad():
        loss = model(ids, mask, image_tokens=tokens).loss
    assert nll.shape == tokens.shape
    torch.testing.assert_close(nll.mean(), loss, rtol=1e-5, atol=1e-6)


def test_random_order_reads_each_token_with_exactly_the_ones_drawn_before(tokenizer):
    model = make_pipeline(tokenizer, "random").model
    ids, mask = captions(tokenizer, 2)
    n = model.config.num_image_tokens
    tokens = torch.randint(0, model.config.image_vocab_size, (2, n))
    orders = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])
    nll = token_nll(model, ids, mask, tokens, orders)
    expected = torch.empty(2, n)
    with torch.no_grad():  # the public forward, one image and one step at a time
        for b in range(2):
            for k in range(n):
                hidden = torch.ones(n, dtype=torch.bool)
                hidden[orders[b, :k]] = False  # drawn before step k: visible
                logits = model(
                    ids[b : b + 1],
                    mask[b : b + 1],
                    image_tokens=tokens[b : b + 1],
                    mask=hidden[None],
                    return_loss=False,
                ).logits[0, orders[b, k]]
                expected[b, k] = -logits.float().log_softmax(-1)[tokens[b, orders[b, k]]]
    torch.testing.assert_close(nll, expected, rtol=1e-4, atol=1e-5)
    assert nll[:, -1].mean() != nll[:, 0].mean()  # the context changes the prediction


@pytest.mark.parametrize("order", ["raster", "random"])
def test_a_head_that_knows_nothing_scores_log_vocab(tokenizer, order):
    pipe = make_pipeline(tokenizer, order)
    with torch.no_grad():
        pipe.model.lm_head.weight.zero_()
        if pipe.model.lm_head.bias is not None:
            pipe.model.lm_head.bias.zero_()
    report = sequence_nll(pipe, num_images=3, batch_size=2)
    vocab = math.log(pipe.model.config.image_vocab_size)
    assert report["order"] == order and report["num_images"] == 3
    assert report["num_tokens"] == pipe.model.config.num_image_tokens
    assert report["nll_per_token"] == pytest.approx(vocab, rel=1e-5)
    assert report["by_quarter"] == pytest.approx([vocab] * 4, rel=1e-5)


def test_report_is_seeded_and_raster_order_does_not_depend_on_the_batch_size(tokenizer):
    pipe = make_pipeline(tokenizer, "random")
    a = sequence_nll(pipe, num_images=4, seed=1, batch_size=4)
    assert a == sequence_nll(pipe, num_images=4, seed=1, batch_size=4)
    assert a["nll_per_token"] != sequence_nll(pipe, num_images=4, seed=2)["nll_per_token"]
    raster = make_pipeline(tokenizer, "raster")
    b = sequence_nll(raster, num_images=4, batch_size=3)
    assert b["nll_per_token"] == pytest.approx(sequence_nll(raster, num_images=4, batch_size=1)["nll_per_token"])
    header, rule, row = format_report(b).splitlines()
    assert row.startswith("| raster | 4 |") and header.count("|") == rule.count("|") == row.count("|") == 5


def test_refuses_a_continuous_model_and_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="discrete tokens.*token_type='continuous'"):
        sequence_nll(make_pipeline(tokenizer, "random", "continuous"))
    pipe = make_pipeline(tokenizer, "raster")
    with pytest.raises(ValueError, match="`num_images` must be an int >= 1, got 0"):
        sequence_nll(pipe, num_images=0)
    with pytest.raises(ValueError, match="`batch_size`"):
        sequence_nll(pipe, batch_size=True)


def test_command_prints_the_table(tokenizer, tmp_path, capsys):
    make_pipeline(tokenizer, "random").save_pretrained(tmp_path)
    assert main([str(tmp_path), "--num-images", "2"]) == 0
    assert "| random | 2 |" in capsys.readouterr().out
