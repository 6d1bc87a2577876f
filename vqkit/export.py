"""Exporting a model to files another runtime loads (ONNX first), checked for parity against PyTorch.

The Exporter contract (what ``vqkit.exporters`` registers; a third party's exporter obeys the same one):

- built as ``Exporter(**options)``; its constructor's keyword arguments are the options a user may set
  (the ONNX exporter's are ``opset`` and ``subpixel``);
- ``export(model, folder) -> dict``: write the encoder graph (images ``[B, C, H, W]`` float32 in [-1, 1] ->
  int64 codes) and the decoder graph (codes -> images) into ``folder`` and return what ``vqkit.json`` must
  say about them: at least ``{"files": {"encoder": NAME, "decoder": NAME}}`` plus format details (opset ...);
- ``load(folder) -> Runner``: run the written files, where a runner has ``encode(float32 NCHW) -> int64 codes``
  and ``decode(codes) -> float32 NCHW``. Validation runs the exported files through it.

:func:`export` does the rest for every exporter: it writes into a temporary folder, writes ``vqkit.json``,
runs the parity check, and only then puts the folder in place, so a failed export or check leaves nothing
that looks valid.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vqkit._version import __version__
from vqkit.errors import VQKitError
from vqkit.fileio import atomic_dir

if TYPE_CHECKING:
    import torch

    from vqkit.model import VQVAE

METADATA_FILE = "vqkit.json"
METADATA_FORMAT = "vqkit.export"
METADATA_VERSION = 1
DEFAULT_TOLERANCE = 1e-5
DEFAULT_NUM_IMAGES = 256
# A code disagreement whose margin is below this fraction of the distances' magnitude (|z|^2 + |e|^2) is a
# near-tie that float32 rounding decides (~100 float32 epsilons): listed and counted, but not a failure.
DEFAULT_TIE_TOLERANCE = 1e-5
MAX_LISTED_MISMATCHES = 20


class ExportError(VQKitError):
    """The model could not be turned into the asked format (an unsupported op, a bad option, a bad folder)."""


class ParityError(VQKitError):
    """The exported files do not reproduce PyTorch. ``report`` holds the whole parity report."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


class Runner(Protocol):
    def encode(self, images: np.ndarray) -> np.ndarray: ...

    def decode(self, codes: np.ndarray) -> np.ndarray: ...


class Exporter(Protocol):
    def export(self, model: VQVAE, folder: Path) -> dict[str, Any]: ...

    def load(self, folder: Path) -> Runner: ...


@dataclass
class CodeMismatch:
    """One code position where the exported encoder chose another code than PyTorch.

    ``torch_distance``/``runtime_distance``: squared distance from PyTorch's latent to each choice's
    dequantized vector (for a nearest-code quantizer: the best and the second-best distance); ``margin`` is
    their difference and ``scale`` the magnitude the distance formula works at (|z|^2 + |e|^2). ``tie`` is
    True when ``|margin| <= tie_tolerance * scale``: two codes equally near within float32 rounding, which
    any two runtimes may break differently; a larger margin means the exported graph computes something else.
    """

    image: int
    position: list[int]
    torch_code: list[int]
    runtime_code: list[int]
    torch_distance: float | None
    runtime_distance: float | None
    margin: float | None
    scale: float | None = None
    tie: bool = False


