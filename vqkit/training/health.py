"""Telling a collapsed run from a finished one: a constant reconstruction, or a tiny share of the codebook."""

from __future__ import annotations

from typing import Any

import numpy as np

# Under these a run has collapsed: codes used / codebook size, and the reconstructions' spread across images
# relative to the originals' (a decoder that draws the same picture whatever the input has a spread near 0).
MIN_CODE_SHARE = 0.02
MIN_SPREAD_RATIO = 0.1
ADVICE = (
    "train longer (steps), or try a longer warm-up (warmup_steps) or a lower lr; keep a codebook quantizer's "
    "k-means init and dead-code restarts (its defaults); a Tanh decoder head (the original preset, decoder "
    "output=tanh) can saturate and die early, the default clamp head cannot"
)


def collapse_warning(result: dict[str, Any], originals: np.ndarray, recon: np.ndarray) -> str | None:
    """A one-line warning with what to try when the held-out reconstructions have collapsed, else None.

    ``result`` is :func:`vqkit.evaluate.evaluate`'s; ``originals`` and ``recon`` are uint8 ``[N, C, H, W]``
    images of the same held-out set (a few are enough)."""
    used, size = int(result.get("codes_used", 0)), int(result.get("codebook_size", 0) or 1)
    share = used / size
    spread = _spread(recon) / max(_spread(originals), 1e-6)
    if len(recon) > 1 and spread < MIN_SPREAD_RATIO:
        return (
            f"the reconstructions have collapsed to (nearly) one image whatever the input "
            f"({used} of {size} codes in use); {ADVICE}"
        )
    if share < MIN_CODE_SHARE:
        return f"the codebook has collapsed: only {used} of {size} codes are in use ({share:.1%}); {ADVICE}"
    return None


def _spread(images: np.ndarray) -> float:
    """Mean over pixels of the standard deviation across images."""
    return float(images.astype(np.float32).std(axis=0).mean()) if len(images) > 1 else 0.0
