"""Before the first step: which model (new, from a file, or a resumed run) and which images."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vqkit.data import DataError, load_images
from vqkit.errors import VQKitError
from vqkit.model import VQVAE, ModelSpec, build_model
from vqkit.modelfile import read_spec
from vqkit.registry import REGISTRIES
from vqkit.training.config import TrainConfig, default_model

PARTS = ("encoder", "quantizer", "decoder")


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def model_differences(
    spec: ModelSpec, requested: dict[str, Any], channels: int | None, size: int | None
) -> list[str]:
    """What ``requested`` (only what the user gave; None = not given) asks for that the model file is not."""
    diffs = []
    for key in (*PARTS, "latent_dim", "codebook_size"):
        want = requested.get(key)
        if want is not None and not _same(want, getattr(spec, key)):
            diffs.append(f"{key.replace('_', ' ')} {want!r} (the file has {getattr(spec, key)!r})")
    for part in PARTS:
        given = requested.get(f"{part}_options") or {}
        have = getattr(spec, f"{part}_options")
        name = getattr(spec, part)
        defaults = {}
        if name in REGISTRIES[part]:
            defaults = {o.name: o.default for o in REGISTRIES[part].entry(name).options if not o.required}
        for key, want in given.items():
            current = have.get(key, defaults.get(key))
            if not _same(list(want) if isinstance(want, tuple) else want, current):
                diffs.append(f"{part}.{key}={want!r} (the file has {current!r})")
    if channels is not None and channels != spec.channels:
        diffs.append(f"channels {channels} (the file has {spec.channels})")
    if size is not None and size != spec.image_size:
        diffs.append(f"image size {size} (the file has {spec.image_size})")
    return diffs


def existing_model(config: TrainConfig) -> tuple[ModelSpec, Path]:
    """The spec of ``config.init_from``, after checking that the run asks for no other model."""
    path = Path(config.init_from or "")
    spec, _ = read_spec(path)
    diffs = model_differences(spec, config.model, config.channels, config.image_size)
    if diffs:
        verb = "resume" if config.resume else "start from"
        raise VQKitError(
            f"cannot {verb} {path} with a different model: this run asks for {'; '.join(diffs)}. "
            "Drop those options to continue the same model, or start a new run without --model"
        )
    return spec, path


def load_training_images(
    config: TrainConfig, channels: int | None, image_size: int | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Training images, and held-out images for evaluation (``test`` split; a folder too small to hold any
    out is evaluated on its first training images, and the metrics say so)."""
    kw = dict(
        channels=channels,
        image_size=image_size,
        download=config.download,
        skip_bad=config.skip_bad,
        data_root=config.data_root,
    )
    train = load_images(config.data, split="train", **kw)  # type: ignore[arg-type]
    # After the training split, size and channels are known: the held-out images must match them.
    kw.update(channels=train.shape[1], image_size=train.shape[-1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped files were already reported for the training split
            held = load_images(config.data, split="test", **kw)  # type: ignore[arg-type]
        split = "test"
    except DataError:
        held, split = train, "train"
    return train, held[: config.eval_images], split


def model_kwargs(requested: dict[str, Any]) -> dict[str, Any]:
    """``build_model`` arguments: the default model, with what was asked for on top. A part's default options
    carry over only while that part keeps its default component (``--set quantizer.beta=0.5`` adds to the
    default quantizer's options; ``--quantizer ema`` starts from ema's own defaults)."""
    kwargs = default_model()
    given = {k: v for k, v in requested.items() if v is not None}
    for part in PARTS:
        key = f"{part}_options"
        if given.get(part, kwargs[part]) != kwargs[part]:
            kwargs[key] = {}
        kwargs[key] = {**kwargs[key], **given.pop(key, {})}
    return {**kwargs, **given}


def new_model(config: TrainConfig, channels: int, image_size: int) -> VQVAE:
    return build_model(
        **model_kwargs(config.model), channels=channels, image_size=image_size, seed=config.seed
    )
