"""The model file: one ``.safetensors`` file, weights plus the model spec as JSON in its metadata.
Loading never unpickles anything."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vqkit.errors import ModelFileError, UnknownComponentError
from vqkit.fileio import atomic_path
from vqkit.model import VQVAE, ModelSpec, build_from_spec
from vqkit.registry import REGISTRIES

FORMAT_KEY = "format"
FORMAT_VALUE = "vqkit.model"
SPEC_KEY = "vqkit.spec"


def save(model: VQVAE, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (a crash leaves the previous file intact)."""
    meta = {FORMAT_KEY: FORMAT_VALUE, SPEC_KEY: model.spec.to_json(), **(metadata or {})}
    # clone(): safetensors refuses tensors that share storage (tied weights, views).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_spec(path: str | os.PathLike[str]) -> tuple[ModelSpec, dict[str, str]]:
    """The spec and raw metadata of a model file, without building the model."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"no such model file: {p}")
    if p.is_dir():
        raise ModelFileError(f"{p} is a folder, not a model file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for truncated/garbage files
        raise ModelFileError(f"{p} is not a readable safetensors model file ({exc})") from exc
    if meta.get(FORMAT_KEY) != FORMAT_VALUE or SPEC_KEY not in meta:
        raise ModelFileError(
            f"{p} is a safetensors file but not a vqkit model (no vqkit spec in its metadata)"
        )
    try:
        spec = ModelSpec.from_json(meta[SPEC_KEY])
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{p}: its vqkit spec is corrupt ({exc})") from exc
    return spec, meta


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> VQVAE:
    """Rebuild a model from a vqkit model file, weights included, in eval mode."""
    spec, _ = read_spec(path)
    try:
        model = build_from_spec(spec)
    except UnknownComponentError as exc:
        missing = {
            dist
            for part, dist in spec.origins.items()
            if dist and part in REGISTRIES and getattr(spec, part) not in REGISTRIES[part]
        }
        if missing:
            hint = f" This model needs the plugin package: pip install {' '.join(sorted(missing))}"
        else:  # built with a plugin file or module (no package recorded): it has to be loaded again
            hint = (
                " If a plugin file or module provides it, load that plugin "
                "(vqkit --plugin MODULE_OR_FILE, VQKIT_PLUGINS, or vqkit.load_plugins([...]))."
            )
        raise ModelFileError(f"{path}: {exc}{hint}") from exc
    try:
        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelFileError(f"{path}: weights do not fit the model its spec describes ({exc})") from exc
    return model.to(device).eval()
