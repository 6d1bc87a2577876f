"""Checkpoints: the model file (what a user keeps) and, beside it, the training state for resuming.

``train_state.pt`` holds the weights again together with the optimizer, the step, the RNG states and the run's
config and model spec, in ONE atomically written file: resuming reads only it, so it can never pair weights of
one step with an optimizer of another. It is loaded with ``torch.load(weights_only=True)`` (no pickle code).
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


def save_checkpoint(
    run_dir: Path, model: VQVAE, optimizer: torch.optim.Optimizer, step: int, config_json: str
) -> Path:
    """Write ``train_state.pt`` then ``model.safetensors``, each atomically. Returns the model file."""
    state: dict[str, Any] = {
        "format": STATE_FORMAT,
        "step": step,
        "spec": model.spec.to_json(),
        "config": config_json,
        "model": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    with atomic_path(run_dir / STATE_NAME) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch's stream writer reports a full disk as a RuntimeError
            raise VQKitError(f"cannot write {run_dir / STATE_NAME}: {exc}") from exc
    return save(model, run_dir / MODEL_NAME, metadata={STEP_KEY: str(step)})


def load_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ModelFileError(
            f"no training state beside the model ({path} is missing), so the run cannot be resumed; "
            f"drop --resume to start a new run from the model's weights"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, or not a torch file at all
        raise ModelFileError(f"{path} is not a readable vqkit training state ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "step" not in state:
        raise ModelFileError(f"{path} is not a vqkit training state (format {STATE_FORMAT})")
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["rng_cpu"])
    cuda = state.get("rng_cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu").clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