@dataclass
class ParityReport:
    data: str
    images: int
    batch_sizes: list[int]
    codes_compared: int
    codes_mismatched: int
    decoder_max_abs: float
    decoder_mean_abs: float
    tolerance: float
    seconds: float
    mismatches: list[CodeMismatch] = field(default_factory=list)
    codes_tied: int = 0
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE

    @property
    def codes_ok(self) -> bool:
        """Every code agrees, except near-ties that float32 rounding decides (each one is listed)."""
        return self.codes_mismatched == self.codes_tied

    @property
    def decoder_ok(self) -> bool:
        return bool(np.isfinite(self.decoder_max_abs)) and self.decoder_max_abs <= self.tolerance

    @property
    def passed(self) -> bool:
        return self.codes_ok and self.decoder_ok

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def format(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"parity     {verdict} on {self.images} held-out images from {self.data} "
            f"(batches of {', '.join(map(str, self.batch_sizes))}; {self.seconds:.1f} s)",
            f"  codes    {self.codes_compared - self.codes_mismatched}/{self.codes_compared} identical"
            + (f"; {self.codes_tied} differ by a float32 near-tie" if self.codes_tied else "")
            + ("" if self.codes_ok else f"  <- {self.codes_mismatched - self.codes_tied} differ"),
            f"  decoder  max abs diff {self.decoder_max_abs:.3g} (tolerance {self.tolerance:g}), "
            f"mean {self.decoder_mean_abs:.3g}" + ("" if self.decoder_ok else "  <- too large"),
        ]
        for m in self.mismatches:
            margin = "n/a (code out of range)" if m.margin is None else f"{m.margin:.3g}"
            dist = (
                ""
                if m.runtime_distance is None
                else f", distances {m.torch_distance:.6g} vs {m.runtime_distance:.6g}"
            )
            kind = "near-tie" if m.tie else "MISMATCH"
            lines.append(
                f"  {kind} image {m.image} at {tuple(m.position)}: torch {m.torch_code} vs exported "
                f"{m.runtime_code}, margin {margin}{dist}"
            )
        if self.codes_mismatched > len(self.mismatches):
            lines.append(f"  ... and {self.codes_mismatched - len(self.mismatches)} more")
        return "\n".join(lines)


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


# --- validation data ---------------------------------------------------------------------------------------
def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``[N, C, h, w]`` to ``size x size`` (up or down; these are only test inputs)."""
    from PIL import Image

    n, c = images.shape[:2]
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for i in range(n):
        for ch in range(c):
            out[i, ch] = np.asarray(Image.fromarray(images[i, ch]).resize((size, size), Image.BICUBIC))
    return out


def validation_images(
    channels: int,
    image_size: int,
    data: str | os.PathLike[str] | None = None,
    count: int = DEFAULT_NUM_IMAGES,
) -> tuple[np.ndarray, str]:
    """Held-out uint8 images ``[N, channels, image_size, image_size]`` for the parity check, and where they
    came from: the test split of ``data`` (a folder or dataset name, via ``vqkit.data.load_images``), or of the
    built-in mnist5k, converted to the model's channels and size."""
    from vqkit.data import load_images

    if count < 1:
        raise VQKitError(f"the parity check needs at least 1 image, got {count}")
    source = "mnist5k" if data is None else str(data)
    if data is None:
        # mnist5k is 32x32 grey: convert channels here, resize ourselves (load_images never upscales).
        images = load_images(source, split="test", channels=channels)
        if images.shape[-1] != image_size:
            images = _resize(images, image_size)
    else:
        images = load_images(source, split="test", channels=channels, image_size=image_size)
    if len(images) == 0:
        raise VQKitError(f"{source} has no held-out (test) images for the parity check")
    return np.ascontiguousarray(images[:count]), f"{source} (test split)"


# --- parity ------------------------------------------------------------------------------------------------
def _batches(n: int) -> list[int]:
    """Batch sizes that cover ``n`` images and exercise the dynamic batch axis: 1 first, then up to 64."""
    sizes = [1] if n else []
    left = n - 1
    while left > 0:
        sizes.append(min(64, left))
        left -= sizes[-1]
    return sizes


