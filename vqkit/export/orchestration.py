"""``export()``: run an exporter into a temporary folder, describe and check what it wrote, then put it in place.

The Exporter contract (what ``vqkit.exporters`` registers; a third party's exporter obeys the same one):

- built as ``Exporter(**options)``; its constructor's keyword arguments are the options a user may set
  (the ONNX exporter's are ``opset``, ``ir_version``, ``codes_dtype``, ``uint8_encoder`` and ``subpixel``);
- ``export(model, folder) -> dict``: write the encoder graph (images ``[B, C, H, W]`` float32 in [-1, 1] ->
  integer codes) and the decoder graph (codes -> images) into ``folder`` and return what ``vqkit.json`` must
  say about them: at least ``{"files": {"encoder": NAME, "decoder": NAME}}`` plus format details (opset ...);
- ``load(folder) -> Runner``: run the written files, where a runner has ``encode(float32 NCHW) -> codes``
  and ``decode(codes) -> float32 NCHW``. Validation runs the exported files through it.

:func:`export` does the rest for every exporter: it checks the target folder may be replaced
(``vqkit.export.target``), writes into a temporary folder, writes ``vqkit.json`` with a manifest of every
file written, runs the parity check, and only then puts the folder in place, so a failed export or check
leaves nothing that looks valid.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from vqkit import checks
from vqkit.export.metadata import export_metadata
from vqkit.export.parity import (
    DEFAULT_NUM_IMAGES,
    DEFAULT_TIE_TOLERANCE,
    DEFAULT_TOLERANCE,
    ParityError,
    ParityReport,
    Runner,
    check_parity,
    validation_images,
)
from vqkit.export.target import METADATA_FILE, ExportError, check_target, manifest
from vqkit.fileio import atomic_dir

if TYPE_CHECKING:
    from vqkit.model import VQVAE


class Exporter(Protocol):
    def export(self, model: VQVAE, folder: Path) -> dict[str, Any]: ...

    def load(self, folder: Path) -> Runner: ...


@dataclass
class ExportReport:
    folder: Path
    format: str
    files: dict[str, str]
    metadata: dict[str, Any]
    parity: ParityReport | None
    seconds: float

    def format_text(self) -> str:
        lines = [f"exported   {self.format} -> {self.folder} in {self.seconds:.1f} s"]
        for role, name in self.files.items():
            size = (self.folder / name).stat().st_size
            lines.append(f"  {role:<8} {name} ({size / 1e6:.2f} MB)")
        lines.append(f"  info     {METADATA_FILE}")
        lines.append(self.parity.format() if self.parity else "parity     not checked (--no-validate)")
        return "\n".join(lines)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def make_exporter(format: str = "onnx", options: dict[str, Any] | None = None) -> Exporter:
    """The registered exporter ``format`` built with ``options`` (checked against its signature)."""
    from vqkit.discovery import load_plugins
    from vqkit.options import validate_options
    from vqkit.registry import exporters

    load_plugins()
    entry = exporters.entry(format)
    opts = validate_options(entry, dict(options or {}))
    try:
        return entry.obj(**opts)
    except (ValueError, TypeError) as exc:
        raise ExportError(f"exporter {format!r} rejected its settings: {exc}") from exc


def _check_args(
    format: Any, validate: Any, num_images: Any, tolerance: Any, tie_tolerance: Any, options: Any
) -> None:
    """The plain arguments of :func:`export` (the exporter checks its own options and versions)."""
    checks.text(format, "format")
    checks.boolean(validate, "validate")
    checks.integer(num_images, "num_images", minimum=1, maximum=1_000_000)
    checks.number(tolerance, "tolerance", minimum=0)
    checks.number(tie_tolerance, "tie_tolerance", minimum=0)
    checks.mapping(options, "options")


def _load_model(model_or_path: VQVAE | str | os.PathLike[str]) -> VQVAE:
    from vqkit.model import VQVAE
    from vqkit.modelfile import load

    if isinstance(model_or_path, VQVAE):
        # A CPU copy in eval mode: the caller's model keeps its device and mode.
        return copy.deepcopy(model_or_path).cpu().eval()
    return load(model_or_path)


def export(
    model_or_path: VQVAE | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    format: str = "onnx",
    opset: int | None = None,
    validate: bool = True,
    data: str | os.PathLike[str] | None = None,
    num_images: int = DEFAULT_NUM_IMAGES,
    tolerance: float = DEFAULT_TOLERANCE,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
    options: dict[str, Any] | None = None,
    ir_version: int | None = None,
    codes_dtype: str | None = None,
) -> ExportReport:
    """Export a model (or a model file) into ``out_dir`` and check the result against PyTorch.

    Writes the exporter's graph files and ``vqkit.json`` (shapes, preprocessing, codes layout, codebook size,
    codes dtype, opset and IR version, the oldest ONNX Runtime that loads them, vqkit version, the model spec,
    a manifest of the files written and the parity report). With ``validate`` (default) the exported files
    are run on up to ``num_images`` held-out images (``data``'s test split, default the built-in mnist5k):
    codes must agree exactly and decoder outputs within ``tolerance``, else :class:`ParityError` and
    ``out_dir`` is left as it was. A code disagreement within ``tie_tolerance`` of the distances' magnitude
    is a float32 near-tie: reported, not a failure (0 makes it one). ``opset``, ``ir_version``,
    ``codes_dtype`` (and ``options``) go to the exporter. ``out_dir`` must be new, empty, or an earlier export
    holding only the files it wrote, unchanged; anything else is refused, never deleted.
    """
    import torch

    start = time.perf_counter()
    target = checks.path(out_dir, "out_dir")
    _check_args(format, validate, num_images, tolerance, tie_tolerance, options)
    check_target(target)
    opts = dict(options or {})
    for key, value in (("opset", opset), ("ir_version", ir_version), ("codes_dtype", codes_dtype)):
        if value is not None:
            opts[key] = value
    exporter = make_exporter(format, opts)
    model = _load_model(model_or_path)
    images, source = (None, "")
    if validate:
        images, source = validation_images(model.spec.channels, model.spec.image_size, data, num_images)
    with atomic_dir(target) as tmp, torch.no_grad():
        written = exporter.export(model, tmp)
        files = dict(written.get("files", {}))
        for role in ("encoder", "decoder"):
            if role not in files or not (tmp / files[role]).is_file():
                raise ExportError(f"exporter {format!r} did not write the {role} graph it names")
        meta = export_metadata(model, format, written)
        meta["manifest"] = manifest(tmp)
        _write_json(tmp / METADATA_FILE, meta)
        parity = None
        if images is not None:
            parity = check_parity(model, exporter.load(tmp), images, source, tolerance, tie_tolerance)
            meta["parity"] = parity.to_dict()
            _write_json(tmp / METADATA_FILE, meta)
            if not parity.passed:
                raise ParityError(_failure_message(parity, target), parity)
    return ExportReport(target, format, files, meta, parity, time.perf_counter() - start)


def _failure_message(parity: ParityReport, target: Path) -> str:
    problems = []
    if not parity.codes_ok:
        margins = [abs(m.margin) for m in parity.mismatches if m.margin is not None and not m.tie]
        smallest = f" (smallest margin {min(margins):.3g})" if margins else ""
        bad = parity.codes_mismatched - parity.codes_tied
        problems.append(f"{bad} of {parity.codes_compared} codes differ{smallest}")
    if not parity.decoder_ok:
        problems.append(f"decoder max abs diff {parity.decoder_max_abs:.3g} > {parity.tolerance:g}")
    return (
        f"parity check failed: {'; '.join(problems)}. Nothing was written to {target} "
        f"(--no-validate writes the files without the check)"
    )
