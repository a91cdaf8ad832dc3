"""min-dalle -> diffusers `VQModel` (detokenizer) + fast tokenizer: the original built with random weights, saved
as min-dalle ships it, converted, and compared on fixed inputs."""

import json
import warnings

import pytest
import torch


_grad = torch.is_grad_enabled()
pytest.importorskip("min_dalle", reason="needs the original `min-dalle` package (make test-convert)")
torch.set_grad_enabled(_grad)  # min-dalle switches autograd off for the whole process when imported
pytestmark = pytest.mark.convert


def test_importing_min_dalle_leaves_autograd_on():
    assert torch.is_grad_enabled()


def test_detokenizer_parity(tmp_path):
    import convert_min_dalle_to_hf as script
    from min_dalle.models import VQGanDetokenizer

    torch.manual_seed(0)
    original = VQGanDetokenizer()
    with torch.no_grad():  # move GroupNorm affine parameters and biases off their init so a wrong mapping shows
        for p in original.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    torch.save(original.state_dict(), tmp_path / "detoker.pt")
    result = script.convert(detoker_path=tmp_path / "detoker.pt", output_dir=tmp_path / "out")
    parity = result["parity"]
    assert parity["detokenizer output (eps matched)"] <= 1e-4, parity
    assert parity["detokenizer pixels 0-255 (eps matched)"] <= 255e-4, parity
    assert parity["detokenizer output (as saved, eps 1e-6)"] <= 1e-3, parity  # diffusers' fixed GroupNorm eps
    from diffusers import VQModel

    reloaded = VQModel.from_pretrained(tmp_path / "out" / "vqgan").eval()
    codes = torch.randint(0, 16384, (1, 256), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        script.decode_codes(reloaded, codes), script.decode_codes(result["vqmodel"], codes), rtol=0, atol=0
    )


def _bpe_files(folder):
    words = ["a", "red", "circle", "cat", "cats", "playing", "chess", "on", "the", "moon", "an", "astronaut", "riding"]
    chars = sorted({c for w in words for c in w} | set(",.hzqx"))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    merges = []
    for token in chars + ["\u0120" + c for c in chars] + ["\u0120"]:
        vocab.setdefault(token, len(vocab))
    for w in words:  # merge each word left to right
        piece = "\u0120" + w[0]
        for c in w[1:]:
            merges.append(f"{piece} {c}")
            piece += c
            vocab.setdefault(piece, len(vocab))
    merges = list(dict.fromkeys(merges))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def test_tokenizer_ids_identical(tmp_path):
    import convert_min_dalle_to_hf as script

    _bpe_files(tmp_path)
    result = script.convert(model_dir=tmp_path, output_dir=tmp_path / "out")
    assert result["parity"]["tokenizer_identical"] == 1.0
    from min_dalle.text_tokenizer import TextTokenizer
    from transformers import AutoTokenizer

    original = TextTokenizer(
        json.loads((tmp_path / "vocab.json").read_text()), (tmp_path / "merges.txt").read_text().split("\n")[1:-1]
    )
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "out" / "tokenizer")
    for text in ["A  Red circle ", "cats, playing chess", "Ünïcode moon", "the astronaut riding qz"]:
        assert reloaded(text)["input_ids"] == original.tokenize(text), text


# -- the DALL·E Mega / mini prior ---------------------------------------------------------------------------------


def _original_prior(tmp_path, width=32, heads=4, layers=2):
    """min-dalle's encoder and decoder, tiny but with the real decoder vocabulary (mega: 16415 + 1 rows), random
    weights (LayerNorm affine parameters moved off their init), saved in fp16 as min-dalle ships them."""
    from min_dalle.models import DalleBartDecoder, DalleBartEncoder

    torch.manual_seed(0)
    encoder = DalleBartEncoder(
        layer_count=layers,
        embed_count=width,
        attention_head_count=heads,
        text_vocab_count=120,
        text_token_count=16,
        glu_embed_count=48,
        device="cpu",
    )
    decoder = DalleBartDecoder(
        image_vocab_count=16415,
        embed_count=width,
        attention_head_count=heads,
        glu_embed_count=48,
        layer_count=layers,
        device="cpu",
    )
    with torch.no_grad():
        for p in (*encoder.parameters(), *decoder.parameters()):
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model_dir = tmp_path / "dalle_bart_mega"
    model_dir.mkdir()
    torch.save(encoder.half().state_dict(), model_dir / "encoder.pt")
    torch.save(decoder.half().state_dict(), model_dir / "decoder.pt")
    return model_dir


