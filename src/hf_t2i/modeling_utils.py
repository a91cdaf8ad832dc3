"""Pieces shared by the `<Name>PreTrainedModel` classes of the text-to-image transformers."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils.deprecation import deprecate_kwarg

from .hub import HUB_ARGUMENTS, push_folder_to_hub
from .remote_code import auto_class_registration_ignored, write_model_remote_code


# transformers 5.24 renamed `past_key_values` to `cache` and still takes the old name with a deprecation warning
# until 5.40; the `forward` of every model that takes a cache does the same, so older calling code keeps working.
renamed_cache_argument = deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")


def outside_range(values: torch.Tensor, high: int) -> bool:
    """Whether any of `values` lies outside [0, high); False when empty. One read from the device, where
    `values.min() < 0 or values.max() >= high` makes the host wait for it twice."""
    return bool(values.numel()) and bool(((values < 0) | (values >= high)).any())


def true_positions(mask: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """Flat indices of the True entries of `mask`, in order. Gathering with them reads the device once, after which
    their number is known on the host; indexing with the mask itself reads it once per indexed tensor. With `count`
    (the caller knows there are that many), nothing is read: a stable sort puts them first."""
    if count is not None:
        return torch.argsort((~mask).flatten().to(torch.uint8), stable=True)[:count]
    return mask.flatten().nonzero().squeeze(1)


def output_flags(config, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
    """A base model's `output_attentions`, `output_hidden_states` and `return_dict`: the call's, else the config's."""
    return (
        config.output_attentions if output_attentions is None else output_attentions,
        config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        config.return_dict if return_dict is None else return_dict,
    )


def new_file_mode(folder: str | os.PathLike | None = None) -> int:
    """The permission bits `open()` gives a new file in `folder` (default: the temporary folder): `0o666 & ~umask`,
    less what a default ACL of the folder masks. Found by creating and deleting an empty file there, because reading
    the umask means setting it, which would race with the other threads of the process."""
    folder = os.fspath(folder) if folder is not None else tempfile.gettempdir()
    probe = os.path.join(folder, f".hf_t2i-mode-{os.getpid()}-{os.urandom(6).hex()}")
    descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return os.fstat(descriptor).st_mode & 0o777
    finally:
        os.close(descriptor)
        os.remove(probe)


