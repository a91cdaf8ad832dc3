"""Shared pieces of the conversion scripts: safe loading, key consumption with a leftover check, parity printout,
model cards and Hub uploads (through `hf_t2i.hub`, like every other hf_t2i checkpoint).

Every script follows the same contract (STYLE.md rule 9): a key-map table at the top, every source key popped
through a [`KeyConsumer`] (or listed as intentionally dropped), leftovers fail the conversion, and the converted model
is compared against the original on a fixed input. Errors meant for the user are [`ConversionError`]s; `run_main`
turns them into one clear line and exit status 2 instead of a traceback from inside torch.
"""

from __future__ import annotations

import collections
import fnmatch
import os
import pickle
import sys
import types
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch


class ConversionError(Exception):
    """A problem with the user's input files or options (not a bug in the converter)."""


# -- loading ------------------------------------------------------------------------------------------------------


def check_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a `Path` if it is a non-empty regular file, else a `ConversionError` naming `what`."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{what} not found: {path}")
    if not path.is_file():
        raise ConversionError(f"{what} must be a file, got a directory or special file: {path}")
    if path.stat().st_size == 0:
        raise ConversionError(f"{what} is empty: {path}")
    return path


def _describe_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if zipfile.is_zipfile(path):
        return "a zip archive (torch.save's default format)"
    if head[:1] == b"\x80":
        return "a legacy torch.save / pickle stream"
    if head.startswith(b"{") or head.startswith(b"["):
        return "a JSON file"
    return "an unrecognised format"


# Globals any torch.save file may need besides storages: tensor / parameter rebuilders and plain containers.
_BASE_ALLOWED_GLOBALS = {
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": torch._utils._rebuild_parameter_with_state,
    "torch.device": torch.device,
    "torch.Size": torch.Size,
}


class PickledObject:
    """Stands in for a class of a pickled module tree (e.g. `dall_e.encoder.Encoder`): it receives the object's
    attributes and runs none of the original code."""

    pickled_class = ""

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_class}>"


def stand_ins(names: Iterable[str]) -> dict[str, type]:
    """One [`PickledObject`] subclass per full class name ("module.QualName")."""
    return {
        n: type(n.rsplit(".", 1)[-1], (PickledObject,), {"pickled_class": n, "__module__": __name__}) for n in names
    }


def _restricted_pickle_module(allowed: Mapping[str, object]):
    """A `pickle`-like module whose unpickler creates only the globals in `allowed` (plus the base ones)."""
    allowed = {**_BASE_ALLOWED_GLOBALS, **allowed}

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            module = "builtins" if module == "__builtin__" else module  # protocol 2 writes Python 2's name
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            raise pickle.UnpicklingError(f"global {full!r} is not in the list of known classes")

    namespace = types.SimpleNamespace(
        __name__="restricted_pickle",
        Unpickler=RestrictedUnpickler,
        load=lambda f, **kwargs: RestrictedUnpickler(f, **kwargs).load(),
        UnpicklingError=pickle.UnpicklingError,
    )
    return namespace