@pytest.fixture(scope="module")
def detoker_file(tmp_path_factory):
    from min_dalle.models import VQGanDetokenizer

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("vqgan") / "detoker.pt"
    torch.save(VQGanDetokenizer().state_dict(), path)
    return path


def test_guidance_formula_equals_min_dalle():
    from hf_t2i.generation import ClassifierFreeGuidance

    cond, uncond = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(0)).unbind(0)
    for scale in (0.0, 1.0, 3.5, 16.0):
        torch.testing.assert_close(
            ClassifierFreeGuidance(scale).combine(torch.cat([cond, uncond])),
            uncond * (1 - scale) + cond * scale,
            rtol=0,
            atol=1e-5,
        )


def test_prior_parity_and_reload(tmp_path, detoker_file):
    import convert_min_dalle_to_hf as script
    from min_dalle.models import VQGanDetokenizer

    from hf_t2i import PartiForConditionalGeneration, PartiProcessor

    model_dir = _original_prior(tmp_path)
    _bpe_files(model_dir)
    result = script.convert(model_dir, detoker_file, tmp_path / "out", num_heads=4)
    parity = result["parity"]
    assert parity["prior text encoder states"] <= 1e-4, parity
    assert parity["prior decoder logits"] <= 1e-4, parity
    assert parity["prior guided logits (s=16)"] <= 1e-4, parity
    assert parity["prior_greedy_identical"] == 1.0, parity
    config = result["model"].config
    assert (config.decoder_vocab_size, config.image_vocab_size, config.bos_token_id) == (16416, 16384, 16383)

    reloaded = PartiForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    processor = PartiProcessor.from_pretrained(tmp_path / "out")
    text = processor(text=["a cat"])
    negative = processor(text=[""])
    assert negative["input_ids"][0, :3].tolist() == [0, 2, 1]  # min-dalle's unconditional row: <s> </s> <pad>...
    tokens = reloaded.sample_image_tokens(
        text["input_ids"],
        text["attention_mask"],
        negative["input_ids"],
        negative["attention_mask"],
        guidance_scale=16.0,
        do_sample=False,
    )
    again = result["model"].sample_image_tokens(
        text["input_ids"],
        text["attention_mask"],
        negative["input_ids"],
        negative["attention_mask"],
        guidance_scale=16.0,
        do_sample=False,
    )
    assert torch.equal(tokens, again)
    # generate() emits only codes (ids >= 16384 are masked) after the start token 16383.
    ids = reloaded.generate(**text, do_sample=False, max_new_tokens=4)
    assert ids[0, 0] == 16383 and (ids[0, 1:] < 16384).all()

    # The nested VQModel decodes as min-dalle's detokenizer does ([0, 1] mapped to [-1, 1]; diffusers' GroupNorm eps).
    original = VQGanDetokenizer().eval()
    original.load_state_dict(torch.load(detoker_file, weights_only=True))
    with torch.no_grad():
        image = original(False, tokens)  # (256, 256, 3) in [0, 255]
        pixels = reloaded.decode_image_tokens(tokens)[0].permute(1, 2, 0)
    assert (((pixels + 1) / 2 * 255) - image).abs().max() <= 0.5


@pytest.fixture(scope="module")
def tiny_vqmodel():
    """A small diffusers `VQModel` with min-dalle's codebook size and 16 x 16 grid (the error tests need no parity)."""
    from diffusers import VQModel

    return VQModel(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        latent_channels=4,
        vq_embed_dim=4,
        num_vq_embeddings=16384,
        norm_num_groups=4,
        sample_size=16,
    )


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: (d / "decoder.pt").write_bytes((d / "decoder.pt").read_bytes()[:1000]), "could not be read"),
        (lambda d: (d / "decoder.pt").unlink(), "decoder.pt not found"),
        (lambda d: (d / "decoder.pt").write_bytes((d / "encoder.pt").read_bytes()), "is it the encoder.pt"),
        (lambda d: (d / "encoder.pt").write_text('{"vocab": 1}'), "JSON"),
        (lambda d: torch.save({"extra": torch.zeros(1), **torch.load(d / "encoder.pt")}, d / "encoder.pt"), "extra"),
        (
            lambda d: torch.save(
                {**torch.load(d / "decoder.pt"), "layers.5.glu.fc2.weight": torch.zeros(1)}, d / "decoder.pt"
            ),
            "layers 0..N-1",
        ),
    ],
    ids=["truncated", "missing", "swapped", "json", "leftover-key", "layer-gap"],
)
def test_prior_bad_files_fail_clearly(tmp_path, tiny_vqmodel, corrupt, message):
    import convert_min_dalle_to_hf as script
    from conversion_utils import ConversionError

    model_dir = _original_prior(tmp_path)
    corrupt(model_dir)
    with pytest.raises(ConversionError, match=message):
        script.convert_prior(model_dir / "encoder.pt", model_dir / "decoder.pt", tiny_vqmodel, num_heads=4)


