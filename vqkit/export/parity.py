"""The parity check: run PyTorch and the exported files on the same held-out images and compare.

Codes must agree exactly (a disagreement that is a float32 near-tie between two equally near codes is listed,
not a failure); decoder outputs within a tolerance. Agreement is counted in codes (each codebook's code at
each grid position), and the report says how many distinct codes the images exercised: a model that uses a
handful of codes agrees trivially, which the report warns about.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vqkit.errors import VQKitError
from vqkit.pixels import to_float

if TYPE_CHECKING:
    import torch

    from vqkit.model import VQVAE

DEFAULT_TOLERANCE = 1e-5
# Every held-out image up to this many: the built-in mnist5k has 500 (8,000 codes for the default model), where
# a 256-image sample once missed a disagreement of one cell in ~10,000. Checking them costs seconds: 13.6 s for
# the default model on a 2-core machine under a load of 14, most of it PyTorch's side; less when idle.
DEFAULT_NUM_IMAGES = 1000
# A code disagreement whose margin is below this fraction of the distances' magnitude (|z|^2 + |e|^2) is a
# near-tie that float32 rounding decides (~100 float32 epsilons): listed and counted, but not a failure.
DEFAULT_TIE_TOLERANCE = 1e-5
MAX_LISTED_MISMATCHES = 20
# Fewer distinct codes than this (or than a quarter of the codebook, if smaller) makes agreement weak evidence.
FEW_CODES = 16


class ParityError(VQKitError):
    """The exported files do not reproduce PyTorch. ``report`` holds the whole parity report."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


class Runner(Protocol):
    def encode(self, images: np.ndarray) -> np.ndarray: ...

    def decode(self, codes: np.ndarray) -> np.ndarray: ...


