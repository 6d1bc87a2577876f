"""Training: ``vqkit.training.train(TrainConfig(...))`` is what ``vqkit train`` runs.

Every setting and its default lives in :class:`TrainConfig`; the model's defaults are the components' own (the
same as ``vqkit build`` gives). The loop (and torch) load on first use, so the CLI can read the config's
fields without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from vqkit.training.config import TrainConfig

_LAZY = {
    "train": "vqkit.training.loop",
    "TrainResult": "vqkit.training.loop",
    "TrainingDiverged": "vqkit.training.loop",
    "run_ddp_cpu": "vqkit.training.spawn",
}

__all__ = ["TrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vqkit.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
