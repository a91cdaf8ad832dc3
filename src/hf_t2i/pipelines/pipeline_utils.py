"""Base class of the hf_t2i `DiffusionPipeline`s: one folder that transformers and diffusers both read.

Layout of a saved pipeline (one Hub repo):

    config.json, model.safetensors, generation_config.json   <- the prior (`model`), at the root
    tokenizer*.json, processor_config.json                   <- the processor, at the root
    model_index.json                                         <- the diffusers pipeline description
    scorer/ , scorer_processor/ , scheduler/ ...             <- any other component, in its own subfolder

transformers' `pipeline("text-to-image", model=path)` and `XForConditionalGeneration.from_pretrained(path)` read the
root; diffusers' `XPipeline.from_pretrained(path)` reads `model_index.json` and, for a component that has no subfolder,
loads it from the root (diffusers' own fallback). No weight is stored twice.
"""

from __future__ import annotations

import json
import os
import tempfile

import diffusers
import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from huggingface_hub import snapshot_download

from ..generation.guidance import FULL_INTERVAL, check_guidance_interval, check_guidance_scale
from ..generation.sampling import Generators
from ..hub import HUB_ARGUMENTS, push_folder_to_hub
from ..image_processing import OUTPUT_TYPES as IMAGE_OUTPUT_TYPES
from ..image_processing import T2IImageProcessor
from ..modeling_utils import give_new_file_modes
from ..processing_utils import as_prompt_list
from ..remote_code import (
    auto_class_registration_ignored,
    pipeline_class_name,
    write_pipeline_remote_code,
)
from .pipeline_output import T2IPipelineOutput
from .reranking import rerank


ROOT_COMPONENTS = ("model", "processor")
#: what `output_type` may be: images ("pil", "np", "pt"), or "latent": the image tokens / latents before decoding
OUTPUT_TYPES = (*IMAGE_OUTPUT_TYPES, "latent")


