"""Building the per-stage / per-group codebooks of rvq and gvq from their shared options."""

from __future__ import annotations

from vqkit.plugins.quantizers.ema import EMA
from vqkit.plugins.quantizers.vq import VQ


def make_codebook(
    dim: int,
    codebook_size: int,
    *,
    ema: bool,
    beta: float,
    decay: float,
    init: str,
    restart_after: int,
) -> VQ:
    """One vq (gradient-trained) or ema codebook; the composite applies the estimator to its total."""
    if ema:
        return EMA(dim, codebook_size, beta=beta, decay=decay, init=init, restart_after=restart_after)
    return VQ(dim, codebook_size, beta=beta, init=init, restart_after=restart_after)
