"""Speed and memory of the DALL-E prior's image-token sampling: hf_t2i next to min-dalle 0.4.11 and dalle-pytorch
1.6.6, in one run.

Config (the project's benchmark issue): text vocab 4096, 32 text tokens, 16x16 = 256 image tokens, codebook 1024,
width 256, depth 4, 8 heads, MLP x4, random weights (speed does not depend on training).

Rows, for batch 1 and 8, with and without classifier-free guidance:
    - hf_t2i `sample_image_tokens` (the package's KV-cached loop: StaticCache, one doubled batch under guidance);
    - hf_t2i via stock transformers `generate()` (DynamicCache; guidance through `negative_prompt_ids`, which runs
      the unconditional rows as a second forward per step);
    - min-dalle's own `DalleBartEncoder` / `DalleBartDecoder` at the same sizes, driven by a copy of the token loop
      of `MinDalle.generate_raw_image_stream` (its `decoder.sample_tokens` and `attention_state` cache);
    - dalle-pytorch's `DALLE` (decoder-only, our paradigm) at the same sizes, sampled by its own
      `generate_images(..., use_cache=True)` with its KV cache fixed (`fix_guided_cache`: upstream, the cache does
      nothing without guidance and gives wrong tokens with it);
    - hf_t2i's dVAE decode of the sampled codes to 64x64 pixels. min-dalle's VQGAN is hard-wired to a 16384-code,
      256px model, so it gets only an opt-in, not-comparable row (`--min-dalle-vqgan`, batch 1).

All cases of one (batch, guidance) cell run interleaved, round after round, so that a shared machine's load falls on
all of them alike; the speed-up columns are the median over rounds of each peer's time / ours in the same round.
The sampling rows also report their achieved GFLOP/s next to the matmul peak of the same shapes (`_flops`).
`--quick` times the guided cells only, with our sampler and both peers (`plan`).

    python benchmarks/bench_dalle.py [--repeats N] [--threads T] [--json out.json] [--profile] [--min-dalle-vqgan]

`--profile` adds a torch.profiler / cProfile breakdown of hf_t2i's batch-1 guided sampling.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import importlib
import importlib.metadata
import importlib.util
import io
import pstats
import sys
import time
import types

import torch
from _peers import DALLE_PYTORCH_VERSION, import_dalle_pytorch
from _profile import format_shares, op_breakdown
from _timing import (
    CODEBOOK,
    DEPTH,
    GRID,
    HEADS,
    MLP,
    ROOFLINE_HEADERS,
    ROOFLINE_NOTE,
    TEXT_TOKENS,
    TEXT_VOCAB,
    WIDTH,
    Case,
    Cell,
    CellRunner,
    add_common_arguments,
    apply_common_arguments,
    finish,
    format_table,
    machine_info,
    machine_line,
    parameter_mib,
    reference_ratio,
    roofline_cells,
    summary_records,
    timing_line,
    use_smoke_sizes,
)

from hf_t2i import DalleConfig, DalleDVAEConfig, DalleForConditionalGeneration


TOP_K = 64
MIN_DALLE_VERSION = "0.4.11"
MIN_DALLE_INSTALL = f"pip install --no-deps min-dalle=={MIN_DALLE_VERSION}"


# -- hf_t2i --------------------------------------------------------------------------------------------------------
def build_ours() -> DalleForConditionalGeneration:
    """The prior at the benchmark config; a 64px dVAE with 3 groups gives the 16x16 grid."""
    vq = DalleDVAEConfig(image_size=64, vocab_size=CODEBOOK, channel_multipliers=[1, 2, 4], hidden_size=64)
    config = DalleConfig(
        vq_config=vq,
        text_vocab_size=TEXT_VOCAB,
        text_seq_len=TEXT_TOKENS,
        hidden_size=WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
    )
    if config.num_image_tokens != GRID * GRID:
        raise RuntimeError(f"The dVAE config gives {config.num_image_tokens} image tokens, expected {GRID * GRID}.")
    return DalleForConditionalGeneration(config).eval()


def ours_sample(model, text: torch.Tensor, negative: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    tokens = model.sample_image_tokens(
        text,
        negative_input_ids=negative if guidance_scale != 1.0 else None,
        guidance_scale=guidance_scale,
        top_k=TOP_K,
        generator=torch.Generator().manual_seed(0),
    )
    if tokens.shape != (text.shape[0], GRID * GRID):
        raise RuntimeError(f"sample_image_tokens returned {tuple(tokens.shape)}.")
    return tokens


def ours_generate(model, text: torch.Tensor, negative: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    kwargs = {}
    if guidance_scale != 1.0:
        kwargs = {"guidance_scale": guidance_scale, "negative_prompt_ids": negative.expand(text.shape[0], -1)}
    torch.manual_seed(0)
    ids = model.generate(text, do_sample=True, top_k=TOP_K, max_new_tokens=GRID * GRID, **kwargs)
    if ids.shape != (text.shape[0], TEXT_TOKENS + GRID * GRID) or ids[:, TEXT_TOKENS:].min() < TEXT_VOCAB:
        raise RuntimeError(f"generate() returned {tuple(ids.shape)} ids, not {GRID * GRID} image tokens per row.")
    return ids


# -- min-dalle -----------------------------------------------------------------------------------------------------
def import_min_dalle_models() -> tuple[types.ModuleType | None, str | None, str]:
    """`min_dalle.models` without running `min_dalle/__init__.py`.

    The package's `__init__` imports `min_dalle.py`, which needs `emoji` and `requests` (tokenizer, weight downloads)
    and at import time turns gradients off and sets the thread count to `os.cpu_count()` for the whole process. The
    model classes need only torch, so a bare package object stands in for the real `__init__`.
    """
    spec = importlib.util.find_spec("min_dalle")
    if spec is None or not spec.submodule_search_locations:
        return None, None, f"min-dalle is not installed, so its rows are skipped; to add them: {MIN_DALLE_INSTALL}"
    version = importlib.metadata.version("min-dalle")
    if "min_dalle" not in sys.modules:
        package = types.ModuleType("min_dalle")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["min_dalle"] = package
    models = importlib.import_module("min_dalle.models")
    note = "" if version == MIN_DALLE_VERSION else f" (the issue's figures are for {MIN_DALLE_VERSION})"
    return models, version, f"min-dalle {version}{note}"


class MinDalleRunner:
    """min-dalle's encoder and decoder at the benchmark config, and its token loop.

    Choices forced by its architecture (BART: the text goes through an encoder, the decoder cross-attends to it):
        - encoder: 4 layers, width 256, 8 heads, GLU 1024, over the 32 text tokens (vocab 4096);
        - decoder: 4 layers, width 256, 8 heads, GLU 1024 (`glu_embed_count`; its GLU has three 256x1024 matrices,
          so its feed-forward costs 1.5x our 2-matrix MLP x4), codebook 1024 (+1 start-token row it allocates);
        - start token: `image_vocab_count` (1024), the extra embedding row. `generate_raw_image_stream` uses
          `2 ** 14 - 1`, which only exists in its 16384-code models;
        - pad id 1, unconditional row `[bos=0, eos=2, pad ...]` as its tokenizer would give for a prompt.
    """

    def __init__(self, models: types.ModuleType):
        self.encoder = models.DalleBartEncoder(
            layer_count=DEPTH,
            embed_count=WIDTH,
            attention_head_count=HEADS,
            text_vocab_count=TEXT_VOCAB,
            text_token_count=TEXT_TOKENS,
            glu_embed_count=MLP,
            device="cpu",
        ).eval()
        self.decoder = models.DalleBartDecoder(
            image_vocab_count=CODEBOOK,
            embed_count=WIDTH,
            attention_head_count=HEADS,
            glu_embed_count=MLP,
            layer_count=DEPTH,
            device="cpu",
        ).eval()
        self.image_token_count = models.dalle_bart_decoder.IMAGE_TOKEN_COUNT
        if self.image_token_count != GRID * GRID:
            raise RuntimeError(f"min-dalle's decoder is fixed at {self.image_token_count} image tokens.")

    @torch.no_grad()
    def sample(self, text: torch.Tensor, supercondition_factor: float, seed: int = 0) -> torch.Tensor:
        """(B, 32) text ids -> (B, 256) image codes, following `MinDalle.generate_raw_image_stream`.

        min-dalle encodes one prompt per call (its encoder's position ids are fixed at 2 rows: unconditional,
        conditional), so B prompts take B encoder calls; decoding then runs all 2B rows together as it does for a
        grid of images. CUDA autocast and `torch.cuda.empty_cache()` are no-ops on CPU and left out.
        """
        batch = text.shape[0]
        unconditional = torch.ones_like(text)  # pad id 1
        unconditional[:, 0], unconditional[:, 1] = 0, 2  # bos, eos
        states = [self.encoder(torch.stack([unconditional[i], text[i]])) for i in range(batch)]  # B x (2, T, C)
        encoder_state = torch.cat([torch.stack([s[0] for s in states]), torch.stack([s[1] for s in states])])
        text_tokens = torch.cat([unconditional, text])  # (2B, T): unconditional rows first, as its expanded_indices
        attention_mask = text_tokens.not_equal(1)[:, None, None, :]
        attention_state = torch.zeros(DEPTH, batch * 4, self.image_token_count, WIDTH)
        image_tokens = torch.full((batch, self.image_token_count + 1), CODEBOOK, dtype=torch.long)
        torch.manual_seed(seed)
        token_indices = torch.arange(self.image_token_count)
        settings = torch.tensor([1.0, TOP_K, supercondition_factor], dtype=torch.float32)
        for i in range(self.image_token_count):
            image_tokens[:, i + 1], attention_state = self.decoder.sample_tokens(
                settings=settings,
                attention_mask=attention_mask,
                encoder_state=encoder_state,
                attention_state=attention_state,
                prev_tokens=image_tokens[:, [i]],
                token_index=token_indices[[i]],
            )
        return image_tokens[:, 1:]


# -- dalle-pytorch -------------------------------------------------------------------------------------------------
#: where the fixed `forward_with_cond_scale` keeps the unconditional branch's cache: under this key of the cache dict
#: that `DALLE.generate_images` makes for one call (its layers read only their own keys and `"offset"`)
UNCONDITIONAL_CACHE = "unconditional"


def build_dalle_pytorch(module: types.ModuleType) -> torch.nn.Module:
    """dalle-pytorch's `DALLE` at the benchmark config (`module`: `_peers.import_dalle_pytorch`'s), random weights.

    A `DiscreteVAE` whose two downsamplings of a 4 * GRID pixel image give the GRID x GRID grid of CODEBOOK codes;
    width 256, depth 4, 8 heads of 32, text 32 x 4096 (it adds one pad id per text position: 4128 text logits). The
    rest are its defaults: full causal attention, rotary embeddings, token shift, and a GEGLU feed-forward x4 whose
    first matrix is twice as wide (1.5x the feed-forward FLOPs of our two-matrix MLP). bench_training.py trains it.
    """
    vae = module.DiscreteVAE(image_size=4 * GRID, num_tokens=CODEBOOK, codebook_dim=WIDTH, num_layers=2)
    return module.DALLE(
        dim=WIDTH,
        vae=vae,
        num_text_tokens=TEXT_VOCAB,
        text_seq_len=TEXT_TOKENS,
        depth=DEPTH,
        heads=HEADS,
        dim_head=WIDTH // HEADS,
    )


def fix_guided_cache(dalle: torch.nn.Module) -> None:
    """Replace `forward_with_cond_scale` on this `DALLE` instance with one whose KV cache gives the uncached tokens.

    `generate_images` calls `forward_with_cond_scale` once per token. In dalle-pytorch 1.6.6 that method
        - at `cond_scale == 1` calls the model without the cache, so `use_cache=True` re-runs the whole prefix at every
          step;
        - under guidance gives the unconditional pass `cache.copy()`, a shallow copy of the *conditional* branch's
          cache, and throws it away after the step. From the second token on, the unconditional logits attend to the
          conditional branch's keys and values (the prompt's included), and the token-shift queues (deques, shared
          by the copy) advance twice per step, which corrupts the conditional branch as well;
        - runs the unconditional pass with `null_cond_prob=1`, which zeroes its text argument in place: at the first
          step a view of the caller's prompt tensor, so the prompt is overwritten, and without the cache both passes
          see the null prompt from the second token on (the rest of the image is sampled unconditionally).
    The replacement makes the same model calls in the same order with the same guidance formula, except that the
    cache is passed at scale 1 too, the unconditional pass has a cache of its own that persists across the steps of
    one `generate_images` call (kept under `UNCONDITIONAL_CACHE` in the conditional cache) and gets a copy of the
    text. Nothing else of the peer changes. tests/benchmarks/test_dalle_pytorch_cache.py checks that its cached loop
    then samples the tokens of its uncached loop, with and without guidance, and that the upstream one does not.
    """

    def forward_with_cond_scale(text, *args, cond_scale=1, cache=None, **kwargs):
        logits = dalle(text, *args, cache=cache, **kwargs)
        if cond_scale == 1:
            return logits
        null_cache = None if cache is None else cache.setdefault(UNCONDITIONAL_CACHE, {})
        null_cond_logits = dalle(text.clone(), *args, null_cond_prob=1.0, cache=null_cache, **kwargs)
        return null_cond_logits + (logits - null_cond_logits) * cond_scale

    dalle.forward_with_cond_scale = forward_with_cond_scale


class DallePytorchRunner:
    """dalle-pytorch's `DALLE` (`build_dalle_pytorch`) sampled by its own `generate_images(text, filter_thres=...,
    cond_scale=..., use_cache=True)`, with the cache fixed (`fix_guided_cache`).

    - top-k: its `top_k(logits, thres)` keeps `max(int((1 - thres) * n), 1)` of the n logits it samples over: the
      text ids, one pad id per text position and the codes (4096 + 32 + 1024 = 5152 at the benchmark config).
      `filter_thres = 1 - (TOP_K + 0.5) / n` keeps exactly TOP_K (the half guards `int` against rounding down). At
      image positions it masks the text logits to the lowest float, so the TOP_K kept are codes: our top-64.
    - No decode: `generate_images` ends with `vae.decode(image_ids)`, which is stubbed on this instance's VAE to
      return the ids, since the sampler rows time token sampling only (our dVAE decode has a row of its own).
    - Temperature 1, a Gumbel-max draw from the global RNG (seeded before each call). Guidance runs its two forwards
      per step (conditional, then unconditional), each at the batch size; scale 1 runs one.
    """

    def __init__(self, module: types.ModuleType):
        self.dalle = build_dalle_pytorch(module).eval()
        fix_guided_cache(self.dalle)
        self.dalle.vae.decode = lambda image_ids: image_ids
        num_logits = self.dalle.total_tokens
        self.filter_thres = 1 - (TOP_K + 0.5) / num_logits
        if max(int((1 - self.filter_thres) * num_logits), 1) != TOP_K:
            raise RuntimeError(f"filter_thres {self.filter_thres} does not keep top {TOP_K} of {num_logits} logits.")

    def sample(self, text: torch.Tensor, guidance_scale: float, seed: int = 0) -> torch.Tensor:
        """(B, 32) text ids (none 0, its pad id) -> (B, 256) image codes."""
        torch.manual_seed(seed)
        codes = self.dalle.generate_images(
            text, filter_thres=self.filter_thres, cond_scale=guidance_scale, use_cache=True
        )
        if codes.shape != (text.shape[0], GRID * GRID):
            raise RuntimeError(f"dalle-pytorch's generate_images returned {tuple(codes.shape)} codes.")
        return codes


# -- the benchmark -------------------------------------------------------------------------------------------------
OURS_SAMPLE, OURS_GENERATE, OURS_DECODE = (
    "hf_t2i sample_image_tokens",
    "hf_t2i generate()",
    "hf_t2i dVAE decode (64px)",
)
PEER_DECODE = "min-dalle VQGAN decode (256px, 16384 codes)"
HEADERS = [
    "implementation",
    "batch",
    "guidance",
    "s / image",
    "ms / token step",
    "peak RSS Δ MiB",
    "vs min-dalle",
    "vs dalle-pytorch",
    *ROOFLINE_HEADERS,
]
#: the keys of `plan`'s cells
SAMPLE, GENERATE, MIN_DALLE, DALLE_PYTORCH, DECODE, VQGAN = (
    "sample",
    "generate",
    "min-dalle",
    "dalle-pytorch",
    "decode",
    "vqgan",
)
PEER_KEYS = (MIN_DALLE, DALLE_PYTORCH)


def plan(mode: str, batches: list[int], guidance_scale: float, min_dalle_vqgan: bool = False) -> list[Cell]:
    """The cells of a run. Full and smoke: for each batch, an unguided and a guided cell of our sampler,
    `generate()`, min-dalle and dalle-pytorch, plus our dVAE decode in the unguided one (and min-dalle's VQGAN at
    batch 1 with `--min-dalle-vqgan`). Quick: the guided cells only, our sampler and both peers."""
    if mode == "quick":
        return [Cell(batch, guidance_scale, (SAMPLE, MIN_DALLE, DALLE_PYTORCH)) for batch in batches]
    cells = []
    for batch in batches:
        decoders = (DECODE, VQGAN) if min_dalle_vqgan and batch == 1 else (DECODE,)
        cells.append(Cell(batch, 1.0, (SAMPLE, GENERATE, MIN_DALLE, DALLE_PYTORCH, *decoders)))
        cells.append(Cell(batch, guidance_scale, (SAMPLE, GENERATE, MIN_DALLE, DALLE_PYTORCH)))
    return cells


def cell_cases(model, peers: dict, vqgan, text, codes, negative, scale, keys) -> tuple[list[Case], dict[str, Case]]:
    """The cases of one (batch, guidance) cell named by `keys` (a `plan` cell's), in that order, and the peers' among
    them (peer key -> case). `peers` maps each installed peer's key to its name and runner; a missing peer's cases are
    left out. The sampling cases count their FLOPs, the decoders (convolutions, not counted) do not."""
    batch = text.shape[0]
    cases, peer_cases = [], {}
    for key in keys:
        if key == SAMPLE:
            cases.append(Case(OURS_SAMPLE, lambda: ours_sample(model, text, negative, scale), batch, count_flops=True))
        elif key == GENERATE:
            cases.append(
                Case(OURS_GENERATE, lambda: ours_generate(model, text, negative, scale), batch, count_flops=True)
            )
        elif key in PEER_KEYS and key in peers:
            name, peer = peers[key]
            peer_cases[key] = Case(name, lambda peer=peer: peer.sample(text, scale), batch, count_flops=True)
            cases.append(peer_cases[key])
        elif key == DECODE:
            cases.append(Case(OURS_DECODE, lambda: model.decode_image_tokens(codes), batch))
        elif key == VQGAN and vqgan is not None:

            def vqgan_decode(vq_codes=codes[:1]):  # its detokenizer takes one image (or one seamless grid) per call
                with torch.no_grad():
                    return vqgan(False, vq_codes)

            cases.append(Case(PEER_DECODE, vqgan_decode, 1))
    return cases, peer_cases


def table_row(case: Case, references: dict[str, Case], batch: int, scale: float) -> tuple[list[str], dict]:
    """One printed row and its JSON record, with the speed-up over each peer of the cell (`references`: peer key ->
    case). Decode rows have no guidance and no speed-up."""
    is_decode = case.name in (OURS_DECODE, PEER_DECODE)
    guided = scale != 1.0
    if is_decode:
        guidance = "-"
    elif case is references.get(MIN_DALLE) and not guided:
        guidance = "off (factor 1.0, still 2B rows)"
    else:
        guidance = f"{scale:g}" if guided else "off"
    min_dalle, dalle_pytorch = (
        None if is_decode else reference_ratio(case, references.get(key)) for key in (MIN_DALLE, DALLE_PYTORCH)
    )
    median = case.median
    batch_shown = case.per if is_decode else batch
    row = [
        case.name,
        str(batch_shown),
        guidance,
        f"FAILED: {case.error}" if case.error else f"{median:.3f}",
        "-" if median is None or is_decode else f"{median * batch / (GRID * GRID) * 1e3:.2f}",
        "n/a" if case.memory_median is None else f"{case.memory_median:.1f}",
        "-" if min_dalle is None else f"{min_dalle:.2f}x",
        "-" if dalle_pytorch is None else f"{dalle_pytorch:.2f}x",
        *roofline_cells(case),
    ]
    record = {
        "implementation": case.name,
        "batch": batch_shown,
        "guidance_scale": None if is_decode else scale,
        "seconds_per_call": case.seconds,
        "cpu_seconds_per_call": case.cpu_seconds,
        "seconds_per_image_median": median,
        "peak_rss_delta_mib_per_call": case.memory_mib,
        "peak_rss_delta_mib_median": case.memory_median,
        "speed_up_vs_min_dalle": min_dalle,
        "speed_up_vs_dalle_pytorch": dalle_pytorch,
        "slowest_over_fastest": case.spread,
        "error": case.error,
    }
    return row, record


def load_peers(cells: list[Cell], with_vqgan: bool) -> tuple[dict, dict[str, str | None], list[str], object]:
    """The installed peers that `cells` use (key -> (name, runner)), each wanted peer's skip reason (None when it
    runs: the JSON's `peers`), the printed notes and min-dalle's VQGAN (None unless `with_vqgan`)."""
    wanted = {key for cell in cells for key in cell.cases}
    peers, skipped, notes, vqgan = {}, {}, [], None
    if MIN_DALLE in wanted:
        models, version, note = import_min_dalle_models()
        if models is not None:
            peers[MIN_DALLE] = (f"min-dalle {version}", MinDalleRunner(models))
            vqgan = models.VQGanDetokenizer().eval() if with_vqgan else None
        skipped[MIN_DALLE] = None if models is not None else note
        notes.append(note)
    if DALLE_PYTORCH in wanted:
        module, note = import_dalle_pytorch()
        if module is not None:
            peers[DALLE_PYTORCH] = (f"{note} (cache fixed)", DallePytorchRunner(module))
            if not note.endswith(DALLE_PYTORCH_VERSION):
                note += f" (its cache fix was checked against {DALLE_PYTORCH_VERSION})"
        skipped[DALLE_PYTORCH] = None if module is not None else note
        notes.append(note)
    return peers, skipped, notes, vqgan


def run_benchmark(args: argparse.Namespace) -> dict:
    model = build_ours()
    cells = plan(args.mode, args.batches, args.guidance_scale, args.min_dalle_vqgan)
    peers, skipped, notes, vqgan = load_peers(cells, args.min_dalle_vqgan)
    generator = torch.Generator().manual_seed(1234)
    negative = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)  # the processor's encoding of '' is all pads (id 0)

    # One untimed call of each implementation first, so that one-time costs (thread pools, kernel caches, the sparse
    # masks) land on no row's memory or time.
    warm_text = torch.randint(3, TEXT_VOCAB, (1, TEXT_TOKENS), generator=generator)
    warm_codes = torch.zeros(1, GRID * GRID, dtype=torch.long)
    warm_keys = [key for key in (SAMPLE, GENERATE, *PEER_KEYS, DECODE) if any(key in cell.cases for cell in cells)]
    warm_cases, _ = cell_cases(model, peers, None, warm_text, warm_codes, negative, 1.0, warm_keys)
    for case in warm_cases if not args.smoke else []:
        with contextlib.suppress(Exception):  # a case that cannot run is reported by its own row below
            case.fn()

    runner = CellRunner(args.mode, args.repeats)
    texts, all_codes = {}, {}
    rows, records, all_cases, summary = [], [], [], []
    for batch, scale, keys, _ in cells:
        if batch not in texts:  # the same prompts and codes in every cell of a batch, drawn in the order of batches
            texts[batch] = torch.randint(3, TEXT_VOCAB, (batch, TEXT_TOKENS), generator=generator)
            all_codes[batch] = torch.randint(0, CODEBOOK, (batch, GRID * GRID), generator=generator)
        text, codes = texts[batch], all_codes[batch]
        cases, peer_cases = cell_cases(model, peers, vqgan, text, codes, negative, scale, keys)
        references = list(peer_cases.values())
        runner.run(cases, references)
        all_cases.extend(cases)
        sampling = [case for case in cases if case.name not in (OURS_DECODE, PEER_DECODE)]
        decoding = [case for case in cases if case.name == OURS_DECODE]  # min-dalle's VQGAN: not comparable
        summary += summary_records("dalle", sampling, references, batch, scale)
        summary += summary_records("dalle", decoding, [], batch, None)
        for case in cases:
            row, record = table_row(case, peer_cases, batch, scale)
            rows.append(row)
            records.append(record)
    noisy = [
        f"{r['implementation']} (batch {r['batch']})" for r, c in zip(records, all_cases) if (c.spread or 1) > 1.5
    ]
    weights = {"hf_t2i prior": parameter_mib(model.model, model.lm_head), "hf_t2i dVAE": parameter_mib(model.vqmodel)}
    if MIN_DALLE in peers:
        min_dalle = peers[MIN_DALLE][1]
        weights["min-dalle encoder + decoder"] = parameter_mib(min_dalle.encoder, min_dalle.decoder)
    if DALLE_PYTORCH in peers:
        weights["dalle-pytorch prior"] = parameter_mib(peers[DALLE_PYTORCH][1].dalle, exclude=("vae.",))
    return {
        "table": format_table(HEADERS, rows),
        "rows": records,
        "noisy_rows": noisy,
        "peer": "; ".join(notes),
        "peers": skipped,
        "summary": summary,
        "weights_mib": weights,
    }


def profile_ours(guidance_scale: float, top: int = 15) -> str:
    """torch.profiler (ops) and cProfile (Python frames) of one batch-1 guided `sample_image_tokens` call."""
    model = build_ours()
    text = torch.randint(3, TEXT_VOCAB, (1, TEXT_TOKENS), generator=torch.Generator().manual_seed(0))
    negative = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)
    ours_sample(model, text, negative, guidance_scale)  # warm-up
    steps = GRID * GRID
    out = io.StringIO()
    start = time.perf_counter()
    ours_sample(model, text, negative, guidance_scale)
    wall = time.perf_counter() - start
    out.write(f"unprofiled call: {wall:.3f} s = {wall / steps * 1e3:.2f} ms per token step (prefill included)\n\n")
    table, shares = op_breakdown(lambda: ours_sample(model, text, negative, guidance_scale), units=steps, top=top)
    out.write(f"torch.profiler, self CPU time by op, per token step ({format_shares(shares)}):\n")
    out.write(table + "\n\n")
    profiler = cProfile.Profile()
    profiler.enable()
    ours_sample(model, text, negative, guidance_scale)
    profiler.disable()
    text_out = io.StringIO()
    pstats.Stats(profiler, stream=text_out).sort_stats("tottime").print_stats(top)
    out.write("cProfile, Python frames by own time (includes the ops they call directly):\n")
    report = text_out.getvalue()
    out.write(report[report.find("   ncalls") :] if "   ncalls" in report else report)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="guidance scale of the guided rows")
    parser.add_argument("--profile", action="store_true", help="also profile hf_t2i at batch 1 with guidance")
    parser.add_argument(
        "--min-dalle-vqgan",
        action="store_true",
        help="also time min-dalle's VQGAN detokenizer at batch 1 (random weights; fixed at 16384 codes and 256px, "
        "so not the benchmark config; MinDalle.generate_image runs it after sampling)",
    )
    args = parser.parse_args()
    apply_common_arguments(parser, args)
    if args.guidance_scale == 1.0:
        parser.error("--guidance-scale must differ from 1.0 (1.0 is the unguided row).")
    if args.smoke:
        use_smoke_sizes(globals(), TOP_K=8)

    machine = machine_info(torch.get_num_threads())
    print(machine_line(machine))
    print(
        f"config ({args.mode}): text {TEXT_TOKENS} tokens x vocab {TEXT_VOCAB}, image {GRID}x{GRID} x codebook "
        f"{CODEBOOK}, width {WIDTH}, depth {DEPTH}, {HEADS} heads, MLP {MLP}, top_k {TOP_K}, fp32, random weights"
    )
    print(timing_line(args.mode, args.repeats))
    started = datetime.datetime.now()
    result = run_benchmark(args)
    print(f"peers: {result['peer']}")
    print("weights (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in result["weights_mib"].items()))
    print()
    print(result["table"])
    print()
    print(
        "s / image: median call time / batch. ms / token step: median call time / 256.\n"
        "peak RSS Δ: growth of the process's peak RSS over its RSS just before the call (median over all calls).\n"
        "vs <peer>: median over rounds of the peer's time / this row's time, both from the same round "
        "(> 1 = faster than the peer).\n" + ROOFLINE_NOTE
    )
    finish(
        "dalle",
        args,
        machine,
        started,
        result,
        "re-run, raise --repeats, or use --threads 1 (with all cores busy elsewhere, spinning OpenMP workers make "
        "multi-threaded calls many times slower).",
    )
    if args.profile:
        print()
        print(profile_ours(args.guidance_scale))


if __name__ == "__main__":
    main()
