"""A Gradio app that draws one prompt with several checkpoints side by side: the Hugging Face Space of
`spaces/hf-t2i-demo/` and `hf-t2i demo` serve the same app.

    from hf_t2i.demo import build_demo

    build_demo().launch()                          # every shipped checkpoint
    build_demo(["dalle", "runs/prior/final"]).launch(server_name="0.0.0.0", server_port=7860)

Each checkpoint loads the first time it draws and stays loaded (`DemoModels`). Every draw is one call of the
checkpoint's pipeline with its own defaults, as `hf-t2i generate` makes it, with the page's seed and guidance scale;
gradio follows the pipeline's progress bar (`gr.Progress(track_tqdm=True)`). The app's draws share one queue and run
one at a time: the models are small, and parallel draws on a CPU would only slow each other down.

gradio is an optional dependency: `pip install -e ".[demo]"`.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import torch
from PIL import Image

from .checkpoints import SHIPPED_CHECKPOINTS, resolve_checkpoint
from .cli import DEFAULT_GUIDANCE_SCALE, MAX_SEED
from .grids import DEFAULT_GRID_PROMPTS
from .pipelines import T2IPipeline


#: What each shipped checkpoint is, under its image on the page.
SHIPPED_DESCRIPTIONS = {
    "dalle": "DALL-E: dVAE codes, one decoder-only transformer, drawn token by token",
    "parti": "Parti: ViT-VQGAN codes, encoder-decoder transformer, drawn token by token",
    "fluid": "Fluid: continuous VAE tokens in random order, a diffusion head per token",
    "transfusion": "Transfusion: one transformer for text tokens and diffused VAE latents",
    "muse": "Muse: ViT-VQGAN codes, masked decoding in confidence order",
}
#: The drawings are 32 or 64 px; the page shows them this many times larger, nearest neighbour (crisp pixels).
DISPLAY_UPSCALE = 8
#: What one draw may take before gradio gives up on it (a checkpoint on a busy CPU takes seconds).
DRAW_TIME_LIMIT_S = 300
#: The concurrency group of every draw: one draw at a time in the whole app.
DRAW_QUEUE = "draw"

INTRO = """\
# hf_t2i: five text-to-image families side by side