def load_torch_file(
    path: str | os.PathLike,
    what: str,
    known_classes: Mapping[str, type] | None = None,
    trust_pickle: bool = False,
    safe_globals: Iterable[type] = (),
):
    """Load a file written by `torch.save` without running code from it.

    By default torch's own restricted (`weights_only`) loader is used: tensors, containers and primitive values
    only. A whole pickled module tree (OpenAI's dVAE) needs `known_classes`, a map from full class names to
    stand-ins ([`stand_ins`]): a restricted unpickler then creates those and the tensor rebuilders, nothing else,
    for both the zip and the legacy `torch.save` formats. `trust_pickle=True` lifts every restriction: the file may
    then run arbitrary code, so use it only for files you trust. `safe_globals` are extra plain-data classes the
    restricted loader may build (e.g. the `argparse.Namespace` of training arguments saved in a checkpoint).

    Raises:
        ConversionError: the file is missing, truncated, not a torch file, or needs a class that is not allowed.
    """
    path = check_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SourceChangeWarning of legacy module pickles, weights_only notices
            if trust_pickle:
                return torch.load(path, map_location="cpu", weights_only=False)
            if known_classes is not None:
                module = _restricted_pickle_module(known_classes)
                return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
            with torch.serialization.safe_globals(list(safe_globals)):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err).strip()
        if "WeightsUnpickler error:" in message:
            message = message.split("WeightsUnpickler error:", 1)[1]
        message = " ".join(message.split())[:300]
        file_format = _describe_format(path)
        if file_format in ("a JSON file", "an unrecognised format"):
            raise ConversionError(f"{what} ({path}) is not a PyTorch checkpoint ({file_format}): {message}") from None
        if any(s in message for s in ("global", "Unsupported", "allowlist", "Can only", "persistent_load")):
            raise ConversionError(
                f"{what} ({path}) holds an object the restricted loader does not accept ({message}). It is not the "
                "expected format, or was written by an unexpected version. If you trust the file, --trust-pickle "
                "loads it with full unpickling (which runs code from the file)."
            ) from None
        raise ConversionError(
            f"{what} ({path}) is not a readable PyTorch checkpoint ({_describe_format(path)}): {message}"
        ) from None
    except ModuleNotFoundError as err:
        raise ConversionError(
            f"{what} ({path}) needs the Python module {err.name!r} to be unpickled with --trust-pickle; install it, "
            "or drop --trust-pickle to use the restricted loader."
        ) from None
    except (
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        zipfile.BadZipFile,
        KeyError,
        AttributeError,
        TypeError,
    ) as err:
        message = " ".join(str(err).split())[:300] or type(err).__name__
        raise ConversionError(
            f"{what} ({path}) could not be read as a PyTorch checkpoint ({_describe_format(path)}; the file may be "
            f"truncated or corrupted): {message}"
        ) from None


def module_tensors(obj, what: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The `state_dict()` of a pickled module tree (real modules or [`PickledObject`] stand-ins): parameters and
    persistent buffers by dotted name. Only tensors leave this function."""
    if isinstance(obj, torch.nn.Module):
        return {prefix + k: v.detach() for k, v in obj.state_dict().items()}
    attributes = getattr(obj, "__dict__", None)
    if not isinstance(attributes, dict) or "_modules" not in attributes:
        raise ConversionError(f"{what}: expected a pickled torch module, found {type(obj).__name__}.")
    out = {}
    non_persistent = attributes.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (attributes.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(value, torch.Tensor):
                raise ConversionError(f"{what}: {prefix + name} is a {type(value).__name__}, not a tensor.")
            out[prefix + name] = value.detach()
    for name, child in (attributes.get("_modules") or {}).items():
        if child is not None:
            out.update(module_tensors(child, what, f"{prefix}{name}."))
    return out


def require_mapping(obj, what: str, required: Iterable[str] = ()) -> Mapping:
    """`obj` if it is a mapping holding every key of `required`, else a `ConversionError`."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{what} must hold a dict, got {type(obj).__name__}. Is this the right file?")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ConversionError(
            f"{what} lacks the entries {missing} (it has {sorted(map(str, obj))[:12]}). Is this the right file?"
        )
    return obj


def tensors_only(state: Mapping, what: str) -> dict[str, torch.Tensor]:
    """Check that a state dict maps strings to tensors; return it as a plain dict."""
    require_mapping(state, what)
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{what} must map names to tensors; these entries do not: {bad[:8]}")
    return dict(state)


# -- key consumption ----------------------------------------------------------------------------------------------


