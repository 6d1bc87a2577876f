"""Pixel values, written once: uint8 0..255 <-> float [-1, 1] and PSNR.

Each function takes a numpy array or a torch tensor and returns the same kind, so the torch-free runtime and
the torch code share one definition (this module imports neither library at import time).
"""

from __future__ import annotations

import math
from typing import Any

# uint8 0..255 maps onto [-1, 1] by x / SCALE - 1: 0 -> -1, 255 -> 1.
SCALE = 127.5


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def to_float(x: Any) -> Any:
    """uint8 pixels 0..255 -> float32 in [-1, 1] (same layout; numpy in, numpy out; torch in, torch out)."""
    if _is_torch(x):
        import torch

        return x.to(torch.float32) / SCALE - 1.0
    import numpy as np

    return np.asarray(x).astype(np.float32) / np.float32(SCALE) - np.float32(1.0)


def to_uint8(x: Any) -> Any:
    """float values in [-1, 1] -> uint8 pixels 0..255, clamped to the range and rounded to the nearest."""
    if _is_torch(x):
        import torch

        return ((x.float().clamp(-1, 1) + 1) * SCALE).round().to(torch.uint8)
    import numpy as np

    return np.clip(np.rint((np.asarray(x, dtype=np.float32) + 1.0) * SCALE), 0, 255).astype(np.uint8)


def psnr(mse: float, value_range: tuple[float, float] = (-1.0, 1.0)) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error, for values spanning ``value_range``
    (``10 log10(peak^2 / mse)``, peak = high - low: 2 for [-1, 1], the same number as PSNR on 0..255 pixels).
    A zero error gives infinity, an infinite one minus infinity, NaN stays NaN."""
    mse = float(mse)
    peak = float(value_range[1]) - float(value_range[0])
    if not peak > 0:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    if math.isnan(mse):
        return math.nan
    if mse <= 0:
        return math.inf
    if math.isinf(mse):
        return -math.inf
    return 10 * math.log10(peak * peak / mse)