@dataclass
class CodeMismatch:
    """One code position where the exported encoder chose another code than PyTorch.

    ``torch_distance``/``runtime_distance``: squared distance from PyTorch's latent to each choice's
    dequantized vector (for a nearest-code quantizer: the best and the second-best distance); ``margin`` is
    their difference and ``scale`` the magnitude the distance formula works at (|z|^2 + |e|^2). ``tie`` is
    True when ``|margin| <= tie_tolerance * scale``: two codes equally near within float32 rounding, which
    any two runtimes may break differently; a larger margin means the exported graph computes something else.
    ``exact_tie`` is True when the margin is exactly 0 (in float64, from PyTorch's latent): both codes are
    equally near, so both are right answers (duplicate codebook entries, a value exactly between two levels);
    it is never a failure, whatever the tie tolerance.
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
    exact_tie: bool = False


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
    codes_tied: int = 0  # near-ties and exact ties together; codes_exact_ties of them exact
    codes_exact_ties: int = 0
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE
    # Codes are counted one per codebook per grid position: positions x num_codebooks.
    positions_compared: int = 0
    positions_mismatched: int = 0
    num_codebooks: int = 1
    codebook_size: int = 0
    # Distinct codes PyTorch chose on these images, per codebook.
    distinct_codes: list[int] = field(default_factory=list)

    @property
    def few_codes(self) -> bool:
        """The images exercised so few codes that agreement says little about the rest of the codebook."""
        if not self.distinct_codes or not self.codebook_size:
            return False
        enough = min(FEW_CODES, math.ceil(self.codebook_size / 4))
        return min(self.distinct_codes) < enough

    @property
    def warning(self) -> str | None:
        if not self.few_codes:
            return None
        return (
            f"PyTorch chose only {_per_codebook(self.distinct_codes)} distinct codes of {self.codebook_size} "
            f"on these images, so agreement says little about the others (an untrained or collapsed model?); "
            f"check with images that use more codes"
        )

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
        return {**asdict(self), "passed": self.passed, "warning": self.warning}

    def format(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"parity     {verdict} on {self.images} held-out images from {self.data} "
            f"(batches of {', '.join(map(str, self.batch_sizes))}; {self.seconds:.1f} s)",
            f"  codes    {self.codes_compared - self.codes_mismatched}/{self.codes_compared} identical"
            + (
                f" ({self.positions_compared} positions x {self.num_codebooks} codebooks)"
                if self.num_codebooks > 1
                else ""
            )
            + (
                f"; {self.codes_exact_ties} differ by an exact tie (both codes equally near)"
                if self.codes_exact_ties
                else ""
            )
            + (
                f"; {self.codes_tied - self.codes_exact_ties} differ by a float32 near-tie"
                if self.codes_tied > self.codes_exact_ties
                else ""
            )
            + ("" if self.codes_ok else f"  <- {self.codes_mismatched - self.codes_tied} differ"),
            f"  used     {_per_codebook(self.distinct_codes)} distinct codes of {self.codebook_size}"
            + (" per codebook" if self.num_codebooks > 1 else ""),
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
            kind = "exact tie" if m.exact_tie else "near-tie" if m.tie else "MISMATCH"
            lines.append(
                f"  {kind} image {m.image} at {tuple(m.position)}: torch {m.torch_code} vs exported "
                f"{m.runtime_code}, margin {margin}{dist}"
            )
        if self.positions_mismatched > len(self.mismatches):
            lines.append(f"  ... and {self.positions_mismatched - len(self.mismatches)} more positions")
        if self.warning:
            lines.append(f"  WARNING  {self.warning}")
        return "\n".join(lines)


def _per_codebook(counts: list[int]) -> str:
    return "/".join(map(str, counts)) if counts else "?"


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
    came from: the test split of ``data`` (a folder, tar shards or a dataset name), or of the
    built-in mnist5k, converted to the model's channels and size."""
    from vqkit.data import load_images
    from vqkit.data.imageset import open_images

    if count < 1:
        raise VQKitError(f"the parity check needs at least 1 image, got {count}")
    source = "mnist5k" if data is None else str(data)
    if data is None:
        # mnist5k is 32x32 grey: convert channels here, resize ourselves (load_images never upscales).
        images = load_images(source, split="test", channels=channels)
        if images.shape[-1] != image_size:
            images = _resize(images, image_size)
    else:  # any source the other commands read, shards included; only the first ``count`` are decoded
        images = open_images(source, split="test", channels=channels, image_size=image_size).read(count)
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


def _run_both(model: VQVAE, runner: Runner, x: torch.Tensor, sizes: list[int]) -> dict[str, Any]:
    """PyTorch's and the runner's codes and decoded images, batch by batch (plus PyTorch's latents)."""
    import torch

    out: dict[str, list[Any]] = {"t_codes": [], "r_codes": [], "latents": [], "t_images": [], "r_images": []}
    offset = 0
    with torch.no_grad():
        for size in sizes:
            batch = x[offset : offset + size]
            offset += size
            z = model.encoder(batch)
            codes = model.quantizer.quantize(z)
            out["t_codes"].append(codes)
            out["latents"].append(z)
            out["r_codes"].append(np.asarray(runner.encode(batch.numpy())))
            out["t_images"].append(model.decoder(model.quantizer.dequantize(codes)).numpy())
            # The decoder is compared on PyTorch's codes, so an encoder mismatch cannot hide in it.
            out["r_images"].append(np.asarray(runner.decode(codes.numpy())))
    return out


