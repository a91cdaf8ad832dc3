"""How far the DALL-E prior's decode step is from the floor of eager PyTorch doing the same arithmetic.

The question behind it: is the batch-1 decode slow because of our code (modules, the transformers `Cache`, mask
slicing, config reads), or because of what any eager PyTorch program pays for these kernels on this machine? Rows,
per batch (guided, so the model sees 2 x batch rows), at the common config of `_timing`:

- ours: `DalleForConditionalGeneration.image_generation_step`, the step that `sample_image_tokens` and
  `DallePipeline` run, fed a fixed random code sequence (teacher forcing, so no sampling op is timed);
- bare: the same arithmetic as the fewest eager torch calls: the model's own weight tensors held in a plain list,
  the key/value tensors of the same preallocated `StaticCache` written in place, SDPA on the filled slots with the
  same sparse-mask rows (precomputed for every position); no modules, no `Cache` API, no config reads. Its logits
  equal ours (checked before timing, max |difference| printed);
- bare, compiled (`--compile`): the bare step in a static-shape form (every cache slot attended, the position a
  tensor) under `torch.compile` with inductor's weight freezing (CPU weight prepacking); its compile time is printed
  apart and not timed;
- bare, bf16 (`--bf16`): the bare step on a bfloat16 copy of the model (weights, cache and activations), the
  prefill run by that copy: what halving the bytes buys. A precision change, so its logits differ from ours; the
  difference is printed, not checked;
- the bandwidth floor: the bytes one step must read (every weight of the decode path, and the filled keys/values,
  fp32) / the machine's copy bandwidth (`_flops.memory_bandwidth_gbs`).

Every timed call runs the prefill with our code (the same in all rows) and then the 255 decode steps, so the rows
differ only in the decode step. The cases of one batch are timed interleaved, round after round (`_timing`).

    python benchmarks/bench_decode_floor.py --threads 1 [--repeats 5] [--batches 1 8] [--compile] [--bf16] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import time

import torch
import torch.nn.functional as F
from _timing import (
    GRID,
    TEXT_TOKENS,
    TEXT_VOCAB,
    Case,
    add_common_arguments,
    apply_common_arguments,
    finish,
    format_table,
    machine_info,
    machine_line,
    paired_ratio,
    run_interleaved,
    timing_line,
)
from bench_dalle import build_ours

from hf_t2i.generation import SamplingConfig


GUIDANCE_SCALE = 3.0


class BareDecoder:
    """The decode step of a `DalleModel` (learned positions, no sandwich norm, layer scale or token shift: the
    benchmark config) as plain torch calls on the model's own tensors."""

    def __init__(self, model):
        config = model.config
        if config.position_embedding_type != "learned" or config.sandwich_norm or config.shift_tokens:
            raise ValueError("BareDecoder mirrors the benchmark config only (learned positions, plain blocks).")
        if config.layer_scale_init is not None or config.glu:
            raise ValueError("BareDecoder mirrors the benchmark config only (no layer scale, no GLU).")
        self.heads = config.num_attention_heads
        self.width = config.hidden_size
        self.eps = config.layer_norm_eps
        self.text_len = config.text_seq_len
        self.grid = config.image_grid_size
        inner = model.model
        self.image_embeddings = inner.image_embeddings.weight
        self.rows, self.cols = inner.image_position_embeddings.row.weight, inner.image_position_embeddings.col.weight
        self.layers = [
            (
                block.norm1.weight,
                block.norm1.bias,
                block.self_attn.qkv_proj.weight,
                block.self_attn.qkv_proj.bias,
                block.self_attn.out_proj.weight,
                block.self_attn.out_proj.bias,
                block.norm2.weight,
                block.norm2.bias,
                block.mlp.fc1.weight,
                block.mlp.fc1.bias,
                block.mlp.fc2.weight,
                block.mlp.fc2.bias,
            )
            for block in inner.layers
        ]
        self.final_norm = (inner.norm.weight, inner.norm.bias)
        offset = config.text_vocab_size
        self.head = (model.lm_head.weight[offset:], model.lm_head.bias[offset:])
        # the additive mask row of every position, already cut to the filled slots: (1, 1, 1, pos + 1)
        full = {
            kind: inner.sparse_mask(kind, torch.device("cpu"), torch.float32) for kind in set(config.attention_types)
        }
        self.mask_rows = [
            [full[kind][pos : pos + 1, : pos + 1][None, None] for pos in range(full[kind].shape[0])]
            for kind in config.attention_types
        ]
        self.full_masks = [full[kind] for kind in config.attention_types]  # (S, S), for the static form

    def weight_bytes(self) -> int:
        """Bytes of every tensor one decode step reads (the text embedding tables are not read)."""
        tensors = [self.image_embeddings, self.rows, self.cols, *self.final_norm, *self.head]
        tensors += [t for layer in self.layers for t in layer]
        return sum(t.numel() * t.element_size() for t in tensors)

    def step(self, caches: list[tuple[torch.Tensor, torch.Tensor]], codes: torch.Tensor, pos: int) -> torch.Tensor:
        """codes (B', 1) image codes at absolute position `pos` -> (B', image_vocab) logits of the next code."""
        batch = codes.shape[0]
        image_pos = pos - self.text_len
        x = F.embedding(codes, self.image_embeddings)  # (B', 1, C)
        x = x + (self.rows[image_pos // self.grid] + self.cols[image_pos % self.grid])
        for (n1w, n1b, qkv_w, qkv_b, out_w, out_b, n2w, n2b, f1w, f1b, f2w, f2b), (keys, values), rows in zip(
            self.layers, caches, self.mask_rows
        ):
            h = F.layer_norm(x, (self.width,), n1w, n1b, self.eps)
            q, k, v = (
                F.linear(h, qkv_w, qkv_b).view(batch, 1, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            )  # (B', H, 1, D)
            keys[:, :, pos] = k[:, :, 0]
            values[:, :, pos] = v[:, :, 0]
            a = F.scaled_dot_product_attention(q, keys[:, :, : pos + 1], values[:, :, : pos + 1], attn_mask=rows[pos])
            x = x + F.linear(a.transpose(1, 2).reshape(batch, 1, self.width), out_w, out_b)
            h = F.layer_norm(x, (self.width,), n2w, n2b, self.eps)
            x = x + F.linear(F.gelu(F.linear(h, f1w, f1b)), f2w, f2b)
        x = F.layer_norm(x[:, -1], (self.width,), *self.final_norm, self.eps)
        return F.linear(x, *self.head)

    def static_step(self, caches, codes: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """`step` with static shapes for `torch.compile`: `pos` a (1,) tensor, every cache slot attended (the mask
        row hides the empty ones)."""
        batch = codes.shape[0]
        image_pos = pos - self.text_len
        x = F.embedding(codes, self.image_embeddings)
        x = x + (self.rows[image_pos // self.grid] + self.cols[image_pos % self.grid])[None]
        for layer, (keys, values), full in zip(self.layers, caches, self.full_masks):
            n1w, n1b, qkv_w, qkv_b, out_w, out_b, n2w, n2b, f1w, f1b, f2w, f2b = layer
            h = F.layer_norm(x, (self.width,), n1w, n1b, self.eps)
            q, k, v = F.linear(h, qkv_w, qkv_b).view(batch, 1, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            keys.index_copy_(2, pos, k)
            values.index_copy_(2, pos, v)
            mask = full.index_select(0, pos)[None, None]  # (1, 1, 1, S)
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + F.linear(a.transpose(1, 2).reshape(batch, 1, self.width), out_w, out_b)
            h = F.layer_norm(x, (self.width,), n2w, n2b, self.eps)
            x = x + F.linear(F.gelu(F.linear(h, f1w, f1b)), f2w, f2b)
        x = F.layer_norm(x[:, -1], (self.width,), *self.final_norm, self.eps)
        return F.linear(x, *self.head)


def prefill(model, text: torch.Tensor, negative: torch.Tensor):
    """Our prefill (the same in every row): the generation state, its filled StaticCache and the first logits."""
    guidance = SamplingConfig(guidance_scale=GUIDANCE_SCALE).guidance
    state = model.prepare_image_generation(text, negative, guidance)
    logits = model.image_generation_step(state, None)
    caches = [(layer.keys, layer.values) for layer in state.cache.layers]
    return state, caches, logits


def decode_ours(model, text, negative, codes) -> torch.Tensor:
    state, _, logits = prefill(model, text, negative)
    for i in range(codes.shape[1] - 1):
        logits = model.image_generation_step(state, codes[:, i : i + 1])
    return logits


def decode_bare(model, bare: BareDecoder, text, negative, codes) -> torch.Tensor:
    _, caches, logits = prefill(model, text, negative)
    for i in range(codes.shape[1] - 1):
        logits = bare.step(caches, codes[:, i : i + 1], bare.text_len + i)
    return logits


def decode_compiled(model, step, text, negative, codes) -> torch.Tensor:
    _, caches, logits = prefill(model, text, negative)
    text_len = model.config.text_seq_len
    for i in range(codes.shape[1] - 1):
        logits = step(caches, codes[:, i : i + 1], torch.tensor([text_len + i]))
    return logits


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def run_batch(model, bare: BareDecoder, batch: int, repeats: int, compile_step, half=None) -> dict:
    """Time ours, bare and (where given) the compiled step and the bf16 pair `half` = (model, BareDecoder) on one
    batch, after checking their logits against ours."""
    generator = torch.Generator().manual_seed(batch)
    text = torch.randint(3, TEXT_VOCAB, (batch, TEXT_TOKENS), generator=generator)
    negative = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)
    codes = torch.randint(0, model.config.image_vocab_size, (2 * batch, GRID * GRID), generator=generator)
    with torch.no_grad():
        reference = decode_ours(model, text, negative, codes)
        checks = {"bare": max_difference(decode_bare(model, bare, text, negative, codes), reference)}
        cases = [
            Case("ours", lambda: decode_ours(model, text, negative, codes), per=GRID * GRID - 1),
            Case("bare", lambda: decode_bare(model, bare, text, negative, codes), per=GRID * GRID - 1),
        ]
        compile_seconds = None
        if compile_step is not None:
            start = time.perf_counter()
            compiled = decode_compiled(model, compile_step, text, negative, codes)  # compiles, then runs
            compile_seconds = time.perf_counter() - start
            checks["compiled"] = max_difference(compiled, reference)
            cases.append(
                Case("compiled", lambda: decode_compiled(model, compile_step, text, negative, codes), GRID * GRID - 1)
            )
        if half is not None:
            half_model, half_bare = half
            bf16 = decode_bare(half_model, half_bare, text, negative, codes)
            bf16_difference = max_difference(bf16.float(), reference)
            cases.append(
                Case("bf16", lambda: decode_bare(half_model, half_bare, text, negative, codes), GRID * GRID - 1)
            )
        for name, difference in checks.items():
            if difference > 1e-3:
                raise RuntimeError(
                    f"The {name} step's logits differ from ours by {difference:.2e}: not the same math."
                )
        if half is not None:
            checks["bf16 (not checked)"] = bf16_difference
        run_interleaved(cases, repeats)
    return {"cases": cases, "checks": checks, "compile_seconds": compile_seconds}


def floor_ms(bare: BareDecoder, model, batch: int, bandwidth_gbs: float) -> float:
    """Milliseconds per step to read the decode path's weights and the average filled keys/values once."""
    config = model.config
    rows = 2 * batch
    slots = TEXT_TOKENS + (GRID * GRID) / 2  # average filled positions over the decode
    kv_bytes = config.num_hidden_layers * 2 * rows * slots * config.hidden_size * 4
    return (bare.weight_bytes() + kv_bytes) / (bandwidth_gbs * 1e9) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=5)
    parser.add_argument("--compile", action="store_true", help="add the bare step under torch.compile (freezing)")
    parser.add_argument("--bf16", action="store_true", help="add the bare step on a bfloat16 copy of the model")
    args = parser.parse_args()
    apply_common_arguments(parser, args)
    if args.smoke:
        parser.error("bench_decode_floor.py has no --smoke mode: it measures one fixed config")
    started = datetime.datetime.now()
    machine = machine_info(torch.get_num_threads())
    print(machine_line(machine))
    print(timing_line(args.mode, args.repeats))
    torch.manual_seed(0)
    model = build_ours()
    bare = BareDecoder(model)
    compile_step = None
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compile_step = torch.compile(bare.static_step, dynamic=False)
    half = None
    if args.bf16:
        half_model = copy.deepcopy(model).to(torch.bfloat16)
        half = (half_model, BareDecoder(half_model))
    rows, summary = [], []
    for batch in args.batches:
        result = run_batch(model, bare, batch, args.repeats, compile_step, half)
        cases = {case.name: case for case in result["cases"]}
        floor = floor_ms(bare, model, batch, machine["memory_bandwidth_gbs"])
        ours = cases["ours"].median * 1e3
        compiled, bf16 = cases.get("compiled"), cases.get("bf16")
        rows.append(
            [
                str(batch),
                f"{ours:.3f}",
                f"{cases['bare'].median * 1e3:.3f}",
                f"{paired_ratio(cases['ours'], cases['bare']):.2f}x",
                f"{compiled.median * 1e3:.3f}" if compiled else "-",
                f"{paired_ratio(cases['ours'], compiled):.2f}x" if compiled else "-",
                f"{bf16.median * 1e3:.3f}" if bf16 else "-",
                f"{paired_ratio(cases['ours'], bf16):.2f}x" if bf16 else "-",
                f"{floor:.3f}",
                f"{floor / ours:.0%}",
            ]
        )
        checks = ", ".join(f"{name} {value:.1e}" for name, value in result["checks"].items())
        compile_note = f"; compile {result['compile_seconds']:.1f} s" if result["compile_seconds"] else ""
        print(f"batch {batch}: max |logit difference| from ours: {checks}{compile_note}")
        summary.append(
            {
                "batch": batch,
                "ours_ms_per_step": ours,
                "bare_ms_per_step": cases["bare"].median * 1e3,
                "compiled_ms_per_step": compiled.median * 1e3 if compiled else None,
                "bf16_ms_per_step": bf16.median * 1e3 if bf16 else None,
                "floor_ms_per_step": floor,
                "compile_seconds": result["compile_seconds"],
                "max_logit_difference": result["checks"],
            }
        )
    headers = [
        "batch (guided: 2x rows)",
        "ours ms / step",
        "bare ms / step",
        "ours / bare",
        "compiled ms / step",
        "ours / compiled",
        "bare bf16 ms / step",
        "ours / bf16",
        "bandwidth floor ms / step",
        "ours at % of floor",
    ]
    print(format_table(headers, rows))
    print(
        "ms / step: median over rounds of one call's seconds / 255 decode steps (each call also runs the same "
        "prefill). ours / bare: median over rounds of the two times in the same round. Floor: the decode path's "
        f"weights ({bare.weight_bytes() / 2**20:.1f} MiB fp32) and the average filled keys/values read once at the "
        "measured copy bandwidth."
    )
    finish("decode_floor", args, machine, started, {"peers": {}, "summary": summary})


if __name__ == "__main__":
    main()
