"""Bring a pretrained tokenizer: turn a model published in another project's format into a vqkit model file.

An importer (registered in :data:`importers`; the built-in ones, for diffusers' ``VQModel`` folders and
taming-transformers checkpoints, live with the components they fill in, ``vqkit.plugins.vqgan``) reads the
foreign config, checks each field, reads the weights without running code (safetensors, or pickles through
:mod:`vqkit.safeunpickle`) and returns an :class:`ImportPlan`: which components with which options, and the
weights under vqkit's names. :func:`import_model` then checks every tensor's shape against the model the plan
describes (built on the ``meta`` device, allocating nothing) before anything is built, builds it, loads the
weights and writes an ordinary vqkit model file that records where it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vqkit.discovery import load_plugins
from vqkit.errors import ModelFileError, VQKitError
from vqkit.model import VQVAE, build_model, expected_state_shapes
from vqkit.modelfile import save
from vqkit.registry import Registry, loader
from vqkit.spec import ModelSpec

__all__ = ["SOURCE_KEY", "ImportPlan", "import_model", "importers", "sha256"]

# The model file's metadata key that records where an imported model came from (JSON).
SOURCE_KEY = "vqkit.source"

importers = Registry("importer", loader=loader)


@dataclass
class ImportPlan:
    """What an importer read: the model to build and its weights under vqkit's names.

    ``fields`` maps a tensor-name prefix to the config fields that size those tensors, so that a tensor of
    the wrong shape is reported as the config field that does not fit. ``source`` is recorded in the model
    file (format, file names, their config, what was left out)."""

    format: str
    parts: dict[str, str]
    options: dict[str, dict[str, Any]]
    channels: int
    image_size: int
    latent_dim: int
    codebook_size: int
    tensors: dict[str, torch.Tensor]
    config_path: Path
    fields: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _choose(source: Path, config: Path | None, format: str | None) -> Any:
    load_plugins()
    if format is not None:
        return importers.entry(format).obj
    for name in importers.names():
        candidate = importers.entry(name).obj
        if candidate.recognises(source, config):
            return candidate
    known = ", ".join(importers.names()) or "none"
    raise ModelFileError(
        f"{source}: not a model vqkit can import (importers: {known}); a diffusers VQModel is a folder with "
        f"config.json, a taming-transformers model a .ckpt file with its YAML config (--config)"
    )


def _blame(plan: ImportPlan, name: str) -> str:
    matches = [prefix for prefix in plan.fields if name.startswith(prefix)]
    return plan.fields[max(matches, key=len)] if matches else "the architecture fields"


def _spec(plan: ImportPlan) -> ModelSpec:
    return ModelSpec(
        **plan.parts,
        encoder_options=plan.options["encoder"],
        quantizer_options=plan.options["quantizer"],
        decoder_options=plan.options["decoder"],
        channels=plan.channels,
        image_size=plan.image_size,
        latent_dim=plan.latent_dim,
        codebook_size=plan.codebook_size,
    )


def check_shapes(plan: ImportPlan) -> None:
    """Every weight must be one the planned model has, with its shape; the model's own state (buffers the
    foreign format does not have, such as codebook upkeep counters) may be absent."""
    try:
        wanted = expected_state_shapes(_spec(plan))
    except VQKitError as exc:
        raise ModelFileError(f"{plan.config_path}: {exc}") from exc
    except ValueError as exc:
        raise ModelFileError(f"{plan.config_path}: {exc}") from exc
    extra = sorted(set(plan.tensors) - set(wanted))
    if extra:
        raise ModelFileError(
            f"{plan.config_path}: field {_blame(plan, extra[0])} does not fit the weights: they hold "
            f"{extra[0]}, which the config's model does not have ({len(extra)} such tensors)"
        )
    for name, shape in wanted.items():
        have = plan.tensors.get(name)
        if have is None:
            if ".upkeep." in name:
                continue
            raise ModelFileError(
                f"{plan.config_path}: field {_blame(plan, name)} does not fit the weights: the config's model "
                f"has {name} {list(shape)}, the weights do not"
            )
        if tuple(have.shape) != shape:
            raise ModelFileError(
                f"{plan.config_path}: field {_blame(plan, name)} does not fit the weights: {name} is "
                f"{list(have.shape)} in the weights, the config makes it {list(shape)}"
            )


def _build(plan: ImportPlan) -> VQVAE:
    try:
        model = build_model(
            **plan.parts,
            channels=plan.channels,
            image_size=plan.image_size,
            latent_dim=plan.latent_dim,
            codebook_size=plan.codebook_size,
            encoder_options=plan.options["encoder"],
            quantizer_options=plan.options["quantizer"],
            decoder_options=plan.options["decoder"],
        )
    except VQKitError as exc:
        raise ModelFileError(f"{plan.config_path}: {exc}") from exc
    state = model.state_dict()
    state.update({k: v.to(state[k].dtype) for k, v in plan.tensors.items()})
    model.load_state_dict(state, strict=True)
    return model.eval()


def import_model(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    format: str | None = None,
    image_size: int | None = None,
    layout: str = "auto",
) -> VQVAE:
    """Import a published tokenizer: a diffusers ``VQModel`` folder (``config.json`` + weights) or a
    taming-transformers / latent-diffusion checkpoint with its YAML ``config``.

    ``format`` names the importer (``"diffusers"``, ``"taming"``; default: recognised from ``source``);
    ``image_size`` the size the model is used at (default: the original training resolution). With
    ``output``, the model is written there (``layout`` as :func:`vqkit.save`) with its source recorded in the
    metadata (:data:`SOURCE_KEY`). Returns the model, in eval mode."""
    src = Path(source)
    if not src.exists():
        raise ModelFileError(f"no such file or folder: {src}")
    cfg = Path(config) if config is not None else None
    plan = _choose(src, cfg, format).read(src, cfg)
    if image_size is not None:
        plan.image_size = int(image_size)
    check_shapes(plan)
    model = _build(plan)
    if output is not None:
        meta = {SOURCE_KEY: json.dumps(plan.source, sort_keys=True, default=str)}
        save(model, output, metadata=meta, layout=layout)
    return model


def imported_from(meta: dict[str, str]) -> dict[str, Any] | None:
    """The recorded source of an imported model file's metadata, or None."""
    text = meta.get(SOURCE_KEY)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
