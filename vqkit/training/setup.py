"""Before the first step: which model (new, from a file, or a resumed run), and what the header says of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vqkit import checks
from vqkit.errors import VQKitError
from vqkit.model import VQVAE, ModelSpec, build_model
from vqkit.modelfile import load, read_spec
from vqkit.training.checkpoint import STATE_NAME, load_state, state_path_for
from vqkit.training.config import DEFAULT_LR, TrainConfig
from vqkit.training.rundir import check_resumable

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
        have = spec.options(part)  # every option the file's model was built with
        for key, want in given.items():
            current = have.get(key)
            if not _same(list(want) if isinstance(want, tuple) else want, current):
                diffs.append(f"{part}.{key}={want!r} (the file has {current!r})")
    if channels is not None and channels != spec.channels:
        diffs.append(f"channels {channels} (the file has {spec.channels})")
    if size is not None and size != spec.image_size:
        diffs.append(f"image size {size} (the file has {spec.image_size})")
    return diffs


def model_and_state(config: TrainConfig) -> tuple[VQVAE | None, dict[str, Any] | None]:
    """The model of ``config.init_from`` (after checking that the run asks for no other model) and, when
    resuming, the training state beside it; ``(None, None)`` for a new model, built once the data are known."""
    if not config.init_from:
        return None, None
    path = Path(config.init_from)
    if config.resume:
        check_resumable(path, STATE_NAME)
    spec, _ = read_spec(path)
    diffs = model_differences(spec, config.model, config.channels, config.image_size)
    if diffs:
        verb = "resume" if config.resume else "start from"
        raise VQKitError(
            f"cannot {verb} {path} with a different model: this run asks for {'; '.join(diffs)}. "
            "Drop those options to continue the same model, or start a new run from scratch"
        )
    state = None
    if config.resume:
        state = load_state(state_path_for(path))
        if state["spec"] != spec.to_json():
            raise VQKitError(
                f"the training state beside {path} belongs to a different model than the file; "
                "it cannot be resumed (was one of them copied from another run?)"
            )
    return load(path).train(), state


def new_model(config: TrainConfig, channels: int, image_size: int) -> VQVAE:
    kwargs = {**config.model, "channels": channels, "image_size": image_size}
    return build_model(**kwargs, seed=config.seed)


def model_lr(model: VQVAE) -> float:
    """The peak lr a run of ``model`` takes when its config sets none: the lowest ``recommended_lr`` of its
    encoder and decoder, else :data:`DEFAULT_LR`. A plugin's value that is not a positive number is refused."""
    found = []
    for part in ("encoder", "decoder"):
        value = getattr(getattr(model, part), "recommended_lr", None)
        if value is not None:
            name = getattr(model.spec, part)
            found.append(checks.number(value, f"{part} {name!r}'s recommended_lr", minimum=0, open_min=True))
    return float(min(found)) if found else DEFAULT_LR


def describe_model(model: VQVAE) -> list[str]:
    """The header's model lines: every component with all its resolved options, and the code budget."""
    return model.describe().splitlines()
