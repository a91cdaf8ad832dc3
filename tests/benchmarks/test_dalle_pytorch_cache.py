"""dalle-pytorch 1.6.6's KV cache in `DALLE.generate_images`, as benchmarks/bench_dalle.py's peer row fixes it
(`fix_guided_cache`). With top-1 sampling, the fixed cached loop samples the same tokens as dalle-pytorch's model run
without a cache, with and without guidance, and it really uses the cache; upstream's cached loop under guidance
samples other tokens, and upstream's cache does nothing without guidance (the bugs the fix documents).

Tiny model (width 32, 2 layers, a 4 x 4 grid of 16 codes), seeded; skipped where dalle-pytorch cannot be imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TEXT_LEN, CODES = 6, 16
GRID_TOKENS = 16  # a 16 px image downsampled twice: 4 x 4
#: `top_k(logits, thres)` keeps max(int((1 - thres) * n), 1) logits: thres 1 keeps one, so the Gumbel draw is argmax
TOP_1 = 1.0


@pytest.fixture
def peer(monkeypatch):
    """bench_dalle and dalle-pytorch's model module. `_peers.import_dalle_pytorch` registers a bare `dalle_pytorch`
    package (its `__init__` needs omegaconf / taming); it is taken out of `sys.modules` afterwards, so that a later
    import of the real package in this process is not served the bare one."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    before = {name: module for name, module in sys.modules.items() if name.startswith("dalle_pytorch")}
    import _peers
    import bench_dalle

    module, note = _peers.import_dalle_pytorch()
    try:
        if module is None:
            pytest.skip(note)
        yield bench_dalle, module
    finally:
        for name in [name for name in sys.modules if name.startswith("dalle_pytorch")]:
            del sys.modules[name]
        sys.modules.update(before)


def tiny_dalle(module):
    """A 2-layer DALLE with dalle-pytorch's defaults (full causal attention, rotary embeddings, token shift). Its
    LayerScale starts the residual branches at 0.1; at 1 the prompt moves the tokens enough for guidance to matter."""
    torch.manual_seed(0)
    vae = module.DiscreteVAE(image_size=16, num_tokens=CODES, codebook_dim=32, num_layers=2)
    dalle = module.DALLE(dim=32, vae=vae, num_text_tokens=50, text_seq_len=TEXT_LEN, depth=2, heads=2, dim_head=16)
    for layer in dalle.modules():
        if type(layer).__name__ == "LayerScale":
            layer.scale.data.fill_(1.0)
    dalle.vae.decode = lambda image_ids: image_ids  # generate_images returns the codes, as in the benchmark
    return dalle.eval()


def prompts() -> torch.Tensor:
    return torch.randint(1, 50, (2, TEXT_LEN), generator=torch.Generator().manual_seed(3))  # no 0: its pad id


def generate(dalle, text: torch.Tensor, scale: float, use_cache: bool) -> torch.Tensor:
    torch.manual_seed(0)
    return dalle.generate_images(text, filter_thres=TOP_1, cond_scale=scale, use_cache=use_cache)


@torch.no_grad()
def reference(dalle, text: torch.Tensor, scale: float) -> torch.Tensor:
    """The tokens that dalle-pytorch's model gives without a cache: at each step the full sequence through `forward`,
    conditioned and (under guidance) with the null prompt, mixed by `forward_with_cond_scale`'s formula; argmax."""
    out = text.clone()
    for _ in range(GRID_TOKENS):
        prompt, image = out[:, :TEXT_LEN], out[:, TEXT_LEN:]
        logits = dalle(prompt.clone(), image)[:, -1]
        if scale != 1.0:
            null_logits = dalle(prompt.clone(), image, null_cond_prob=1.0)[:, -1]
            logits = null_logits + (logits - null_logits) * scale
        out = torch.cat([out, logits.argmax(-1, keepdim=True) - dalle.num_text_tokens], dim=1)
    return out[:, TEXT_LEN:]


def transformer_lengths(dalle) -> list[int]:
    """A list that gets the sequence length of every call of the model's transformer."""
    lengths = []
    dalle.transformer.register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1]))
    return lengths


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_fixed_cache_samples_the_uncached_tokens_and_runs_one_token_per_step(peer, scale):
    bench_dalle, module = peer
    dalle = tiny_dalle(module)
    text = prompts()
    expected = reference(dalle, text, scale)
    bench_dalle.fix_guided_cache(dalle)
    lengths = transformer_lengths(dalle)
    cached = generate(dalle, text, scale, use_cache=True)
    passes = 1 if scale == 1.0 else 2  # conditional, then unconditional
    assert lengths == [1 + TEXT_LEN] * passes + [1] * passes * (GRID_TOKENS - 1)  # prefill, then one token
    assert cached.shape == (2, GRID_TOKENS) and torch.equal(cached, expected)
    assert torch.equal(generate(dalle, text, scale, use_cache=False), expected)
    assert torch.equal(text, prompts())  # the unconditional pass no longer zeroes the caller's prompt
    if scale != 1.0:  # guidance changes this model's tokens, so the guided check is not the unguided one again
        assert not torch.equal(expected, reference(dalle, text, 1.0))


def test_upstream_cache_is_unused_without_guidance_and_wrong_with_it(peer):
    """Documents dalle-pytorch 1.6.6's bugs that `fix_guided_cache` mends (its docstring has the reasons)."""
    _, module = peer
    dalle = tiny_dalle(module)
    lengths = transformer_lengths(dalle)
    generate(dalle, prompts(), 1.0, use_cache=True)
    assert lengths == list(range(1 + TEXT_LEN, 1 + TEXT_LEN + GRID_TOKENS))  # the whole prefix at every step
    text = prompts()
    assert not torch.equal(generate(dalle, text, 3.0, use_cache=True), reference(dalle, prompts(), 3.0))
    assert (text == 0).all()  # its unconditional pass zeroed the caller's prompt in place
    assert not torch.equal(generate(dalle, prompts(), 3.0, use_cache=False), reference(dalle, prompts(), 3.0))


def test_missing_peers_are_skipped_with_their_install_hints(monkeypatch):
    """Without min-dalle and dalle-pytorch, bench_dalle.py runs our rows only and says how to add theirs."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _peers
    import bench_dalle

    find_spec = _peers.importlib.util.find_spec
    missing = ("min_dalle", "dalle_pytorch")
    monkeypatch.setattr(_peers.importlib.util, "find_spec", lambda name: None if name in missing else find_spec(name))
    cells = bench_dalle.plan("quick", [1], 3.0)
    peers, skipped, notes, vqgan = bench_dalle.load_peers(cells, with_vqgan=False)
    assert peers == {} and vqgan is None
    assert "pip install --no-deps dalle-pytorch==1.6.6" in skipped["dalle-pytorch"]
    assert "pip install --no-deps min-dalle==0.4.11" in skipped["min-dalle"] and len(notes) == 2
    text = torch.ones(1, 8, dtype=torch.long)
    cases, peer_cases = bench_dalle.cell_cases(None, peers, None, text, None, None, 3.0, cells[0].cases)
    assert [case.name for case in cases] == [bench_dalle.OURS_SAMPLE] and peer_cases == {}