def _file_stamps(folder: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """`{path: (inode, mtime in ns)}` of every file under `folder` (empty when it does not exist): a file written
    since has another stamp."""
    stamps = {}
    for root, _, files in os.walk(folder):
        for file in files:
            path = os.path.join(root, file)
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                status = os.stat(path)
                stamps[path] = (status.st_ino, status.st_mtime_ns)
    return stamps


def give_new_file_modes(folder: str | os.PathLike, since: dict[str, tuple[int, int]] | None = None) -> None:
    """Give every file under `folder` the mode of a new file there (`new_file_mode`); with `since` (an earlier
    `_file_stamps(folder)`), only the files written after it. safetensors >= 0.8 writes its files 0600 through a
    temporary file whatever the umask (safetensors/safetensors#782), so saved weights would be unreadable to other
    users while the config beside them is not."""
    mode = new_file_mode(folder)
    for path, stamp in _file_stamps(folder).items():
        if since is None or since.get(path) != stamp:
            os.chmod(path, mode)


@contextlib.contextmanager
def new_files_get_new_file_modes(folder: str | os.PathLike):
    """Inside the block, write into `folder` (an existing one or not); the files written there get the mode of a new
    file (`give_new_file_modes`), the others keep theirs."""
    before = _file_stamps(folder)
    yield
    if os.path.isdir(folder):
        give_new_file_modes(folder, since=before)


@torch.no_grad()
def init_transformer_weights(
    module: nn.Module, std: float, owner: PreTrainedModel, nested: tuple[type[PreTrainedModel], ...] = ()
) -> bool:
    """The GPT-2 style init of DALL-E, Parti, Fluid and Transfusion, one `_init_weights(module)` step.

    Linear and Embedding weights ~ N(0, std) with zero Linear biases; affine LayerNorms get ones and zeros; a nested
    pretrained model that is an instance of `nested` (an image tokenizer, a text encoder) but not `owner` itself
    runs its own `_init_weights` over its modules.

    Args:
        module: the module being visited.
        std: the config's `initializer_range`.
        owner: the model whose `_init_weights` is calling.
        nested: the pretrained-model classes that keep their own init.

    Returns:
        Whether `module` was one of these kinds; the caller initialises the others (its own parameters).
    """
    if isinstance(module, nested) and module is not owner:
        module.apply(module._init_weights)
    elif isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.normal_(0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        module.weight.fill_(1.0)
        module.bias.zero_()
    else:
        return False
    return True


_SHOWN_KEYS = 8  # keys listed by name in a loading error


def _shorten(keys) -> str:
    keys = sorted(str(k) for k in keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def local_folder(pretrained_model_name_or_path, subfolder: str | None) -> str | None:
    """The local folder `from_pretrained` reads, or None for a Hub id."""
    if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
        return None
    path = os.fspath(pretrained_model_name_or_path)
    if not os.path.isdir(path):
        return None
    return os.path.join(path, subfolder) if subfolder else path


def write_atomically(path: str | os.PathLike, write) -> None:
    """Call `write(temporary_path)`, then move that file onto `path` (`os.replace`), so that a reader, or a run killed
    halfway, sees the previous file or the new one, never part of one; if `write` fails no temporary file is left."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomically(path: str | os.PathLike, value, **dump_kwargs) -> None:
    """Write `value` as JSON (indent 2, a final newline; `dump_kwargs` go to `json.dump`) with `write_atomically`: a
    value json cannot write keeps the old file."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2, **dump_kwargs)
            f.write("\n")

    write_atomically(path, write)


def json_file_problem(path: str) -> str | None:
    """Why the JSON file `path` cannot be read (as a sentence naming it and the fix), or None when it parses."""
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{path} is not valid JSON ({error}); restore it from the saved model."
    return None


def diagnose_model_folder(folder: str, config_class) -> str | None:
    """The first problem of a saved model folder that `from_pretrained` would trip on (config.json missing, not
    JSON or with invalid values; a weights file truncated or not safetensors), as a sentence naming the file and the
    fix, or None when none is found."""
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        return f"{config_file} is missing; a saved model folder needs the config.json written by save_pretrained."
    problem = json_file_problem(config_file)
    if problem is not None:
        return problem
    try:
        config_class.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 - any config error is reported with the file that caused it
        return f"{config_file} has an invalid value: {error} Fix that field in {config_file}."
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            try:
                with safe_open(os.path.join(folder, name), framework="pt") as handle:
                    handle.keys()
            except Exception as error:  # noqa: BLE001 - SafetensorError, OSError
                return (
                    f"{os.path.join(folder, name)} is truncated or not a safetensors file ({error}); re-download or "
                    "re-export the model."
                )
    return None


def _saved_as(folder: str, cls) -> bool:
    """True when the folder's config.json says it was saved from `cls` (its `architectures`), or names none."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            architectures = json.load(f).get("architectures")
    except (OSError, ValueError, AttributeError):
        return True
    return not architectures or cls.__name__ in architectures


@contextlib.contextmanager
def nested_paths_cleared(config: PreTrainedConfig):
    """Blank the `_name_or_path` of every config nested in `config` (an image tokenizer's, a text encoder's) while
    the block runs. transformers leaves the top-level one out of config.json but writes nested ones, so a prior
    trained on `--dvae-path /home/me/runs/dvae` would carry that path into every copy of its config.json."""
    saved, stack = [], [config]
    while stack:
        for value in vars(stack.pop()).values():
            if isinstance(value, PreTrainedConfig):
                saved.append((value, "_name_or_path", value._name_or_path))
                value._name_or_path = ""  # the default: `to_diff_dict` leaves it out
                stack.append(value)
            elif isinstance(value, dict) and "_name_or_path" in value:
                saved.append((value, None, value.pop("_name_or_path")))
    try:
        yield
    finally:
        for owner, attribute, value in reversed(saved):
            if attribute is None:
                owner["_name_or_path"] = value
            else:
                setattr(owner, attribute, value)


class ModelCardMixin:
    """`save_pretrained` and `push_to_hub` of the hf_t2i `PreTrainedModel`s (every one gets them through
    `StrictLoadingMixin`): the uploaded folder carries hf_t2i's model card (`hf_t2i.hub`: `library_name: hf_t2i`,
    `pipeline_tag`, family tags, `base_model`, eval results) instead of transformers' generic one, and no saved
    config.json records a local path."""

    def save_pretrained(
        self, save_directory, is_main_process: bool = True, state_dict=None, push_to_hub: bool = False, **kwargs
    ):
        """transformers' `save_pretrained`. With `push_to_hub=True` the folder is then uploaded with its model card as
        one commit (`hf_t2i.hub.push_folder_to_hub`): `repo_id` (default: the folder's name), `token`, `private`,
        `commit_message`, `commit_description`, `create_pr`, `revision`, `base_model` (default: the Hub repository
        the model was loaded from), `eval_report`, `license` and `tags` are read from `kwargs`.

        config.json also gets an `auto_map` and the folder the loader files it names (`hf_t2i.remote_code`), so that
        `AutoModel.from_pretrained(folder, trust_remote_code=True)` (and `AutoConfig`) load it in a program that
        does not import hf_t2i (which must still be installed)."""
        repo_id = kwargs.pop("repo_id", None)
        hub_kwargs = {name: kwargs.pop(name) for name in HUB_ARGUMENTS if name in kwargs}
        with (
            nested_paths_cleared(self.config),
            auto_class_registration_ignored(self, self.config),
            new_files_get_new_file_modes(save_directory) if is_main_process else contextlib.nullcontext(),
        ):
            super().save_pretrained(save_directory, is_main_process=is_main_process, state_dict=state_dict, **kwargs)
        if is_main_process:
            write_model_remote_code(save_directory)
        if push_to_hub and is_main_process:
            repo_id = repo_id or os.path.basename(os.path.abspath(save_directory))
            hub_kwargs["tags"] = [*(self.model_tags or []), *(hub_kwargs.get("tags") or [])] or None
            return push_folder_to_hub(save_directory, repo_id, source=self.config.name_or_path, **hub_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
        base_model: str | None = None,
        eval_report=None,
        license: str | None = None,
    ):
        """Upload the model to the Hub repository `repo_id` (created when missing) with hf_t2i's model card, as one
        commit; returns the `CommitInfo`. The repository's README.md, when it has one, keeps its text and gets its
        metadata completed (see `hf_t2i.hub`)."""
        with tempfile.TemporaryDirectory() as tmp:
            return self.save_pretrained(
                tmp,
                max_shard_size=max_shard_size,
                push_to_hub=True,
                repo_id=repo_id,
                commit_message=commit_message,
                commit_description=commit_description,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
                tags=tags,
                base_model=base_model,
                eval_report=eval_report,
                license=license,
            )


class StrictLoadingMixin(ModelCardMixin):
    """`from_pretrained` of a saved hf_t2i model that refuses weights not matching the config (and, through
    `ModelCardMixin`, hf_t2i's `save_pretrained` / `push_to_hub`).

    transformers loads a folder whose weights lack tensors of the model (randomly initialised), hold extra ones
    (dropped) or have other shapes, and only logs a table. Here any such key raises a `ValueError` naming the folder
    and the keys when the folder was saved from this very class (its config's `architectures`); loading another
    class of the family (a base model from a full checkpoint) only refuses tensors of another shape. Pass
    `output_loading_info=True` or `ignore_mismatched_sizes=True` for transformers' lenient behaviour (and its
    loading info). A folder without config.json, with invalid JSON or values in it, or with a truncated weights file
    raises an error naming that file and the fix instead of a deep traceback. Buffers a model may legitimately lack
    in older files belong in its `_keys_to_ignore_on_load_missing` (transformers leaves them out of missing keys).
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        folder = local_folder(pretrained_model_name_or_path, kwargs.get("subfolder"))
        lenient = kwargs.get("output_loading_info") or kwargs.get("ignore_mismatched_sizes")
        if folder is None or lenient:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if kwargs.get("config") is None and not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(
                f"{os.path.join(folder, 'config.json')} is missing: {cls.__name__}.from_pretrained needs the folder "
                "written by save_pretrained (config.json and model.safetensors)."
            )
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path,
                *model_args,
                **{**kwargs, "output_loading_info": True, "ignore_mismatched_sizes": True},
            )
        except (ValueError, TypeError, KeyError, RuntimeError, OSError, SafetensorError) as error:
            problem = diagnose_model_folder(folder, cls.config_class)
            if problem is None:
                raise
            raise ValueError(f"Cannot load {cls.__name__} from {folder}: {problem}") from error
        missing, unexpected = info.get("missing_keys") or (), info.get("unexpected_keys") or ()
        mismatched = info.get("mismatched_keys") or ()
        if not _saved_as(folder, cls):
            # a base model from a full checkpoint (heads dropped) or a head model on a base one (heads initialised):
            # transformers' usual cross-class loading, so only shapes that differ are an error
            missing, unexpected = (), ()
        if missing or unexpected or mismatched:
            parts = []
            if missing:
                parts.append(f"missing from the weights (would be randomly initialised): {_shorten(missing)}")
            if unexpected:
                parts.append(f"in the weights but not in the model (would be dropped): {_shorten(unexpected)}")
            if mismatched:
                shapes = [f"{k} {list(a)} in the weights vs {list(b)} in the model" for k, a, b in mismatched]
                parts.append(f"of another shape: {_shorten(shapes)}")
            weights = [n for n in sorted(os.listdir(folder)) if n.endswith((".safetensors", ".bin"))]
            raise ValueError(
                f"The weights {weights} in {folder} do not match its config.json for {cls.__name__}: "
                + "; ".join(parts)
                + ". Use the config.json saved with these weights (layers, sizes), or pass "
                "ignore_mismatched_sizes=True / output_loading_info=True to load anyway."
            )
        return model
