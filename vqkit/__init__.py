"""vqkit: vector-quantized autoencoders and the discrete image tokens they produce.

Attributes load lazily, so ``import vqkit.runtime`` (numpy + onnxruntime only) never imports torch.

The exporter registry is ``vqkit.registry.exporters``: ``vqkit.exporters`` is the package of built-in exporters
(the package mapped from the repository's exporters/ folder), and a lazy attribute of the same name would be replaced by that package once imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from vqkit._version import __version__

_LAZY = {
    "Decoder": "vqkit.contracts",
    "Encoder": "vqkit.contracts",
    "Quantized": "vqkit.contracts",
    "Quantizer": "vqkit.contracts",
    "load_plugins": "vqkit.discovery",
    "VQKitError": "vqkit.errors",
    "import_model": "vqkit.importing",
    "VQVAE": "vqkit.model",
    "ModelSpec": "vqkit.model",
    "VQVAEOutput": "vqkit.model",
    "build_from_spec": "vqkit.model",
    "build_model": "vqkit.model",
    "load": "vqkit.modelfile",
    "read_spec": "vqkit.modelfile",
    "save": "vqkit.modelfile",
    "Registry": "vqkit.registry",
    "decoders": "vqkit.registry",
    "encoders": "vqkit.registry",
    "quantizers": "vqkit.registry",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vqkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