def _compare_codes(
    model: VQVAE, tc: torch.Tensor, rc: torch.Tensor, z: torch.Tensor, tie_tolerance: float
) -> tuple[int, int, list[CodeMismatch], int, int]:
    """Differing codes, differing positions, the positions listed (real mismatches first), the codes that
    differ by a tie (exact or float32 near-tie) and those by an exact tie. ``tc``/``rc`` are ``[B, h, w]`` or
    ``[B, h, w, S]``."""
    import torch

    per_code = tc != rc
    diff = per_code.any(dim=-1) if per_code.dim() == 4 else per_code  # a position differs if any code does
    where = diff.nonzero().tolist()
    if not where:
        return 0, 0, [], 0, 0
    k = int(model.quantizer.codebook_size)
    in_range = bool(((rc >= 0) & (rc < k)).all())
    d_t, scale = _distances(model, z, tc)
    d_r = _distances(model, z, rc)[0] if in_range else None
    ties = torch.zeros_like(diff)
    exact = torch.zeros_like(diff)
    if d_r is not None:
        exact = diff & (d_r == d_t)
        ties = exact | (diff & ((d_r - d_t).abs() <= tie_tolerance * scale)) if tie_tolerance > 0 else exact
    codes_at = per_code.flatten(3).sum(-1) if per_code.dim() == 4 else per_code.long()
    tied = int((codes_at * ties).sum())
    exactly = int((codes_at * exact).sum())
    where.sort(key=lambda p: bool(ties[p[0], p[1], p[2]]))  # real mismatches first: the ones to look at
    listed = []
    for b, i, j in where[:MAX_LISTED_MISMATCHES]:
        dt = float(d_t[b, i, j])
        dr = None if d_r is None else float(d_r[b, i, j])
        listed.append(
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
                exact_tie=bool(exact[b, i, j]),
            )
        )
    return int(per_code.sum()), len(where), listed, tied, exactly


def _distinct(codes: torch.Tensor) -> list[int]:
    """Distinct codes per codebook in ``[B, h, w]`` or ``[B, h, w, S]``."""
    if codes.dim() == 3:
        return [int(codes.unique().numel())]
    return [int(codes[..., s].unique().numel()) for s in range(codes.shape[-1])]


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
    (``tie_tolerance=0`` makes every disagreement a failure). Codes are counted one per codebook per position;
    the report also gives the distinct codes used per codebook and warns when they are too few to mean much."""
    import torch

    start = time.perf_counter()
    x = to_float(torch.from_numpy(images))
    sizes = _batches(len(x))
    run = _run_both(model, runner, x, sizes)
    tc = torch.cat(run["t_codes"])
    rc_np = np.concatenate(run["r_codes"])
    if rc_np.shape != tuple(tc.shape):
        raise ParityError(
            f"the exported encoder gives codes of shape {list(rc_np.shape)}, PyTorch {list(tc.shape)}",
            _empty_report(data, len(x), sizes, tolerance, start),
        )
    rc = torch.from_numpy(rc_np.astype(np.int64))
    bad, bad_positions, listed, tied, exactly = _compare_codes(
        model, tc, rc, torch.cat(run["latents"]), tie_tolerance
    )
    ti, ri = np.concatenate(run["t_images"]), np.concatenate(run["r_images"])
    if ti.shape != ri.shape:
        raise ParityError(
            f"the exported decoder gives images of shape {list(ri.shape)}, PyTorch {list(ti.shape)}",
            _empty_report(data, len(x), sizes, tolerance, start),
        )
    err = np.abs(ti.astype(np.float64) - ri.astype(np.float64))
    num_codebooks = int(tc.shape[-1]) if tc.dim() == 4 else 1
    return ParityReport(
        data=data,
        images=len(x),
        batch_sizes=sizes,
        codes_compared=int(tc.numel()),
        codes_mismatched=bad,
        decoder_max_abs=float(err.max()) if err.size else 0.0,
        decoder_mean_abs=float(err.mean()) if err.size else 0.0,
        tolerance=tolerance,
        seconds=time.perf_counter() - start,
        mismatches=listed,
        codes_tied=tied,
        codes_exact_ties=exactly,
        tie_tolerance=tie_tolerance,
        positions_compared=int(tc.numel()) // num_codebooks,
        positions_mismatched=bad_positions,
        num_codebooks=num_codebooks,
        codebook_size=int(model.quantizer.codebook_size),
        distinct_codes=_distinct(tc),
    )


def _empty_report(data: str, n: int, sizes: list[int], tolerance: float, start: float) -> ParityReport:
    return ParityReport(
        data, n, sizes, 1, 1, float("inf"), float("inf"), tolerance, time.perf_counter() - start
    )