DALL-E, Parti, Fluid, Transfusion and Muse, each a small checkpoint (a few million parameters) trained for minutes to
an hour on a CPU on the synthetic *shapes* data, so they draw 32x32 or 64x64 pictures of coloured shapes. Captions in their
language work best: colours red, green, blue, yellow, purple, orange; shapes circle, square, triangle, diamond;
counts one to four; "left of", "right of", "above", "below". Same seed, same picture.
"""


class DemoModels:
    """The checkpoints a demo offers, by label: each loads on first use and stays loaded. Safe to call from several
    threads (gradio's workers): a checkpoint loads once and draws one picture at a time.

    Args:
        checkpoints: shipped checkpoint names (see `hf_t2i.checkpoints`) or saved pipeline folders, labelled by their
            names; or a mapping label -> name, folder or an already built `T2IPipeline`. Default: every shipped
            checkpoint.
        device: where the pipelines run (default: "cuda" when available, else "cpu").
    """

    def __init__(
        self,
        checkpoints: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike | T2IPipeline] | None = None,
        device: str | torch.device | None = None,
    ):
        if checkpoints is None:
            checkpoints = tuple(SHIPPED_CHECKPOINTS)
        if isinstance(checkpoints, (str, os.PathLike)):
            raise TypeError(
                f"`checkpoints` must be a list of checkpoint names or folders (or a mapping label -> checkpoint), got "
                f"the single {os.fspath(checkpoints)!r}; pass [{os.fspath(checkpoints)!r}]."
            )
        if isinstance(checkpoints, Mapping):
            sources = dict(checkpoints)
        elif isinstance(checkpoints, Sequence):
            sources = {}
            for checkpoint in checkpoints:
                label = _label_of(checkpoint)
                if label in sources:
                    raise ValueError(
                        f"`checkpoints` has two entries labelled {label!r} ({sources[label]!r} and {checkpoint!r}); "
                        "pass a mapping label -> checkpoint to name them apart."
                    )
                sources[label] = checkpoint
        else:
            raise TypeError(
                "`checkpoints` must be a list of checkpoint names or folders, or a mapping label -> checkpoint, got "
                f"{type(checkpoints).__name__}."
            )
        if not sources:
            raise ValueError("`checkpoints` is empty; pass at least one checkpoint name or folder (or None for all).")
        for label, source in sources.items():
            if not isinstance(label, str) or not label.strip():
                raise ValueError(f"Every label in `checkpoints` must be a non-empty string, got {label!r}.")
            if not isinstance(source, (str, os.PathLike, T2IPipeline)):
                raise TypeError(
                    f"`checkpoints[{label!r}]` must be a checkpoint name, a folder or a T2IPipeline, got "
                    f"{type(source).__name__}."
                )
        self._sources = sources
        self._pipelines: dict[str, T2IPipeline] = {}
        self._load_lock = threading.Lock()
        # a pipeline keeps per-call state (e.g. Muse's known codes): one draw at a time per checkpoint
        self._draw_locks = {label: threading.Lock() for label in sources}
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def labels(self) -> list[str]:
        """The checkpoints' labels, in the order given."""
        return list(self._sources)

    def is_loaded(self, label: str) -> bool:
        self._check_label(label)
        return label in self._pipelines

    def pipeline(self, label: str) -> T2IPipeline:
        """The pipeline of checkpoint `label`, loaded on first use (once, even when several draws ask at once)."""
        self._check_label(label)
        with self._load_lock:
            if label not in self._pipelines:
                source = self._sources[label]
                if isinstance(source, T2IPipeline):
                    pipe = source
                else:
                    pipe = T2IPipeline.from_pretrained(resolve_checkpoint(source))
                self._pipelines[label] = pipe.to(self.device)
        return self._pipelines[label]

    def generate(
        self,
        label: str,
        prompt: str,
        seed: int = 0,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    ) -> Image.Image:
        """One picture of `prompt` drawn by checkpoint `label`, at the checkpoint's own size: the image
        `hf-t2i generate PROMPT --model LABEL --seed SEED --guidance-scale GUIDANCE_SCALE --upscale 1` saves.

        Args:
            label: one of `labels`.
            prompt: the caption (surrounding spaces are dropped).
            seed: the generator's seed, an integer in [0, 2**64 - 1]; the same seed draws the same picture.
            guidance_scale: classifier-free guidance (1 = off), passed to pipelines that take it.
        """
        prompt, seed, guidance_scale = check_demo_inputs(prompt, seed, guidance_scale)
        pipe = self.pipeline(label)
        kwargs = {}
        if "guidance_scale" in inspect.signature(pipe.__call__).parameters:
            kwargs["guidance_scale"] = guidance_scale
        generator = torch.Generator().manual_seed(seed)
        with self._draw_locks[label]:
            return pipe(prompt, generator=generator, **kwargs).images[0]

    def _check_label(self, label: str) -> None:
        if label not in self._sources:
            raise ValueError(f"No checkpoint labelled {label!r} in this demo; it has {self.labels}.")


def check_demo_inputs(prompt, seed, guidance_scale) -> tuple[str, int, float]:
    """The page's inputs, checked and normalised: (prompt without surrounding spaces, seed as int, guidance as
    float). A `ValueError` / `TypeError` names the input, the value and the fix."""
    if not isinstance(prompt, str):
        raise TypeError(f"`prompt` must be a string, got {type(prompt).__name__}.")
    if not prompt.strip():
        raise ValueError(f"`prompt` is empty; type a caption such as {DEFAULT_GRID_PROMPTS[0]!r}.")
    if isinstance(seed, bool) or not isinstance(seed, Real):
        raise TypeError(f"`seed` must be an integer in [0, 2**64 - 1], got {seed!r}.")
    if not isinstance(seed, Integral) and not (math.isfinite(seed) and float(seed).is_integer()):
        raise ValueError(f"`seed` must be a whole number in [0, 2**64 - 1], got {seed!r}.")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`seed` must be in [0, 2**64 - 1] (a torch.Generator seed), got {seed!r}.")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, Real):
        raise TypeError(f"`guidance_scale` must be a number (1 = no guidance), got {guidance_scale!r}.")
    return prompt.strip(), int(seed), float(guidance_scale)


def build_demo(
    models: DemoModels | Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike | T2IPipeline] | None = None,
):
    """The app: a prompt box, seed and guidance controls, and one picture per checkpoint, side by side.

    Args:
        models: a `DemoModels`, or what `DemoModels` takes (default: every shipped checkpoint).

    Returns:
        a `gradio.Blocks`; `.launch()` serves it. Its API has one endpoint per checkpoint, `/draw_<label>` (prompt,
        seed, guidance scale -> picture), for `gradio_client`.
    """
    gr = import_gradio()
    if not isinstance(models, DemoModels):
        models = DemoModels(models)
    slugs = [_slug(label) for label in models.labels]
    if len(set(slugs)) < len(slugs):
        raise ValueError(
            f"The labels {models.labels} clash once reduced to API names {slugs}; label the checkpoints apart."
        )

    def check(prompt, seed, guidance_scale):
        try:
            check_demo_inputs(prompt, seed, guidance_scale)
        except (TypeError, ValueError) as error:
            raise gr.Error(str(error), print_exception=False) from None

    with gr.Blocks(title="hf_t2i: text-to-image side by side") as demo:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(
                value=DEFAULT_GRID_PROMPTS[0],
                label="Prompt",
                placeholder="two red circles left of a blue square",
                max_lines=1,
                scale=4,
                elem_id="prompt",
            )
            button = gr.Button("Generate", variant="primary", scale=1, elem_id="generate")
        with gr.Row():
            seed = gr.Number(value=0, label="Seed", precision=0, minimum=0, elem_id="seed")
            guidance_scale = gr.Slider(
                minimum=0,
                maximum=10,
                value=DEFAULT_GUIDANCE_SCALE,
                step=0.5,
                label="Guidance scale",
                info="classifier-free guidance: higher follows the prompt more closely; 1 = off",
                elem_id="guidance-scale",
            )
        images = {}
        with gr.Row():
            for label in models.labels:
                with gr.Column(min_width=160):
                    images[label] = gr.Image(
                        label=label,
                        type="pil",
                        format="png",  # lossless: gradio's default webp would blur the pixels
                        interactive=False,
                        elem_id=f"image-{_slug(label)}",
                    )
                    if label in SHIPPED_DESCRIPTIONS:
                        gr.Markdown(SHIPPED_DESCRIPTIONS[label])
        gr.Examples(list(DEFAULT_GRID_PROMPTS), inputs=[prompt], label="Captions from the shapes world")

        inputs = [prompt, seed, guidance_scale]
        checked = gr.on(
            [button.click, prompt.submit],
            fn=check,
            inputs=inputs,
            outputs=None,
            show_progress="hidden",
            api_visibility="private",
        )
        for label, image in images.items():
            checked.success(
                draw_function(models, label),
                inputs=inputs,
                outputs=image,
                api_name=f"draw_{_slug(label)}",
                concurrency_id=DRAW_QUEUE,
                concurrency_limit=1,
                time_limit=DRAW_TIME_LIMIT_S,
            )
    return demo


