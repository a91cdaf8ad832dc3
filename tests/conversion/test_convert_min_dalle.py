"""min-dalle -> diffusers `VQModel` (detokenizer) + fast tokenizer: the original built with random weights, saved
as min-dalle ships it, converted, and compared on fixed inputs."""

import json

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
