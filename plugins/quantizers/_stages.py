"""Building the per-stage / per-group codebooks of rvq and gvq from their shared options."""

from __future__ import annotations

import inspect
from typing import Any

from vqkit.codebook import Codebook
from vqkit.registry import quantizers


def codebook_kinds() -> list[str]:
    """Registered quantizers that are codebooks (subclasses of :class:`vqkit.codebook.Codebook`): the kinds
    a stage or group can be."""
    return [
        name
        for name in quantizers.names()
        if inspect.isclass(quantizers.get(name)) and issubclass(quantizers.get(name), Codebook)
    ]


def codebook_kind(codebook: str, ema: bool) -> str:
    """The kind of codebook asked for; ``ema=True`` is the older spelling of ``codebook="ema"``."""
    if ema and codebook not in ("vq", "ema"):
        raise ValueError(f"ema=true asks for ema codebooks but codebook={codebook!r}: set only codebook")
    kind = "ema" if ema else codebook
    if kind not in quantizers or kind not in codebook_kinds():
        raise ValueError(f"codebook must be one of {', '.join(codebook_kinds())}, got {codebook!r}")
    return kind


def make_codebook(dim: int, codebook_size: int, kind: str, **shared: Any) -> Codebook:
    """One codebook of ``kind`` (a registered :class:`Codebook` quantizer) for a stage or group. ``shared``
    holds the composite's options (beta, decay, init, restart_after); each kind takes those it has and keeps
    its own defaults for the rest. The composite applies the estimator to its total, not the stages."""
    entry = quantizers.entry(kind)
    accepted = {o.name for o in entry.options} - {"estimator"}
    return entry.obj(dim, codebook_size, **{k: v for k, v in shared.items() if k in accepted})
