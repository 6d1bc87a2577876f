"""Learning rate as a pure function of the step (nothing to save for resuming): linear warm-up, then
cosine decay to ``min_lr_ratio * lr`` at the last step, or constant."""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, steps: int, warmup: int, schedule: str, min_lr_ratio: float) -> float:
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
