"""Exporting a model to files another runtime loads (ONNX first), checked for parity against PyTorch.

- ``orchestration``: :func:`export` and the Exporter contract every exporter obeys;
- ``parity``: the check that the exported files reproduce PyTorch;
- ``metadata``: ``vqkit.json`` and the description each graph carries in its own metadata;
- ``target``: which folders an export may replace (only an earlier export, unchanged and alone).
"""

from vqkit.export.metadata import METADATA_VERSION
from vqkit.export.orchestration import Exporter, ExportReport, export, make_exporter
from vqkit.export.parity import (
    DEFAULT_NUM_IMAGES,
    DEFAULT_TIE_TOLERANCE,
    DEFAULT_TOLERANCE,
    CodeMismatch,
    ParityError,
    ParityReport,
    Runner,
    check_parity,
    validation_images,
)
from vqkit.export.target import METADATA_FILE, METADATA_FORMAT, ExportError

__all__ = [
    "DEFAULT_NUM_IMAGES",
    "DEFAULT_TIE_TOLERANCE",
    "DEFAULT_TOLERANCE",
    "METADATA_FILE",
    "METADATA_FORMAT",
    "METADATA_VERSION",
    "CodeMismatch",
    "ExportError",
    "ExportReport",
    "Exporter",
    "ParityError",
    "ParityReport",
    "Runner",
    "check_parity",
    "export",
    "make_exporter",
    "validation_images",
]
