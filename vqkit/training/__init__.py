"""Training: ``vqkit.training.train(TrainConfig(...))`` is what ``vqkit train`` runs.

The default model and recipe live in :data:`DEFAULTS` (one constant). The loop (and torch) load on first use,
so the CLI can read the defaults without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from vqkit.training.config import DEFAULTS, TrainConfig, default_model

_LAZY = {
    "train": "vqkit.training.loop",
    "TrainResult": "vqkit.training.loop",
    "TrainingDiverged": "vqkit.training.loop",
    "run_ddp_cpu": "vqkit.training.spawn",
}

__all__ = ["DEFAULTS", "TrainConfig", "default_model", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vqkit.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