def draw_function(models: DemoModels, label: str):
    """The event handler that draws with checkpoint `label`: (prompt, seed, guidance scale) -> the picture,
    `DISPLAY_UPSCALE` times larger. Bad inputs and refusals of the pipeline become a `gradio.Error`, which the page
    shows."""
    gr = import_gradio()
    # gradio finds the tracker by its place in the signature, as a default; it follows every tqdm bar (the pipeline's)
    track_progress = gr.Progress(track_tqdm=True)

    def draw(prompt: str, seed: int, guidance_scale: float, progress=track_progress) -> Image.Image:
        try:
            prompt, seed, guidance_scale = check_demo_inputs(prompt, seed, guidance_scale)
        except (TypeError, ValueError) as error:
            raise gr.Error(f"{label}: {error}", print_exception=False) from None
        try:
            image = models.generate(label, prompt, seed, guidance_scale)
        except ValueError as error:  # the pipeline's refusal, e.g. of a prompt longer than its text context
            raise gr.Error(f"{label}: {error}", print_exception=False) from None
        size = (image.width * DISPLAY_UPSCALE, image.height * DISPLAY_UPSCALE)
        return image.resize(size, Image.Resampling.NEAREST)

    draw.__name__ = draw.__qualname__ = f"draw_{_slug(label)}"
    return draw


def import_gradio():
    """gradio, or an `ImportError` that says how to install it."""
    try:
        import gradio
    except ImportError as error:
        raise ImportError(
            'The demo needs gradio, an optional dependency of hf_t2i: `pip install -e ".[demo]"` in a clone '
            "(add `-c constraints.txt` for the tested version)."
        ) from error
    return gradio


def _label_of(checkpoint: str | os.PathLike) -> str:
    """A shipped checkpoint's name, or a folder's name."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(
            f"A `checkpoints` list holds checkpoint names or folders, got {type(checkpoint).__name__}; pass a mapping "
            "label -> pipeline for pipelines already built."
        )
    name = os.fspath(checkpoint)
    return name if name in SHIPPED_CHECKPOINTS else os.path.basename(os.path.normpath(name))


def _slug(label: str) -> str:
    """`label` as it may appear in an API name or an HTML id."""
    return re.sub(r"\W+", "_", label).strip("_") or "model"


__all__ = ["DemoModels", "build_demo", "check_demo_inputs", "draw_function", "import_gradio"]
