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

import torch
from diffusers import DiffusionPipeline

from ..hub import HUB_ARGUMENTS, push_folder_to_hub
from ..image_processing import T2IImageProcessor
from ..processing_utils import as_prompt_list
from .pipeline_output import T2IPipelineOutput


ROOT_COMPONENTS = ("model", "processor")


class T2IPipeline(DiffusionPipeline):
    """Shared loading / saving (root layout, atomic file writes), prompt encoding, argument checks and output of the
    hf_t2i pipelines."""

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
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` ({save_directory}) is a file; pass a folder.")
        os.makedirs(save_directory, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=save_directory, prefix=".tmp-save-") as tmp:
            self._save_model_index(tmp)
            for name, component in self.components.items():
                if component is None:
                    continue
                target = tmp if name in ROOT_COMPONENTS else os.path.join(tmp, name)
                if isinstance(component, torch.nn.Module):
                    component.save_pretrained(target, safe_serialization=safe_serialization)
                else:
                    component.save_pretrained(target)
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
    def _subclass_for(cls, path: str) -> type[T2IPipeline]:
        """The pipeline class a saved folder names in its model_index.json (`T2IPipeline.from_pretrained(path)`
        loads any hf_t2i pipeline)."""
        index = os.path.join(path, "model_index.json")
        if not os.path.isfile(index):
            raise ValueError(
                f"`pretrained_model_name_or_path` {path!r} is not a saved hf_t2i pipeline (no model_index.json there)."
            )
        with open(index, encoding="utf-8") as f:
            name = json.load(f).get("_class_name")
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

    @staticmethod
    def check_generator(generator) -> None:
        """`generator` is None or ONE `torch.Generator`: every image of a call is drawn from it (the diffusers
        convention of a list, one generator per image, is not supported)."""
        if generator is None or isinstance(generator, torch.Generator):
            return
        if isinstance(generator, (list, tuple)):
            raise ValueError(
                f"`generator` must be one torch.Generator (or None), got a {type(generator).__name__} of "
                f"{len(generator)}: hf_t2i pipelines draw all the images of a call from one generator. Pass "
                "`torch.Generator().manual_seed(seed)`; for one seed per image, call the pipeline once per seed."
            )
        raise ValueError(
            f"`generator` must be a torch.Generator or None, got {type(generator).__name__}. Pass "
            "`torch.Generator().manual_seed(seed)`."
        )

    @staticmethod
    def check_output_inputs(
        output_type: str, callback_on_step_end_tensor_inputs: list[str] | None, tensor_input: str
    ) -> None:
        """`output_type` is one `T2IImageProcessor.postprocess` knows; the step callback can see `tensor_input`."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}.")
        if callback_on_step_end_tensor_inputs not in (None, [tensor_input]):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be None or {[tensor_input]!r}, got "
                f"{callback_on_step_end_tensor_inputs!r}."
            )

    def output(
        self, pixels: torch.Tensor, output_type: str, return_dict: bool, scores: torch.Tensor | None = None
    ) -> T2IPipelineOutput | tuple:
        """The end of every `__call__`: (B, 3, H, W) pixels in [-1, 1] -> `output_type` images, offloaded models
        released, returned as a [`T2IPipelineOutput`] or `(images,)`."""
        images = T2IImageProcessor.postprocess(pixels, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return T2IPipelineOutput(images=images, scores=scores)