def test_prior_converts_with_a_small_vqmodel(tmp_path, tiny_vqmodel):
    import convert_min_dalle_to_hf as script

    model_dir = _original_prior(tmp_path)
    model = script.convert_prior(model_dir / "encoder.pt", model_dir / "decoder.pt", tiny_vqmodel, num_heads=4)
    assert model.config.num_image_tokens == 256
    deltas = script.check_prior_parity(
        model, *(script.load_state(model_dir / n, n) for n in ("encoder.pt", "decoder.pt")), num_heads=4
    )
    assert deltas["prior decoder logits"] <= 1e-4 and deltas["prior_greedy_identical"] == 1.0, deltas


def test_prior_needs_detokenizer(tmp_path):
    import convert_min_dalle_to_hf as script
    from conversion_utils import ConversionError

    with pytest.raises(ConversionError, match="needs --detoker"):
        script.convert(_original_prior(tmp_path), None, tmp_path / "out", check=False)


# -- the head count, which min-dalle's files do not store --------------------------------------------------------


def test_released_shapes_give_the_released_head_counts():
    import convert_min_dalle_to_hf as script
    from conversion_utils import ConversionError

    assert script.resolve_num_heads((2048, 4096, 24, 24), None) == 32  # DALL·E Mega
    assert script.resolve_num_heads((1024, 2730, 12, 12), None) == 16  # DALL·E mini
    assert script.resolve_num_heads((1024, 2730, 12, 12), 8) == 8  # the user's count wins
    # a released width with other layer counts is not a released model: its head count is unknown
    with pytest.raises(ConversionError, match="matches no released min-dalle model.*--num-heads"):
        script.resolve_num_heads((2048, 4096, 12, 12), None)
    with pytest.raises(ConversionError, match="--num-heads 5 must be a positive divisor of the width 96"):
        script.resolve_num_heads((96, 48, 1, 1), 5)


