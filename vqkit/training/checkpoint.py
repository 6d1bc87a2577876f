"""Training state for resuming, shared by every trainer: one atomically written ``train_state.pt`` per run.

It holds the weights together with the optimizer, the step, the RNG states and the run's config, in ONE file:
resuming reads only it, so it can never pair weights of one step with an optimizer of another. It holds only
tensors and plain Python values and is loaded with ``torch.load(weights_only=True)`` (no pickle code).
The VQ-VAE trainer also writes ``model.safetensors`` (what a user keeps) beside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vqkit.errors import ModelFileError, VQKitError
from vqkit.fileio import atomic_path
from vqkit.model import VQVAE
from vqkit.modelfile import save

MODEL_NAME = "model.safetensors"
STATE_NAME = "train_state.pt"
STATE_FORMAT = 1
STEP_KEY = "vqkit.train.step"


def state_path_for(model_path: str | os.PathLike[str]) -> Path:
    return Path(model_path).with_name(STATE_NAME)


def to_cpu(obj: Any) -> Any:
    """A copy of a (nested) state on the CPU, detached: what a checkpoint stores."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu").clone()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def rng_state() -> dict[str, Any]:
    return {
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["rng_cpu"])
    cuda = state.get("rng_cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_state(path: Path, kind: str, step: int, **parts: Any) -> None:
    """Write a training state atomically: ``kind`` names the trainer, ``parts`` its model, optimizer, config,
    ...; the RNG states are added."""
    state = {"format": STATE_FORMAT, "kind": kind, "step": step, **to_cpu(parts), **rng_state()}
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch's stream writer reports a full disk as a RuntimeError
            raise VQKitError(f"cannot write {path}: {exc}") from exc


def load_state(path: Path, kind: str = "vqvae") -> dict[str, Any]:
    if not path.exists():
        raise ModelFileError(
            f"no training state beside the model ({path} is missing), so the run cannot be resumed; "
            f"start a new run from the model's weights instead (without resume)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, or not a torch file at all
        raise ModelFileError(f"{path} is not a readable vqkit training state ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "step" not in state:
        raise ModelFileError(f"{path} is not a vqkit training state (format {STATE_FORMAT})")
    if state.get("kind", "vqvae") != kind:
        raise ModelFileError(f"{path} is the training state of a {state.get('kind')} run, not a {kind} run")
    return state


def save_checkpoint(run_dir: Path, model: VQVAE, step: int, **parts: Any) -> Path:
    """The VQ-VAE trainer's checkpoint: ``train_state.pt`` then ``model.safetensors``, each atomically."""
    save_state(
        run_dir / STATE_NAME, "vqvae", step, spec=model.spec.to_json(), model=model.state_dict(), **parts
    )
    return save(model, run_dir / MODEL_NAME, metadata={STEP_KEY: str(step)})
