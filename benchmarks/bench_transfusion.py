"""Speed and memory of Transfusion's text-to-image sampling: hf_t2i next to transfusion-pytorch 0.20.0, in one run.

Config (the DALL-E benchmark issue's): 16x16 = 256 latent patches, width 256, depth 4, 8 heads, MLP x4, text vocab
4096, 32 text tokens; 30 denoising steps; random weights (speed does not depend on training); fp32.

Rows, per batch and with / without classifier-free guidance (scale 3):
    - hf_t2i `generate_image_latents` (DDIM, 30 steps): the 32-token prefix runs once into a DynamicCache, each step
      runs only the 256 patch positions; guidance is one doubled batch;
    - hf_t2i with `use_cache=False` (the prefix recomputed at every step), to show what the cache saves;
    - hf_t2i VAE decode of the latents (the default small AutoencoderKL, 128 px), reported apart because the peer
      has no VAE in its loop;
    - transfusion-pytorch 0.20.0 `sample_one` (batch 1) / `sample_many` (batch 8, opt-in: `--peer-batch-8`, minutes
      per call) with `cache_kv=True`, a 32-token prompt ending in its [som] id, `fixed_modality_shape=(16, 16)`,
      `dim_latent=16` (= 4 latent channels x 2x2 patch, our patch width), and `odeint_kwargs=dict(method="euler")`
      with `modality_steps=31` time points = 30 model evaluations. Note it is a flow-matching model (not the paper's
      DDPM), its guidance runs the unconditional branch as a second forward per evaluation, and its transformer has
      extra parts (RMSNorm'd q/k, time-conditioned adaptive norms, U-Net skips), so this is a like-for-like *budget*
      (same sizes, 30 evaluations), not the same network.

    python benchmarks/bench_transfusion.py [--repeats N] [--threads T] [--batches 1 8] [--peer-batch-8] [--json out]
        [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging

import torch
from _timing import (
    Case,
    add_common_arguments,
    apply_common_arguments,
    format_table,
    machine_info,
    machine_line,
    paired_ratio,
    run_interleaved,
    summary_records,
    use_smoke_sizes,
    write_json,
)

from hf_t2i import TransfusionConfig, TransfusionForConditionalGeneration


TEXT_VOCAB = 4096
TEXT_TOKENS = 32
GRID = 16  # 16 x 16 = 256 latent patches
WIDTH = 256
DEPTH = 4
HEADS = 8
MLP = 4 * WIDTH
STEPS = 30
GUIDANCE = 3.0
IMAGE_SIZE = 128  # default VAE (factor 4) -> 32x32x4 latent -> patch 2 -> 16x16 patches of 16 values
PEER_VERSION = "0.20.0"
PEER_INSTALL = (
    f"pip install --no-deps transfusion-pytorch=={PEER_VERSION} einx frozendict jaxtyping wadler-lindig ema-pytorch "
    "torchdiffeq loguru torch-einops-utils"
)


def build_ours() -> TransfusionForConditionalGeneration:
    config = TransfusionConfig(
        image_size=IMAGE_SIZE,
        patch_size=2,
        vocab_size=TEXT_VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
    )
    if config.num_image_tokens != GRID * GRID:
        raise RuntimeError(f"The config gives {config.num_image_tokens} patches, expected {GRID * GRID}.")
    return TransfusionForConditionalGeneration(config).eval()


def our_prompt(model, batch: int) -> torch.Tensor:
    """`<s> 30 caption ids </s> <boi>`: 32 text tokens, then <boi>."""
    c = model.config
    text = torch.randint(10, TEXT_VOCAB, (batch, TEXT_TOKENS - 2), generator=torch.Generator().manual_seed(0))
    ends = torch.tensor([[c.bos_token_id]]).expand(batch, 1), torch.tensor([[c.eos_token_id, c.boi_token_id]])
    return torch.cat([ends[0], text, ends[1].expand(batch, 2)], dim=1)


def build_peer():
    try:
        from transfusion_pytorch import Transfusion
    except ImportError as error:
        return (
            None,
            f"transfusion-pytorch is not importable ({error}); its rows are skipped. To add them: {PEER_INSTALL}",
        )
    logging.getLogger().setLevel(logging.WARNING)
    try:  # its sampler logs every step through loguru
        from loguru import logger

        logger.remove()
    except ImportError:
        pass
    version = importlib.metadata.version("transfusion-pytorch")
    model = Transfusion(
        num_text_tokens=TEXT_VOCAB,
        dim_latent=16,
        modality_default_shape=(GRID, GRID),
        transformer=dict(dim=WIDTH, depth=DEPTH, dim_head=WIDTH // HEADS, heads=HEADS, ff_expansion_factor=4),
        odeint_kwargs=dict(method="euler"),
    ).eval()
    note = "" if version == PEER_VERSION else f" (the issue's figure is for {PEER_VERSION})"
    return model, f"transfusion-pytorch {version}{note}"


def peer_prompts(peer, batch: int) -> list[torch.Tensor]:
    som = peer.som_ids[0]
    g = torch.Generator().manual_seed(0)
    return [torch.cat([torch.randint(0, TEXT_VOCAB, (TEXT_TOKENS - 1,), generator=g), torch.tensor([som])])] * batch


@torch.no_grad()
def peer_sample(peer, prompts: list[torch.Tensor], guidance: float):
    torch.manual_seed(0)
    kwargs = dict(max_length=1, fixed_modality_shape=(GRID, GRID), modality_steps=STEPS + 1, cfg_scale=guidance)
    if len(prompts) == 1:
        out = peer.sample_one(prompts[0], cache_kv=True, **kwargs)
        return [out]
    return peer.sample_many(prompts, **kwargs)


OURS, OURS_FULL, OURS_DECODE, PEER = (
    "hf_t2i generate_image_latents",
    "hf_t2i, prefix recomputed each step",
    "hf_t2i VAE decode",
    "transfusion-pytorch sample (euler)",
)
HEADERS = [
    "implementation",
    "batch",
    "guidance",
    "s / image",
    "ms / step (whole batch)",
    "peak RSS Δ MiB",
    "vs transfusion-pytorch",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--peer-batch-8", action="store_true", help="also time the peer at batch > 1 (slow)")
    args = parser.parse_args()
    apply_common_arguments(parser, args)
    if args.smoke:  # no peer fixes the grid here: 4 x 4 patches of a 32 px image
        use_smoke_sizes(globals(), STEPS=2, GRID=4, IMAGE_SIZE=32)
    torch.manual_seed(0)
    ours = build_ours()
    peer, peer_note = build_peer()
    machine = machine_info(torch.get_num_threads())
    print(machine_line(machine))
    print(
        f"config ({args.mode}): {GRID}x{GRID} latent patches ({IMAGE_SIZE} px), width {WIDTH}, depth {DEPTH}, "
        f"{HEADS} heads, MLP {MLP}, text {TEXT_TOKENS} tokens x vocab {TEXT_VOCAB}, {STEPS} steps, fp32"
    )
    print(peer_note)

    rows, records, summary = [], [], []
    for batch in args.batches:
        prompt = our_prompt(ours, batch)
        latents = ours.generate_image_latents(prompt, num_inference_steps=1)
        for guidance in (1.0, GUIDANCE):

            def sample(use_cache=True, prompt=prompt, guidance=guidance):
                return ours.generate_image_latents(
                    prompt,
                    guidance_scale=guidance,
                    num_inference_steps=STEPS,
                    generator=torch.Generator().manual_seed(0),
                    use_cache=use_cache,
                )

            cases = [Case(OURS, sample, per=batch), Case(OURS_FULL, lambda: sample(False), per=batch)]
            if guidance == 1.0:
                cases.append(Case(OURS_DECODE, lambda latents=latents: ours.decode_image_tokens(latents), per=batch))
            if peer is not None and (batch == 1 or args.peer_batch_8):
                prompts = peer_prompts(peer, batch)
                cases.append(Case(PEER, lambda p=prompts, g=guidance: peer_sample(peer, p, g), per=batch))
            with torch.inference_mode():
                run_interleaved(cases, args.repeats, warm_up=not args.smoke)
            peer_case = next((c for c in cases if c.name == PEER), None)
            sampling = [c for c in cases if c.name != OURS_DECODE]
            peers = [peer_case] if peer_case is not None else []
            summary += summary_records("transfusion", sampling, peers, batch, guidance, steps=STEPS)
            summary += summary_records("transfusion", [c for c in cases if c.name == OURS_DECODE], [], batch, None)
            for case in cases:
                if case.error:
                    rows.append([case.name, batch, "-", f"error: {case.error}", "", "", ""])
                    continue
                per_image = case.median  # `Case.median` is already per image (`per=batch`)
                step_ms = "" if case.name == OURS_DECODE else f"{1000 * case.median * batch / STEPS:.1f}"
                compared = peer_case is not None and case is not peer_case and case.name != OURS_DECODE
                ratio = paired_ratio(peer_case, case) if compared else None
                guided = "-" if case.name == OURS_DECODE else ("3.0" if guidance != 1.0 else "off")
                memory = case.memory_median
                rows.append(
                    [
                        case.name,
                        batch,
                        guided,
                        f"{per_image:.3f}",
                        step_ms,
                        "n/a" if memory is None else f"{memory:.0f}",
                        "" if ratio is None else f"{ratio:.1f}x faster",
                    ]
                )
                records.append(
                    {"case": case.name, "batch": batch, "guidance": guided, "seconds": case.seconds, "memory": memory}
                )
    print(format_table(HEADERS, rows))
    if args.json:
        peers = {"transfusion-pytorch": None if peer is not None else peer_note}
        write_json(args.json, "transfusion", args, machine, peers, summary, rows=records)


if __name__ == "__main__":
    main()