class KeyConsumer:
    """Pops source tensors by name; `finish()` fails if any key was neither consumed nor declared dropped.

    Args:
        state: the source state dict (name -> tensor).
        what: a name for the source in error messages.
    """

    def __init__(self, state: Mapping[str, torch.Tensor], what: str):
        self.state = dict(state)
        self.what = what
        self.dropped: dict[str, str] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def remaining(self) -> list[str]:
        return list(self.state)

    def pop(self, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Remove and return `key` (checking its shape when given)."""
        if key not in self.state:
            near = [k for k in self.state if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:5]
            raise ConversionError(
                f"{self.what}: expected key {key!r} is missing"
                + (f" (keys with the same ending: {near})" if near else "")
                + ". The checkpoint does not match the architecture read from it."
            )
        tensor = self.state.pop(key)
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise ConversionError(f"{self.what}: {key!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}.")
        return tensor

    def pop_optional(self, key: str) -> torch.Tensor | None:
        return self.state.pop(key) if key in self.state else None

    def drop(self, pattern: str, reason: str) -> list[str]:
        """Declare the keys matching the glob `pattern` intentionally unused; returns them."""
        keys = [k for k in self.state if fnmatch.fnmatchcase(k, pattern)]
        for k in keys:
            del self.state[k]
            self.dropped[k] = reason
        return keys

    def finish(self) -> None:
        """Raise if any source key was left unconsumed."""
        if self.state:
            left = sorted(self.state)
            raise ConversionError(
                f"{self.what}: {len(left)} source keys were not converted (the checkpoint has parts this converter "
                f"does not know): {left[:20]}{' ...' if len(left) > 20 else ''}"
            )


def load_converted(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """`model.load_state_dict(state, strict=True)` with a `ConversionError` that lists the mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise ConversionError(
            f"{what}: converted weights do not fit the target model: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}, shape mismatches {wrong[:10]}"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


# -- shared key maps ---------------------------------------------------------------------------------------------


def ldm_resnet(keys: KeyConsumer, src: str, dst: str, out: dict) -> None:
    """A taming / latent-diffusion `ResnetBlock` -> a diffusers `ResnetBlock2D` (`nin_shortcut` -> `conv_shortcut`)."""
    for name, target in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2")):
        for p in ("weight", "bias"):
            out[f"{dst}.{target}.{p}"] = keys.pop(f"{src}.{name}.{p}")
    if f"{src}.nin_shortcut.weight" in keys:
        for p in ("weight", "bias"):
            out[f"{dst}.conv_shortcut.{p}"] = keys.pop(f"{src}.nin_shortcut.{p}")


def ldm_attention(keys: KeyConsumer, src: str, dst: str, out: dict) -> None:
    """A taming / latent-diffusion single-head `AttnBlock` (1x1 convs) -> a diffusers `Attention` (linears)."""
    for p in ("weight", "bias"):
        out[f"{dst}.group_norm.{p}"] = keys.pop(f"{src}.norm.{p}")
    for name, target in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        out[f"{dst}.{target}.weight"] = keys.pop(f"{src}.{name}.weight")[:, :, 0, 0]  # 1x1 conv -> linear
        out[f"{dst}.{target}.bias"] = keys.pop(f"{src}.{name}.bias")


# -- parity and output --------------------------------------------------------------------------------------------


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch in the parity check: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def report_parity(name: str, delta: float, tolerance: float = 1e-4) -> bool:
    """Print one parity line; returns whether `delta <= tolerance`."""
    ok = delta <= tolerance
    print(f"parity {name}: max |delta| = {delta:.3e} ({'ok' if ok else 'FAILED'}, tolerance {tolerance:.0e})")
    return ok


def require_parity(parity: Mapping[str, float], tolerance: float = 1e-4) -> None:
    """A `ConversionError` unless every max |delta| in `parity` is within `tolerance` and its `tokens_identical`
    entry (1.0 or 0.0: the converted model draws the original's tokens) is set."""
    failed = [k for k, v in parity.items() if k != "tokens_identical" and v > tolerance]
    if failed or not parity["tokens_identical"]:
        raise ConversionError(f"the converted model does not match the original ({failed or 'tokens'}).")


def write_model_card(
    folder: str | os.PathLike,
    section: str,
    body: str,
    *,
    tags: Iterable[str] = (),
    license: str | None = None,
    repo_id: str | None = None,
) -> None:
    """The README.md of a converted checkpoint: the card every hf_t2i checkpoint gets (`hf_t2i.hub`: metadata with
    library_name, pipeline_tag, family tags and license; a "How to use" section), followed by a `## {section}`
    section that says where the weights come from and how they were checked.

    Args:
        folder: the folder the converted checkpoint was saved to (`save_pretrained` layout).
        section: the heading of the conversion section.
        body: its text (Markdown).
        tags: tags besides the ones `hf_t2i.hub` adds (e.g. the source project).
        license: the weights' license (default: hf_t2i's, apache-2.0).
        repo_id: the Hub repository the card is for; it names the card and its examples (default: the folder's
            name).
    """
    from hf_t2i.hub import describe_folder, update_model_card

    folder = Path(folder)
    card = update_model_card(
        None, describe_folder(folder), repo_id or folder.resolve().name, license=license, tags=list(tags)
    )
    card.text = f"{card.text.rstrip()}\n\n## {section}\n\n{body.strip()}\n"
    card.save(folder / "README.md")


def add_hub_arguments(parser, default_license: str | None = None) -> None:
    """`--push-to-hub REPO` and `--license`, the same on every converter."""
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="upload the converted folder with its model card to this Hub model repository (`user/name`; created "
        "before the conversion when missing; one commit)",
    )
    parser.add_argument(
        "--license",
        default=default_license,
        help="license of the weights, for the model card's metadata (default: "
        + (f"{default_license}, the source's" if default_license else "apache-2.0; set the one your weights use")
        + ")",
    )


def create_hub_repo(repo_id: str | None) -> str | None:
    """For `--push-to-hub REPO`: check the id and create the repository BEFORE converting (a malformed id or a
    missing login fails in a second, not after a long conversion). Returns the full id (`user/name`), or None when
    `repo_id` is None."""
    if repo_id is None:
        return None
    from hf_t2i import hub

    try:
        hub.check_repo_id(repo_id, "--push-to-hub")
        return hub.create_hub_repo(repo_id)
    except ValueError as err:
        raise ConversionError(str(err)) from None
    except OSError as err:  # no token, no network, no permission (huggingface_hub's errors are OSErrors)
        message = " ".join(str(err).split())[:300]
        raise ConversionError(
            f"--push-to-hub {repo_id!r}: the repository could not be created ({type(err).__name__}: {message}). Log "
            "in with `hf auth login` (or set HF_TOKEN), or convert without --push-to-hub and upload the folder later."
        ) from None


def push_to_hub(
    folder: str | os.PathLike, repo_id: str, what: str, *, tags: Iterable[str] = (), license: str | None = None
) -> str:
    """Upload a converted folder and its card as one commit (`hf_t2i.hub.push_folder_to_hub`, as every hf_t2i
    upload); returns the commit's URL. `what` names the source in the commit message."""
    from hf_t2i.hub import push_folder_to_hub

    try:
        commit = push_folder_to_hub(
            folder, repo_id, commit_message=f"Upload {what} converted to hf_t2i", tags=list(tags), license=license
        )
    except OSError as err:
        message = " ".join(str(err).split())[:300]
        raise ConversionError(
            f"--push-to-hub {repo_id!r}: the upload failed ({type(err).__name__}: {message}). The converted folder "
            f"{folder} is complete; upload it again with `hf upload {repo_id} {folder}`."
        ) from None
    print(f"pushed {folder} to {commit.commit_url}")
    return commit.commit_url


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Call `main(argv)`; a `ConversionError` becomes one `error: ...` line on stderr and exit status 2."""
    try:
        return main(argv) or 0
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