def saved_scheduler(model, own_classes: tuple[type, ...] = (), example: str = "DDIMScheduler"):
    """The scheduler saved next to `model` (`<model folder>/scheduler/`, of the class its `_class_name` names: a
    diffusers scheduler or one of `own_classes`), so that `pipeline("text-to-image", model=path)`, which hands over
    only the model and processor, samples with the scheduler the pipeline's own `from_pretrained(path)` loads.
    None when the model's folder has none. `example` names a scheduler for the error's fix."""
    folder = os.path.join(getattr(model.config, "_name_or_path", "") or "", "scheduler")
    if not os.path.isfile(os.path.join(folder, "scheduler_config.json")):
        return None
    config = diffusers.DDIMScheduler.load_config(folder)  # any scheduler class reads the file
    name = config.get("_class_name")
    own = {cls.__name__: cls for cls in own_classes}
    scheduler_class = own.get(name) or (getattr(diffusers, name, None) if isinstance(name, str) else None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        allowed = " or ".join([*own, "a diffusers scheduler"])
        raise ValueError(
            f"{folder}/scheduler_config.json names `_class_name` {name!r}, which is not {allowed}; save the pipeline "
            f"with one (e.g. `{example}.from_config(pipe.scheduler.config)`)."
        )
    return scheduler_class.from_config(config)


class T2IPipeline(DiffusionPipeline):
    """Shared loading / saving (root layout, atomic file writes), prompt encoding, argument checks and output of the
    hf_t2i pipelines."""

    #: the tensors `callback_on_step_end` may ask for (diffusers' convention): the image tokens / latents being drawn
    _callback_tensor_inputs = ["latents"]
    #: `guidance_scale` when a call passes none and the checkpoint names no `default_guidance_scale`
    fallback_guidance_scale: float = 1.0

    def register_default_guidance_scale(self, default_guidance_scale: float | None) -> None:
        """Record the checkpoint's guidance scale (the one its model card's numbers were measured at) in the
        pipeline's config, so that `save_pretrained` writes it to model_index.json and `from_pretrained` passes it
        back; a call without `guidance_scale` uses it."""
        if default_guidance_scale is not None:
            check_guidance_scale(default_guidance_scale, "default_guidance_scale")
            default_guidance_scale = float(default_guidance_scale)
        self.register_to_config(default_guidance_scale=default_guidance_scale)

    def register_default_guidance_interval(self, default_guidance_interval) -> None:
        """Record the checkpoint's guidance interval (`(start, stop)`, the fractions of the denoising steps its model
        card guided) in the pipeline's config, as `register_default_guidance_scale` does the scale; a call without
        `guidance_interval` uses it. None: every step."""
        if default_guidance_interval is not None:
            default_guidance_interval = list(
                check_guidance_interval(default_guidance_interval, "default_guidance_interval")
            )
        self.register_to_config(default_guidance_interval=default_guidance_interval)

    def guidance_interval_or_default(self, guidance_interval) -> tuple[float, float]:
        """`guidance_interval` (validated) when given, else the checkpoint's `default_guidance_interval`
        (model_index.json), else every step: `(0.0, 1.0)`."""
        if guidance_interval is not None:
            return check_guidance_interval(guidance_interval)
        default = self.config.get("default_guidance_interval")
        return FULL_INTERVAL if default is None else tuple(default)

    def guidance_scale_or_default(self, guidance_scale: float | None, fallback: float | None = None) -> float:
        """`guidance_scale` when given, else the checkpoint's `default_guidance_scale` (model_index.json), else
        `fallback` when given, else the family's `fallback_guidance_scale`."""
        if guidance_scale is not None:
            return guidance_scale
        default = self.config.get("default_guidance_scale")
        if default is not None:
            return default
        return self.fallback_guidance_scale if fallback is None else fallback

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """diffusers' `from_pretrained`, with a clear `ValueError` when the path is neither a saved pipeline folder
        nor a reachable Hub repository."""
        path = os.fspath(pretrained_model_name_or_path)
        if cls is T2IPipeline:
            return cls._subclass_for(path).from_pretrained(path, **kwargs)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ValueError(
                f"`pretrained_model_name_or_path` {path!r} has no model_index.json: it is not a saved {cls.__name__}. "
                f"Use {cls.__name__}.save_pretrained to create one."
            )
        try:
            return super().from_pretrained(path, **kwargs)
        except OSError as error:
            if os.path.isdir(path):
                raise
            raise ValueError(
                f"`pretrained_model_name_or_path` {path!r} is not a local folder and could not be loaded from the Hub "
                f"({type(error).__name__}: {error}). Check the path."
            ) from error

    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs) -> str:
        """The Hub repository `pretrained_model_name`, whole, in the Hugging Face cache (`from_pretrained` calls this
        for a Hub id); returns its local folder.

        diffusers' own `download` picks files per component subfolder and refuses a component whose module is
        neither diffusers' nor transformers' nor a file of its subfolder: every hf_t2i pipeline, whose prior and
        processor live at the repository root and load from the hf_t2i package. An hf_t2i repository is one
        checkpoint, so all of it is downloaded. `cache_dir`, `force_download`, `local_files_only`, `token` and
        `revision` are honoured; diffusers' file-selection arguments have nothing to select.
        """
        names = ("cache_dir", "force_download", "local_files_only", "token", "revision")
        hub_kwargs = {name: kwargs[name] for name in names if kwargs.get(name) is not None}
        return snapshot_download(pretrained_model_name, **hub_kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        push_to_hub: bool = False,
        **kwargs,
    ):
        """Save every component (the prior and processor at the root, others in subfolders) and `model_index.json`.

        Files are written to a temporary folder first and then moved into place one by one (`os.replace`), so an
        interrupted save never leaves a half-written weight file behind. `model_index.json` does not record where
        the pipeline was loaded from (a local path means nothing on another machine).

        With `push_to_hub=True` the folder is then uploaded with its model card as one commit
        (`hf_t2i.hub.push_folder_to_hub`): `repo_id` (default: the folder's name), `token`, `private`,
        `commit_message`, `commit_description`, `create_pr`, `revision`, `base_model` (default: the Hub repository
        this pipeline was loaded from), `eval_report` (`hf-t2i eval`'s report.json for the card's results; default:
        the folder's report.json), `license` and `tags` are read from `kwargs`. A README.md already in the folder
        keeps its text; its metadata is completed.

        The folder also gets the loader files of `hf_t2i.remote_code`, so that `DiffusionPipeline.from_pretrained`
        and the transformers Auto classes load it with `trust_remote_code=True` in a program that does not import
        hf_t2i (which must still be installed); `model_index.json`'s `_class_name` is `["pipeline_hf_t2i",
        "<Name>Pipeline"]` for that.
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` ({save_directory}) is a file; pass a folder.")
        os.makedirs(save_directory, exist_ok=True)
        components = {name: component for name, component in self.components.items() if component is not None}
        with (
            tempfile.TemporaryDirectory(dir=save_directory, prefix=".tmp-save-") as tmp,
            auto_class_registration_ignored(*components.values()),
        ):
            self._save_model_index(tmp)
            for name, component in components.items():
                target = tmp if name in ROOT_COMPONENTS else os.path.join(tmp, name)
                if isinstance(component, torch.nn.Module):
                    component.save_pretrained(target, safe_serialization=safe_serialization)
                else:
                    component.save_pretrained(target)
            write_pipeline_remote_code(tmp)
            give_new_file_modes(tmp)  # safetensors writes its files 0600: as readable as config.json instead
            for root, _, files in os.walk(tmp):
                relative = os.path.relpath(root, tmp)
                destination = os.path.normpath(os.path.join(save_directory, relative))
                os.makedirs(destination, exist_ok=True)
                for file in files:
                    os.replace(os.path.join(root, file), os.path.join(destination, file))
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", None) or os.path.basename(os.path.abspath(save_directory))
            hub_kwargs = {name: kwargs[name] for name in HUB_ARGUMENTS if name in kwargs}
            return push_folder_to_hub(save_directory, repo_id, source=self._loaded_from(), **hub_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        *,
        commit_description: str | None = None,
        revision: str | None = None,
        base_model: str | None = None,
        eval_report=None,
        license: str | None = None,
        tags: list[str] | None = None,
    ):
        """Upload the pipeline to the Hub repository `repo_id` (created when missing) with its model card, as one
        commit; returns the `CommitInfo`.

        The card is the repository's README.md if it has one (its text kept, its metadata completed), else a new
        one: `library_name: hf_t2i`, `pipeline_tag: text-to-image`, the family tags, `license` (default
        apache-2.0), `base_model` (default: the Hub repository this pipeline was loaded from), `model-index` from
        `eval_report` (the report.json of `hf-t2i eval`), and a "How to use" that installs hf_t2i and calls the
        pipeline. See `hf_t2i.hub`.
        """
        with tempfile.TemporaryDirectory() as tmp:
            return self.save_pretrained(
                tmp,
                safe_serialization=safe_serialization,
                push_to_hub=True,
                repo_id=repo_id,
                commit_message=commit_message,
                commit_description=commit_description,
                private=private,
                token=token,
                create_pr=create_pr,
                revision=revision,
                base_model=base_model,
                eval_report=eval_report,
                license=license,
                tags=tags,
            )

    def _save_model_index(self, folder: str) -> None:
        """diffusers' `model_index.json` without `_name_or_path` (where this pipeline was loaded from)."""
        index = json.loads(self.to_json_string())
        index.pop("_name_or_path", None)
        with open(os.path.join(folder, self.config_name), "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def _loaded_from(self) -> str | None:
        """Where the pipeline (or, for one built from components, its model) was loaded from: a Hub id, a shipped
        checkpoint or a local folder; the model card turns it into `base_model` (Hub ids only)."""
        model = getattr(self, "model", None)
        return self.name_or_path or getattr(getattr(model, "config", None), "name_or_path", None) or None

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict:
        """diffusers' reading of model_index.json (every load goes through it, from a folder or the Hub), with the
        `["pipeline_hf_t2i", "<Name>Pipeline"]` class name that `save_pretrained` writes read as `"<Name>Pipeline"`:
        hf_t2i knows its pipelines, so its own `from_pretrained` never runs the folder's loader file (which
        `DiffusionPipeline.from_pretrained` runs, with `trust_remote_code=True`)."""
        config = super()._dict_from_json_file(json_file)
        name = pipeline_class_name(config)
        if name is not None:
            config["_class_name"] = name
        return config

    @classmethod
    def _subclass_for(cls, path: str) -> type[T2IPipeline]:
        """The pipeline class a saved folder names in its model_index.json (`T2IPipeline.from_pretrained(path)`
        loads any hf_t2i pipeline)."""
        index = os.path.join(path, "model_index.json")
        if not os.path.isfile(index):
            raise ValueError(
                f"`pretrained_model_name_or_path` {path!r} is not a saved hf_t2i pipeline (no model_index.json there)."
            )
        with open(index, encoding="utf-8") as f:
            name = pipeline_class_name(json.load(f))
        subclasses, stack = {}, [T2IPipeline]
        while stack:
            for sub in stack.pop().__subclasses__():
                subclasses[sub.__name__] = sub
                stack.append(sub)
        if name not in subclasses:
            raise ValueError(f"{index} names pipeline {name!r}; hf_t2i has {sorted(subclasses)}.")
        return subclasses[name]

    def check_image_size(self, height: int | None, width: int | None, image_size: int) -> None:
        """These models generate one fixed size (their image tokenizer's); a different request is an error."""
        for name, value in (("height", height), ("width", width)):
            if value is not None and value != image_size:
                raise ValueError(
                    f"`{name}` must be {image_size} for this checkpoint (its image tokenizer's size), got {value}. "
                    "Leave it unset, or resize the returned images."
                )

    #: processor outputs the model takes for a caption, each also passed as `negative_<name>` under guidance
    text_input_names: tuple[str, ...] = ("input_ids",)

    def encode_text(self, prompts: list[str], truncation: bool, argument: str):
        """The processor's outputs for captions; `argument` names the caller's argument in error messages."""
        return self.processor(text=prompts, truncation=truncation, text_argument=argument)

    def encode_prompts(
        self,
        prompts: list[str],
        negative_prompt: str | list[str] | None,
        samples_per_prompt: int,
        guided: bool,
        truncation: bool,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        """Processor outputs for the prompts (each repeated `samples_per_prompt` times) and, under guidance, for the
        negative prompts (default: the empty caption) as `negative_*`."""
        encoded = self.encode_text(prompts, truncation, "prompt")
        inputs = {
            name: encoded[name].to(device).repeat_interleave(samples_per_prompt, dim=0)
            for name in self.text_input_names
        }
        if guided:
            negatives = as_prompt_list(negative_prompt if negative_prompt is not None else "", "negative_prompt")
            if len(negatives) not in (1, len(prompts)):
                raise ValueError(
                    f"`negative_prompt` has {len(negatives)} entries for {len(prompts)} prompts; pass one or as many."
                )
            encoded = self.encode_text(negatives, truncation, "negative_prompt")
            repeats = samples_per_prompt if len(negatives) > 1 else 1
            for name in self.text_input_names:
                inputs[f"negative_{name}"] = encoded[name].to(device).repeat_interleave(repeats, dim=0)
        return inputs

    # -- precomputed text-encoder outputs (`prompt_embeds`) ------------------------------------------------------------
    #: Why this family's pipeline takes no `prompt_embeds`; None where it does (its `prompt_embeds` are the outputs of
    #: the model's text encoder, `model.get_encoder()`, and the model's `config.hidden_size` wide).
    prompt_embeds_unsupported: str | None = None

    def check_prompt_inputs(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
    ) -> int:
        """Check that the caption comes once, as `prompt` or as `prompt_embeds` (and the negative one at most once),
        and that embeddings are (batch, length, hidden) float tensors with (batch, length) masks.

        Returns:
            the number of prompts.
        """
        embeddings = {
            "prompt_embeds": prompt_embeds,
            "negative_prompt_embeds": negative_prompt_embeds,
            "prompt_attention_mask": prompt_attention_mask,
            "negative_prompt_attention_mask": negative_prompt_attention_mask,
        }
        given = [name for name, value in embeddings.items() if value is not None]
        if given and self.prompt_embeds_unsupported:
            raise ValueError(
                f"{type(self).__name__} takes no `{given[0]}`: {self.prompt_embeds_unsupported} Pass `prompt` (and "
                "`negative_prompt`) instead."
            )
        if prompt is not None and prompt_embeds is not None:
            raise ValueError(
                "Pass either `prompt` or `prompt_embeds`, not both: `prompt_embeds` (from `encode_prompt`) replace the "
                "prompts."
            )
        if prompt is None and prompt_embeds is None:
            alternative = "" if self.prompt_embeds_unsupported else " or precomputed `prompt_embeds`"
            raise ValueError(f"Pass `prompt` (a string or a list of strings){alternative}.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError(
                "Pass either `negative_prompt` or `negative_prompt_embeds`, not both: `negative_prompt_embeds` (from "
                "`encode_prompt`) replace the negative prompts."
            )
        for name, embeds, mask_name, mask in (
            ("prompt_embeds", prompt_embeds, "prompt_attention_mask", prompt_attention_mask),
            (
                "negative_prompt_embeds",
                negative_prompt_embeds,
                "negative_prompt_attention_mask",
                negative_prompt_attention_mask,
            ),
        ):
            if embeds is None:
                if mask is not None:
                    raise ValueError(f"`{mask_name}` is the padding mask of `{name}`; it was given without them.")
                continue
            if (
                not isinstance(embeds, torch.Tensor)
                or not embeds.is_floating_point()
                or embeds.ndim != 3
                or not embeds.shape[0]
            ):
                found = f"shape {tuple(embeds.shape)}, {embeds.dtype}" if isinstance(embeds, torch.Tensor) else embeds
                raise ValueError(
                    f"`{name}` must be a float tensor (batch >= 1, length, hidden) of text-encoder states, as "
                    f"`encode_prompt` returns, got {found}."
                )
            hidden = self.model.config.hidden_size
            if embeds.shape[-1] != hidden:
                raise ValueError(
                    f"`{name}` must be {hidden} wide (this model's text encoder output), got shape "
                    f"{tuple(embeds.shape)}. Compute them with this pipeline's `encode_prompt`."
                )
            if mask is not None and (
                not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2])
            ):
                found = tuple(mask.shape) if isinstance(mask, torch.Tensor) else mask
                raise ValueError(
                    f"`{mask_name}` must have shape {tuple(embeds.shape[:2])} (that of `{name}`), got {found}."
                )
        return len(as_prompt_list(prompt)) if prompt_embeds is None else prompt_embeds.shape[0]

    def encode_prompt(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        device: torch.device | None = None,
        truncation: bool = False,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The prompts through the model's text encoder, as diffusers pipelines' `encode_prompt`: compute them once
        and pass them as `prompt_embeds` (and `negative_prompt_embeds`) to any number of calls.

        Args:
            prompt: caption(s) to encode (or None with `prompt_embeds`).
            negative_prompt: caption(s) of guidance's unconditional branch (default: the empty caption).
            num_images_per_prompt: each prompt's rows are repeated this many times.
            do_classifier_free_guidance: also return the negative prompts' states (else None).
            device: where the states go (default: the pipeline's execution device).
            truncation: cut prompts longer than the text context instead of raising.
            prompt_embeds, negative_prompt_embeds: (B, S, hidden) states already computed, used as they are.
            prompt_attention_mask, negative_prompt_attention_mask: (B, S) their padding masks (default: all ones).

        Returns:
            `(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)`, each
            with B x `num_images_per_prompt` rows; the negative ones are None without guidance.
        """
        if self.prompt_embeds_unsupported:
            raise ValueError(f"{type(self).__name__} has no `encode_prompt`: {self.prompt_embeds_unsupported}")
        num_prompts = self.check_prompt_inputs(
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            prompt_attention_mask,
            negative_prompt_attention_mask,
        )
        self.check_num_images(num_images_per_prompt)
        device = device or self._execution_device
        encoder = self.model.get_encoder()

        def encode(texts: list[str], argument: str) -> tuple[torch.Tensor, torch.Tensor]:
            encoded = self.encode_text(texts, truncation, argument)
            ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
            return encoder(ids, mask).last_hidden_state, mask  # (b, S, C), (b, S)

        if prompt_embeds is None:
            prompt_embeds, prompt_attention_mask = encode(as_prompt_list(prompt), "prompt")
        elif prompt_attention_mask is None:
            prompt_attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=device)
        if not do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_attention_mask = None
        elif negative_prompt_embeds is None:
            negatives = as_prompt_list(negative_prompt if negative_prompt is not None else "", "negative_prompt")
            if len(negatives) not in (1, num_prompts):
                raise ValueError(
                    f"`negative_prompt` has {len(negatives)} entries for {num_prompts} prompts; pass one or as many."
                )
            negative_prompt_embeds, negative_prompt_attention_mask = encode(negatives, "negative_prompt")
            if negative_prompt_embeds.shape[1] != prompt_embeds.shape[1]:
                raise ValueError(
                    f"`prompt_embeds` are {prompt_embeds.shape[1]} tokens long, but the negative prompts encode to "
                    f"{negative_prompt_embeds.shape[1]} (the processor's text context): guidance runs both as one "
                    "batch. Pass `negative_prompt_embeds` as long as `prompt_embeds`."
                )
        elif negative_prompt_attention_mask is None:
            negative_prompt_attention_mask = torch.ones(
                negative_prompt_embeds.shape[:2], dtype=torch.long, device=device
            )
        if negative_prompt_embeds is not None:
            expected = (num_prompts, *prompt_embeds.shape[1:])
            if (
                negative_prompt_embeds.shape[0] not in (1, num_prompts)
                or negative_prompt_embeds.shape[1:] != expected[1:]
            ):
                raise ValueError(
                    f"`negative_prompt_embeds` must have shape {expected} (that of `prompt_embeds`) or one row, got "
                    f"{tuple(negative_prompt_embeds.shape)}."
                )
            negative_prompt_embeds = negative_prompt_embeds.expand(num_prompts, -1, -1)
            negative_prompt_attention_mask = negative_prompt_attention_mask.expand(num_prompts, -1)

        def per_image(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device).repeat_interleave(num_images_per_prompt, dim=0)

        return (
            per_image(prompt_embeds),
            per_image(prompt_attention_mask),
            per_image(negative_prompt_embeds),
            per_image(negative_prompt_attention_mask),
        )

    def text_inputs(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None,
        samples_per_prompt: int,
        guided: bool,
        truncation: bool,
        device: torch.device,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The model's text inputs for `prepare_image_generation`: processor outputs, which the model encodes
        (`encode_prompts`), or, when any embeddings are given, the text-encoder states (`encode_prompt`) as
        `prompt_embeds` / `attention_mask` and, under guidance, `negative_prompt_embeds` / `negative_attention_mask`."""
        if prompt_embeds is None and negative_prompt_embeds is None:
            prompts = as_prompt_list(prompt)
            return self.encode_prompts(prompts, negative_prompt, samples_per_prompt, guided, truncation, device)
        embeds, mask, negative_embeds, negative_mask = self.encode_prompt(
            prompt,
            negative_prompt,
            samples_per_prompt,
            guided,
            device,
            truncation,
            prompt_embeds,
            negative_prompt_embeds,
            prompt_attention_mask,
            negative_prompt_attention_mask,
        )
        inputs = {"prompt_embeds": embeds, "attention_mask": mask}
        if guided:
            inputs.update(negative_prompt_embeds=negative_embeds, negative_attention_mask=negative_mask)
        return inputs

    #: The most images one call draws (prompts x `num_images_per_prompt`, or x `num_candidates` when reranking): the
    #: whole request runs as one batch, so a huge one exhausts memory instead of returning. Raise it on a pipeline
    #: (`pipe.max_images_per_call = 1024`) when the memory allows, or call the pipeline in a loop.
    max_images_per_call: int = 256

    @staticmethod
    def check_num_images(num_images_per_prompt: int) -> None:
        if (
            not isinstance(num_images_per_prompt, int)
            or isinstance(num_images_per_prompt, bool)
            or num_images_per_prompt < 1
        ):
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}.")

    def check_batch_size(self, num_prompts: int, samples_per_prompt: int, argument: str = "num_images_per_prompt"):
        """Refuse a call drawing more than `max_images_per_call` images (one batch: it would run out of memory or
        run for hours instead of failing); `argument` names the per-prompt count in the message."""
        total = num_prompts * samples_per_prompt
        if total > self.max_images_per_call:
            raise ValueError(
                f"`{argument}`={samples_per_prompt} for {num_prompts} prompt(s) asks for {total} images in one call, "
                f"more than `max_images_per_call` ({self.max_images_per_call}): the call runs as one batch. Call the "
                "pipeline in a loop with fewer images per call (a new seed or the same generator each time), or "
                "raise `pipe.max_images_per_call` if your memory allows."
            )

    def check_rerank_inputs(
        self, num_images_per_prompt: int, num_candidates: int | None, has_prompts: bool = True
    ) -> tuple[int, str]:
        """Check `num_candidates` (best-of-N reranking, DALL-E section 2.6: draw N images per prompt, keep the
        `num_images_per_prompt` the pipeline's `scorer` ranks highest). `has_prompts`: the call has caption text
        for the scorer to read (not only `prompt_embeds` or class labels).

        Returns:
            the images to draw per prompt and the argument that counts them, for `check_batch_size` and
            `check_generator`.
        """
        if num_candidates is None:
            return num_images_per_prompt, "num_images_per_prompt"
        if (
            not isinstance(num_candidates, int)
            or isinstance(num_candidates, bool)
            or num_candidates < num_images_per_prompt
        ):
            raise ValueError(
                f"`num_candidates` must be an integer >= `num_images_per_prompt` ({num_images_per_prompt}), "
                f"got {num_candidates!r}."
            )
        if not has_prompts:
            raise ValueError(
                "`num_candidates` reranks by the prompt text, which this call does not have: pass `prompt` (not "
                "`prompt_embeds` or `class_labels`), or leave `num_candidates=None`."
            )
        if getattr(self, "scorer", None) is None or getattr(self, "scorer_processor", None) is None:
            raise ValueError(
                "`num_candidates` reranks samples with a scorer, but this pipeline has none. Pass `scorer=` and "
                "`scorer_processor=` when building it (or export it with `--rerank-scorer`), or leave "
                "`num_candidates=None`."
            )
        return num_candidates, "num_candidates"

    def decode_and_rerank(
        self,
        latents: torch.Tensor,
        decode,
        prompts: list[str] | None,
        num_images_per_prompt: int,
        num_candidates: int | None,
        output_type: str,
        return_dict: bool,
    ) -> T2IPipelineOutput | tuple:
        """The end of a call that may rerank: `latents` (image tokens or latents, one row per drawn image, each
        prompt's contiguous) -> pixels with `decode`; with `num_candidates`, keep the `num_images_per_prompt`
        best-scored of each prompt's candidates, best first; then the requested output (with "latent": the kept
        images' `latents`, not decoded unless reranking needs the pixels)."""
        if num_candidates is None and output_type == "latent":
            return self.output(latents, output_type, return_dict)
        pixels = decode(latents)  # (B * n, 3, H, W) in [-1, 1]
        scores = None
        if num_candidates is not None:
            index, scores = rerank(self.scorer, self.scorer_processor, prompts, pixels, num_images_per_prompt)
            pixels, latents = pixels[index.to(pixels.device)], latents[index.to(latents.device)]
        return self.output(latents if output_type == "latent" else pixels, output_type, return_dict, scores=scores)

    @staticmethod
    def check_generator(generator, batch_size: int, images: str = "prompts x `num_images_per_prompt`") -> Generators:
        """`generator` is None, one `torch.Generator` (every image of the call is drawn from it), or a list of
        `batch_size` generators, one per image in output order (the diffusers convention): image `i` is drawn from
        generator `i` exactly as a one-image call with that generator draws it. `images` says what `batch_size`
        counts, for the error message.

        Returns:
            what to sample with: None, one generator, or a list of `batch_size` of them (a list of one: its generator,
            which draws the same).
        """
        if generator is None or isinstance(generator, torch.Generator):
            return generator
        if not isinstance(generator, (list, tuple)):
            raise ValueError(
                f"`generator` must be a torch.Generator, a list of them (one per image) or None, got "
                f"{type(generator).__name__}. Pass `torch.Generator().manual_seed(seed)`."
            )
        for i, item in enumerate(generator):
            if not isinstance(item, torch.Generator):
                raise ValueError(f"`generator[{i}]` must be a torch.Generator, got {type(item).__name__}.")
        if len(generator) != batch_size:
            raise ValueError(
                f"You have passed a list of generators of length {len(generator)}, but requested an effective batch "
                f"size of {batch_size} ({images}). Make sure the batch size matches the length of the generators: "
                "pass one `generator` per image, or a single torch.Generator for the whole call."
            )
        return generator[0] if batch_size == 1 else list(generator)

    @staticmethod
    def check_output_inputs(
        output_type: str, callback_on_step_end_tensor_inputs: list[str] | None, tensor_input: str
    ) -> None:
        """`output_type` is one `T2IImageProcessor.postprocess` knows or "latent"; the step callback can see
        `tensor_input`."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        if callback_on_step_end_tensor_inputs not in (None, [tensor_input]):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be None or {[tensor_input]!r}, got "
                f"{callback_on_step_end_tensor_inputs!r}."
            )

    def output(
        self, images: torch.Tensor, output_type: str, return_dict: bool, scores: torch.Tensor | None = None
    ) -> T2IPipelineOutput | tuple:
        """The end of every `__call__`: (B, 3, H, W) pixels in [-1, 1] -> `output_type` images (with "latent",
        `images` is the tensor the image decoder would have received, returned as is), offloaded models released,
        returned as a [`T2IPipelineOutput`] or `(images,)`."""
        if output_type != "latent":
            images = T2IImageProcessor.postprocess(images, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return T2IPipelineOutput(images=images, scores=scores)