def test_a_three_head_prior_without_num_heads_is_refused(tmp_path, detoker_file, capsys):
    """The issue's false pass: a 3-head prior converted without --num-heads was compared against an original rebuilt
    with the same guessed count, printed "identical" and exited 0. Its shapes match no released model: refused."""
    import convert_min_dalle_to_hf as script
    from conversion_utils import run_main

    model_dir = _original_prior(tmp_path, width=96, heads=3, layers=1)
    argv = ["--model-dir", str(model_dir), "--detoker", str(detoker_file), "--output", str(tmp_path / "out")]
    assert run_main(script.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the prior (width 96, GLU 48, 1 encoder + 1 decoder layers) matches no released")
    assert "Pass --num-heads" in err and "Traceback" not in err and not (tmp_path / "out").exists()


def test_the_parity_check_uses_the_true_head_count(tmp_path, tiny_vqmodel):
    """The parity check builds the original with the head count it is given (the user's or the released model's),
    never with the converted model's: a prior converted with a wrong --num-heads fails against the true one."""
    import convert_min_dalle_to_hf as script

    model_dir = _original_prior(tmp_path, width=96, heads=3, layers=1)
    states = [script.load_state(model_dir / n, n) for n in ("encoder.pt", "decoder.pt")]
    wrong = script.convert_prior(model_dir / "encoder.pt", model_dir / "decoder.pt", tiny_vqmodel, num_heads=1)
    assert wrong.config.num_attention_heads == 1
    deltas = script.check_prior_parity(wrong, *states, num_heads=3)
    assert deltas["prior decoder logits"] > 1e-2 and deltas["prior_greedy_identical"] == 0.0, deltas
    right = script.convert_prior(model_dir / "encoder.pt", model_dir / "decoder.pt", tiny_vqmodel, num_heads=3)
    deltas = script.check_prior_parity(right, *states, num_heads=3)
    assert deltas["prior decoder logits"] <= 1e-4 and deltas["prior_greedy_identical"] == 1.0, deltas


# -- captions over 64 tokens -------------------------------------------------------------------------------------


def test_long_captions_differ_from_min_dalle_as_documented(tmp_path):
    """min-dalle's own `generate_raw_image_stream` keeps the first 64 ids (`<s>` + 63 text ids, no `</s>`) and makes
    its unconditional row `<s>` + the 64th id; the converted processor refuses the caption, or with
    `truncation=True` keeps `<s>`, 62 text ids and `</s>`. Up to 64 tokens the rows are identical."""
    import convert_min_dalle_to_hf as script
    from min_dalle import MinDalle
    from min_dalle.text_tokenizer import TextTokenizer

    from hf_t2i import PartiProcessor, T2IImageProcessor

    _bpe_files(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    merges = (tmp_path / "merges.txt").read_text().split("\n")[1:-1]

    class Stop(Exception):
        pass

    class RecordingEncoder(torch.nn.Module):
        def forward(self, text_tokens):
            seen.append(text_tokens)
            raise Stop

    original = MinDalle.__new__(MinDalle)  # min-dalle's own text handling, no weights
    original.tokenizer, original.text_token_count = TextTokenizer(vocab, merges), 64
    original.device, original.dtype, original.is_reusable = "cpu", torch.float32, True
    original.encoder = RecordingEncoder()

    def min_dalle_rows(text):
        seen.clear()
        with warnings.catch_warnings(), pytest.raises(Stop):
            warnings.simplefilter("ignore")  # torch.cuda.amp.autocast's notices on a CPU-only machine
            next(original.generate_raw_image_stream(text, seed=0, grid_size=1))
        return seen[0]  # (2, 64): [unconditional, caption]

    seen = []
    tokenizer = script.convert_tokenizer(tmp_path / "vocab.json", tmp_path / "merges.txt")
    processor = PartiProcessor(T2IImageProcessor(image_size=16), tokenizer)
    short = "red"
    while len(tokenizer(short + " a")["input_ids"]) <= 64:
        short += " a"
    assert len(tokenizer(short)["input_ids"]) in (63, 64)  # the longest caption that fits
    ours = processor(text=[short, ""])["input_ids"]
    torch.testing.assert_close(torch.stack([ours[1], ours[0]]), min_dalle_rows(short))
    long = " ".join(["red", "moon", "cat"] * 10)  # > 64 ids
    with pytest.raises(ValueError, match="truncation=True"):
        processor(text=[long])
    ours = processor(text=[long], truncation=True)["input_ids"][0]
    ref = min_dalle_rows(long)
    text_ids = tokenizer(long)["input_ids"][1:-1]
    assert ours.tolist() == [0, *text_ids[:62], 2]
    assert ref[1].tolist() == [0, *text_ids[:63]]
    assert ref[0, :3].tolist() == [0, text_ids[62], 1]  # min-dalle's unconditional row keeps the last kept id


# -- --push-to-hub -------------------------------------------------------------------------------------------------


def test_prior_pushes_one_pipeline_folder_with_the_hf_t2i_card(tmp_path, detoker_file, fake_hub):
    import convert_min_dalle_to_hf as script

    from hf_t2i import PartiPipeline

    model_dir = _original_prior(tmp_path, layers=1)
    _bpe_files(model_dir)
    out = tmp_path / "out"
    script.convert(model_dir, detoker_file, out, check=False, num_heads=4, push_to_hub_repo="me/mega-tiny")
    files = fake_hub.uploaded()
    assert {"README.md", "model_index.json", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    card = fake_hub.card()
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("hf_t2i", "text-to-image", "apache-2.0")
    assert {"parti", "min-dalle", "hf_t2i"} <= set(data.tags)
    assert 'PartiPipeline.from_pretrained("me/mega-tiny")' in card.text and "## Converted from min-dalle" in card.text
    assert files["README.md"] == (out / "README.md").read_bytes()
    assert isinstance(PartiPipeline.from_pretrained(out), PartiPipeline)


def test_push_without_a_prior_is_refused(tmp_path, fake_hub):
    import convert_min_dalle_to_hf as script
    from conversion_utils import ConversionError

    _bpe_files(tmp_path)
    with pytest.raises(ConversionError, match="uploads one checkpoint folder: the prior"):
        script.convert(tmp_path, None, tmp_path / "out", push_to_hub_repo="me/tokenizer")
    assert not fake_hub.calls and not (tmp_path / "out").exists()
