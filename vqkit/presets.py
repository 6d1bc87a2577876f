"""Named model configurations shared by :func:`vqkit.build_model` (``preset=``) and the CLI (``--preset``).

Without a preset a model is built from its components' own defaults, which are the recommended configuration
(``conv3`` encoder and decoder, ``vq`` with k-means initialisation and dead-code restarts). A preset names the
components and the options that differ from those defaults; whatever the caller sets explicitly wins:

- a component named explicitly replaces the preset's, and that part's preset options are then dropped
  (they belong to the preset's component, not to the one asked for);
- an option set explicitly overrides the preset's value of that option, key by key.
"""

from __future__ import annotations

import copy
from typing import Any

from vqkit.errors import OptionError

PARTS = ("encoder", "quantizer", "decoder")

PRESETS: dict[str, dict[str, Any]] = {
    # The components' own defaults (the same as no preset at all).
    "default": {},
    # The original VQ-VAE configuration (van den Oord et al., 2017, as in the widely used PyTorch tutorial
    # formulation): a U(-1/K, 1/K) codebook without k-means or restarts, and a decoder whose first layer is a
    # 1x1 transposed convolution and whose output is a Tanh. It collapses to a few codes in training; kept for comparisons.
    "original": {
        "encoder": "conv3",
        "quantizer": "vq",
        "decoder": "conv3",
        "quantizer_options": {"init": "uniform", "restart_after": 0},
        "decoder_options": {"head": "transpose", "output": "tanh"},
    },
}

DESCRIPTIONS = {
    "default": "every component's own defaults: vq with k-means init and dead-code restarts",
    "original": "the original VQ-VAE: uniform codebook init, no restarts, transposed-conv decoder head, Tanh output",
}


def names() -> list[str]:
    return list(PRESETS)


def get(name: str) -> dict[str, Any]:
    """A copy of preset ``name``'s settings; an unknown name is an :class:`OptionError` listing the others."""
    if name not in PRESETS:
        raise OptionError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def apply(preset: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """``build_model`` settings: preset ``preset`` (None: no preset) with the explicitly ``given`` ones on top.

    ``given`` holds ``encoder``/``quantizer``/``decoder`` names and ``*_options`` dicts (None: not given) and
    any other ``build_model`` setting (``latent_dim``, ...). Returns the merged settings."""
    base = get(preset) if preset is not None else {}
    out = {**base, **{k: v for k, v in given.items() if v is not None and not k.endswith("_options")}}
    for part in PARTS:
        key = f"{part}_options"
        kept = base.get(key, {}) if out.get(part) == base.get(part) else {}
        out[key] = {**kept, **(given.get(key) or {})}
    return out
