"""Model files. Two layouts hold the same model:

- one ``.safetensors`` file: the weights, with the model spec as JSON in its metadata (``vqkit.save(model,
  "m.safetensors")``);
- a folder in the Hugging Face layout: ``config.json`` (the spec) + ``model.safetensors`` (the weights, which
  carry the spec too), as the Hub and its tools expect (``vqkit.save(model, "m/", layout="hf")``).

:func:`load` takes either. A model file is untrusted input: nothing is unpickled, every field of the spec is
checked, the components it names must be installed, and the tensors it holds must be the ones the spec's model
has (found on the ``meta`` device, allocating nothing) before any model is built.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vqkit import checks
from vqkit.device import resolve_device
from vqkit.discovery import load_plugins
from vqkit.errors import ModelFileError, OptionError, VQKitError
from vqkit.fileio import atomic_dir, atomic_path
from vqkit.model import VQVAE, build_from_spec, expected_state_shapes
from vqkit.registry import REGISTRIES
from vqkit.spec import PARTS, ModelSpec
from vqkit.textformats import load_json

FORMAT_KEY = "format"
FORMAT_VALUE = "vqkit.model"
SPEC_KEY = "vqkit.spec"
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_MODEL_TYPE = "vqkit"
LAYOUTS = ("auto", "file", "hf")

# A package name as PEP 508 allows it, and a plain release version (no local or epoch part): only text of this
# shape from a model file is ever shown inside a `pip install` command.
_PACKAGE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")
_RELEASE = re.compile(
    r"^[0-9]{1,9}(\.[0-9]{1,9}){0,5}((a|b|rc)[0-9]{1,9})?(\.post[0-9]{1,9})?(\.dev[0-9]{1,9})?$"
)


# --- writing ---------------------------------------------------------------------------------------------------
_OS_ERROR = re.compile(r"os error (\d+)")


def write_safetensors(
    tensors: dict[str, torch.Tensor], tmp: Path, target: Path, metadata: dict[str, str]
) -> None:
    """``save_file`` into ``tmp`` (an atomic write's temporary file for ``target``). safetensors reports a
    full disk or a failed write as its own error with the OS's text inside; here it is one line naming the
    file the user asked for (whose earlier version the atomic write keeps)."""
    try:
        save_file(tensors, str(tmp), metadata=metadata)
    except SafetensorError as exc:
        m = _OS_ERROR.search(str(exc))
        why = os.strerror(int(m.group(1))) if m else str(exc)
        raise VQKitError(f"cannot write {target}: {why}; nothing was replaced") from exc


def _tensors(model: VQVAE) -> dict[str, torch.Tensor]:
    # clone(): safetensors refuses tensors that share storage (tied weights, views).
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _layout(path: str, layout: str) -> str:
    checks.text(layout, "layout", choices=LAYOUTS)
    if layout != "auto":
        return layout
    return "hf" if path.endswith(("/", os.sep)) or Path(path).is_dir() else "file"


def save(
    model: VQVAE,
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    *,
    layout: str = "auto",
) -> Path:
    """Write ``model`` atomically (a crash leaves the previous file or folder intact).

    ``layout="file"``: one ``.safetensors`` file; ``"hf"``: a folder with ``config.json`` and
    ``model.safetensors``; ``"auto"`` (default): a folder when ``path`` ends with a separator or is an existing
    folder, else a file. Returns the path written."""
    if not isinstance(model, VQVAE):
        raise OptionError(f"model must be a vqkit VQVAE, got {type(model).__name__}", param="model")
    target = checks.path(path, "path")
    _check_metadata(metadata)
    meta = {FORMAT_KEY: FORMAT_VALUE, SPEC_KEY: model.spec.to_json(), **(metadata or {})}
    tensors = _tensors(model)
    if _layout(os.fspath(path), layout) == "file":
        with atomic_path(target) as tmp:
            write_safetensors(tensors, tmp, target, meta)
        return target
    config = json.dumps({"model_type": HF_MODEL_TYPE, **model.spec.to_dict()}, indent=2, sort_keys=True)
    if not target.exists():
        with atomic_dir(target) as tmp:
            write_safetensors(tensors, tmp / HF_WEIGHTS, target, meta)
            (tmp / HF_CONFIG).write_text(config + "\n", encoding="utf-8")
        return target
    _check_replaceable(target)
    # An existing folder may hold the user's files (a README for the Hub): replace only our two, each
    # atomically, weights first (they carry the spec, so they are complete on their own).
    with atomic_path(target / HF_WEIGHTS) as tmp:
        write_safetensors(tensors, tmp, target / HF_WEIGHTS, meta)
    with atomic_path(target / HF_CONFIG) as tmp:
        tmp.write_text(config + "\n", encoding="utf-8")
    return target


def _check_metadata(metadata: Any) -> None:
    """Extra metadata is text to text (what safetensors stores), and may not replace the spec."""
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise OptionError(
            f"metadata must be a dict of text to text, got {checks.shown(metadata)}", param="metadata"
        )
    taken = sorted({FORMAT_KEY, SPEC_KEY} & set(metadata))
    if taken:
        raise OptionError(f"metadata may not set {', '.join(taken)}: vqkit writes it", param="metadata")


def _check_replaceable(folder: Path) -> None:
    """Refuse to overwrite a config.json or model.safetensors that is not a vqkit model's."""
    if not folder.is_dir():
        raise VQKitError(f"cannot write a model folder at {folder}: a file of that name exists")
    config, weights = folder / HF_CONFIG, folder / HF_WEIGHTS
    if config.exists():
        try:
            ours = json.loads(config.read_text(encoding="utf-8")).get("model_type") == HF_MODEL_TYPE
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise VQKitError(f"{config} exists and is not a vqkit model's config; not overwriting it")
    if weights.exists():
        try:
            _read_file_spec(weights)
        except ModelFileError:
            raise VQKitError(f"{weights} exists and is not a vqkit model; not overwriting it") from None


# --- reading ---------------------------------------------------------------------------------------------------
def _parse_spec(where: Path, data: Any) -> ModelSpec:
    try:
        return ModelSpec.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{where}: its vqkit spec is not valid: {exc}") from exc


def _header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The metadata and the tensor shapes of a safetensors file (its header only: no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            return f.metadata() or {}, shapes
    except Exception as exc:  # safetensors raises its own error types for truncated/garbage files
        raise ModelFileError(f"{path} is not a readable safetensors model file ({exc})") from exc


def _read_file_spec(path: Path) -> tuple[ModelSpec, dict[str, str], dict[str, tuple[int, ...]]]:
    meta, shapes = _header(path)
    if meta.get(FORMAT_KEY) != FORMAT_VALUE or SPEC_KEY not in meta:
        raise ModelFileError(
            f"{path} is a safetensors file but not a vqkit model (no vqkit spec in its metadata)"
        )
    try:
        data = load_json(meta[SPEC_KEY], "its spec")
    except ValueError as exc:
        raise ModelFileError(f"{path}: its vqkit spec is corrupt ({exc})") from exc
    return _parse_spec(path, data), meta, shapes


def _read_folder_spec(folder: Path) -> tuple[ModelSpec, dict[str, str], dict[str, tuple[int, ...]], Path]:
    config, weights = folder / HF_CONFIG, folder / HF_WEIGHTS
    if not config.is_file() or not weights.is_file():
        raise ModelFileError(
            f"{folder} is a folder but not a vqkit model: a model folder holds {HF_CONFIG} and {HF_WEIGHTS}"
        )
    try:
        data = load_json(config.read_text(encoding="utf-8-sig"), "it")
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{config} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("model_type") != HF_MODEL_TYPE:
        raise ModelFileError(f"{config} is not a vqkit model config (model_type is not {HF_MODEL_TYPE!r})")
    spec = _parse_spec(config, data)
    inner, meta, shapes = _read_file_spec(weights)
    if inner.to_dict() != spec.to_dict():
        raise ModelFileError(f"{folder}: {HF_CONFIG} and {HF_WEIGHTS} describe different models")
    return spec, meta, shapes, weights


def _read(path: str | os.PathLike[str]) -> tuple[ModelSpec, dict[str, str], dict[str, tuple[int, ...]], Path]:
    p = checks.path(path, "path")
    if not p.exists():
        raise ModelFileError(f"no such model file: {p}")
    if p.is_dir():
        return _read_folder_spec(p)
    spec, meta, shapes = _read_file_spec(p)
    return spec, meta, shapes, p


def read_spec(path: str | os.PathLike[str]) -> tuple[ModelSpec, dict[str, str]]:
    """The spec and raw metadata of a model file or folder, without building the model."""
    spec, meta, _, _ = _read(path)
    return spec, meta


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder in the Hugging Face layout (``config.json`` + ``model.safetensors``)."""
    p = Path(path)
    return p.is_dir() and (p / HF_CONFIG).is_file() and (p / HF_WEIGHTS).is_file()


def install_hint(distribution: Any) -> str | None:
    """``pip install NAME==VERSION`` for a distribution recorded in a model file, only when the text is a valid
    package name (and plain release version): text from a file is never shown as a command otherwise."""
    if not isinstance(distribution, str):
        return None
    name, sep, version = distribution.partition("==")
    if not _PACKAGE_NAME.match(name) or (sep and not _RELEASE.match(version)):
        return None
    return f"pip install {name}=={version}" if sep else f"pip install {name}"


def _missing_components(path: Path, spec: ModelSpec) -> ModelFileError | None:
    missing = [part for part in PARTS if getattr(spec, part) not in REGISTRIES[part]]
    if not missing:
        return None
    what = ", ".join(f"{part} {getattr(spec, part)!r}" for part in missing)
    recorded = {spec.origins.get(part) for part in missing} - {None}
    hints = sorted({h for h in map(install_hint, recorded) if h})
    if hints:
        return ModelFileError(
            f"{path}: unknown {what}: not installed. This model needs the plugin package: {'; '.join(hints)}"
        )
    if recorded:  # recorded, but not as a package name: say so rather than repeat it
        note = (
            "the package it names in its origins is not a valid package name, so no install command is shown"
        )
        return ModelFileError(f"{path}: unknown {what}: not installed; {note}")
    return ModelFileError(
        f"{path}: unknown {what}: not installed. If a plugin file or module provides it, load that plugin "
        f"(vqkit --plugin MODULE_OR_FILE, VQKIT_PLUGINS, or vqkit.load_plugins([...]))."
    )


def _blame(spec: ModelSpec, want: tuple[int, ...], have: tuple[int, ...]) -> str:
    """The spec fields whose values make a tensor's shape differ from the stored one."""
    sizes = {"codebook_size": spec.codebook_size, "latent_dim": spec.latent_dim, "channels": spec.channels}
    wrong = {name for a, b in zip(want, have) if a != b for name, v in sizes.items() if v == a}
    return ", ".join(sorted(wrong)) or "the component options"


def _check_tensors(path: Path, spec: ModelSpec, stored: dict[str, tuple[int, ...]]) -> None:
    """The stored tensors must be exactly those of the model the spec describes (before building it)."""
    try:
        wanted = expected_state_shapes(spec)
    except VQKitError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    except Exception:  # a component that cannot be built on the meta device: the strict load still checks
        return
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    if missing or extra:
        raise ModelFileError(
            f"{path}: the stored tensors do not fit the model its spec describes "
            f"(missing: {', '.join(missing[:3]) or 'none'}; unexpected: {', '.join(extra[:3]) or 'none'})"
        )
    for name, shape in wanted.items():
        if tuple(stored[name]) != shape:
            raise ModelFileError(
                f"{path}: field {_blame(spec, shape, stored[name])} does not fit the stored tensors: {name} would "
                f"be {list(shape)}, the file holds {list(stored[name])}"
            )


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> VQVAE:
    """Rebuild a model from a vqkit model file or folder (either layout), weights included, in eval mode.
    ``device``: cpu (default), cuda, cuda:N, mps or auto; one that is not here is an :class:`OptionError`."""
    dev = resolve_device(device)
    spec, _, shapes, weights = _read(path)
    path = checks.path(path, "path")
    load_plugins()
    error = _missing_components(Path(path), spec)
    if error is not None:
        raise error
    _check_tensors(Path(path), spec, shapes)
    try:
        model = build_from_spec(spec, dry_run=False)
    except VQKitError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    try:
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelFileError(f"{path}: weights do not fit the model its spec describes ({exc})") from exc
    return model.to(dev).eval()