def _distances(model: VQVAE, z: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance from each latent ``z [N, D, h, w]`` to its codes' dequantized vectors ``[N, h, w]``,
    and the magnitude the float32 distance formula works at there, ``|z|^2 + |e|^2``."""
    import torch

    with torch.no_grad():
        zq = model.quantizer.dequantize(codes).double()
    z = z.double()
    return ((z - zq) ** 2).sum(dim=1), (z**2).sum(dim=1) + (zq**2).sum(dim=1)


def check_parity(
    model: VQVAE,
    runner: Runner,
    images: np.ndarray,
    data: str = "given images",
    tolerance: float = DEFAULT_TOLERANCE,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
) -> ParityReport:
    """Run PyTorch and the exported files on the same images (uint8 ``[N, C, H, W]``): codes must agree
    exactly, decoder outputs within ``tolerance`` max abs. Disagreements are listed with their margin; those
    within ``tie_tolerance`` of the distances' magnitude are float32 near-ties and do not fail the check
    (``tie_tolerance=0`` makes every disagreement a failure)."""
    import torch

    start = time.perf_counter()
    x = torch.from_numpy(images).float() / 127.5 - 1.0
    sizes = _batches(len(x))
    t_codes, r_codes, latents, t_images, r_images = [], [], [], [], []
    offset = 0
    with torch.no_grad():
        for size in sizes:
            batch = x[offset : offset + size]
            offset += size
            z = model.encoder(batch)
            codes = model.quantizer.quantize(z)
            t_codes.append(codes)
            latents.append(z)
            r_codes.append(np.asarray(runner.encode(batch.numpy())))
            t_images.append(model.decoder(model.quantizer.dequantize(codes)).numpy())
            # The decoder is compared on PyTorch's codes, so an encoder mismatch cannot hide in it.
            r_images.append(np.asarray(runner.decode(codes.numpy())))
    tc = torch.cat(t_codes)
    rc_np = np.concatenate(r_codes)
    if rc_np.shape != tuple(tc.shape):
        raise ParityError(
            f"the exported encoder gives codes of shape {list(rc_np.shape)}, PyTorch {list(tc.shape)}",
            _empty_report(data, len(x), sizes, tolerance, start),
        )
    rc = torch.from_numpy(rc_np.astype(np.int64))
    diff = tc != rc
    if diff.dim() == 4:  # [B, h, w, S]: a position differs if any of its S codes does
        diff = diff.any(dim=-1)
    mismatches: list[CodeMismatch] = []
    where = diff.nonzero().tolist()
    tied = 0
    if where:
        z = torch.cat(latents)
        k = int(model.quantizer.codebook_size)
        in_range = bool(((rc >= 0) & (rc < k)).all())
        d_t, scale = _distances(model, z, tc)
        d_r = _distances(model, z, rc)[0] if in_range else None
        ties = torch.zeros_like(diff)
        if d_r is not None and tie_tolerance > 0:
            ties = diff & ((d_r - d_t).abs() <= tie_tolerance * scale)
        tied = int(ties.sum())
        # List real mismatches first: they are the ones to look at.
        where.sort(key=lambda p: bool(ties[p[0], p[1], p[2]]))
        for b, i, j in where[:MAX_LISTED_MISMATCHES]:
            dt = float(d_t[b, i, j])
            dr = None if d_r is None else float(d_r[b, i, j])
            mismatches.append(
                CodeMismatch(
                    image=b,
                    position=[i, j],
                    torch_code=np.atleast_1d(tc[b, i, j].numpy()).tolist(),
                    runtime_code=np.atleast_1d(rc[b, i, j].numpy()).tolist(),
                    torch_distance=dt,
                    runtime_distance=dr,
                    margin=None if dr is None else dr - dt,
                    scale=float(scale[b, i, j]),
                    tie=bool(ties[b, i, j]),
                )
            )
    ti, ri = np.concatenate(t_images), np.concatenate(r_images)
    if ti.shape != ri.shape:
        raise ParityError(
            f"the exported decoder gives images of shape {list(ri.shape)}, PyTorch {list(ti.shape)}",
            _empty_report(data, len(x), sizes, tolerance, start),
        )
    err = np.abs(ti.astype(np.float64) - ri.astype(np.float64))
    return ParityReport(
        data=data,
        images=len(x),
        batch_sizes=sizes,
        codes_compared=int(diff.numel()),
        codes_mismatched=len(where),
        decoder_max_abs=float(err.max()) if err.size else 0.0,
        decoder_mean_abs=float(err.mean()) if err.size else 0.0,
        tolerance=tolerance,
        seconds=time.perf_counter() - start,
        mismatches=mismatches,
        codes_tied=tied,
        tie_tolerance=tie_tolerance,
    )


def _empty_report(data: str, n: int, sizes: list[int], tolerance: float, start: float) -> ParityReport:
    return ParityReport(
        data, n, sizes, 1, 1, float("inf"), float("inf"), tolerance, time.perf_counter() - start
    )


# --- the export itself -------------------------------------------------------------------------------------
def _check_target(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier export: the atomic swap would delete the folder's content."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file; give a folder for the exported files")
    if any(out_dir.iterdir()) and not (out_dir / METADATA_FILE).is_file():
        raise ExportError(
            f"{out_dir} is a folder with other files in it; give a new or empty folder (an earlier export "
            f"there, with its {METADATA_FILE}, would be replaced)"
        )


def _metadata(model: VQVAE, fmt: str, written: dict[str, Any]) -> dict[str, Any]:
    spec = model.spec
    h, w = model.grid
    s = model.num_codebooks
    codes_shape: list[Any] = ["batch", h, w] if s == 1 else ["batch", h, w, s]
    images_shape = ["batch", spec.channels, spec.image_size, spec.image_size]
    files = written.get("files", {})
    return {
        "format": METADATA_FORMAT,
        "format_version": METADATA_VERSION,
        "exporter": fmt,
        "vqkit_version": __version__,
        "channels": spec.channels,
        "image_size": spec.image_size,
        "value_range": list(spec.value_range),
        "grid": [h, w],
        "codebook_size": int(model.quantizer.codebook_size),
        "num_codebooks": s,
        "codes_dtype": "int64",
        "encoder": {
            "file": files.get("encoder"),
            "input": {
                "name": "images",
                "dtype": "float32",
                "layout": "NCHW",
                "shape": images_shape,
                "value_range": list(spec.value_range),
            },
            "output": {"name": "codes", "dtype": "int64", "shape": codes_shape},
        },  # fmt: skip
        "decoder": {
            "file": files.get("decoder"),
            "input": {"name": "codes", "dtype": "int64", "shape": codes_shape},
            "output": {
                "name": "images",
                "dtype": "float32",
                "layout": "NCHW",
                "shape": images_shape,
                "value_range": list(spec.value_range),
            },
        },  # fmt: skip
        **{k: v for k, v in written.items() if k != "files"},
        "model": json.loads(spec.to_json()),
        "parity": None,
    }


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
) -> ExportReport:
    """Export a model (or a model file) into ``out_dir`` and check the result against PyTorch.

    Writes the exporter's graph files and ``vqkit.json`` (shapes, value range, grid, codebook size, codes
    dtype, opset, vqkit version, the model spec and the parity report). With ``validate`` (default) the
    exported files are run on ``num_images`` held-out images (``data``'s test split, default the built-in
    mnist5k): codes must agree exactly and decoder outputs within ``tolerance``, else :class:`ParityError`
    and ``out_dir`` is left as it was. A code disagreement within ``tie_tolerance`` of the distances' magnitude
    is a float32 near-tie: reported, not a failure (0 makes it one). ``opset`` (and ``options``) go to the
    exporter.
    """
    import torch

    from vqkit.model import VQVAE
    from vqkit.modelfile import load

    start = time.perf_counter()
    target = Path(out_dir)
    _check_target(target)
    opts = dict(options or {})
    if opset is not None:
        opts["opset"] = opset
    exporter = make_exporter(format, opts)
    if isinstance(model_or_path, VQVAE):
        # A CPU copy in eval mode: the caller's model keeps its device and mode.
        model = copy.deepcopy(model_or_path).cpu().eval()
    else:
        model = load(model_or_path)
    images, source = (None, "")
    if validate:
        images, source = validation_images(model.spec.channels, model.spec.image_size, data, num_images)
    with atomic_dir(target) as tmp, torch.no_grad():
        written = exporter.export(model, tmp)
        files = dict(written.get("files", {}))
        for role in ("encoder", "decoder"):
            if role not in files or not (tmp / files[role]).is_file():
                raise ExportError(f"exporter {format!r} did not write the {role} graph it names")
        meta = _metadata(model, format, written)
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
