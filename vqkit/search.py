"""The nearest-code search every codebook quantizer uses, without ever building the N x K distance matrix.

Distances are ``(|z|^2 + |e|^2) - 2 z.e^T`` in fp32 (also under bf16 autocast), argmin per row; ties go to
the lowest index, as ``torch.argmin``. Three implementations of the same formula:

- ``triton``: on CUDA, a fused kernel (:mod:`vqkit.search_triton`) that keeps only the running argmin.
  Memory O(N + K).
- ``chunked``: any device; rows (and, for huge codebooks, codes) in chunks whose distance tile stays
  within a memory budget, one reused buffer. Memory O(N + budget).
- ``plain``: the formula written once over all N x K; the only one traced by ``torch.export`` /
  ``torch.onnx.export`` (a Python loop over a dynamic batch would be unrolled or specialised there), and
  the reference the tests compare against.

Non-finite values get one rule on every path (here, in the kernel, and in exported graphs): a code whose
squared norm is not finite (a NaN or an infinity in it) is never picked, unless every code is such; a latent
whose squared norm is not finite gets code 0. (Left alone, the NaN distances would make ``torch.argmin`` pick
the NaN code for every latent, while the kernel's running ``<`` would never pick it.)

``nearest_code(z, codebook)`` picks: plain when exporting or tracing, an opaque custom op under
``torch.compile`` (so the compiled graph calls the fast path instead of materialising N x K), else triton on
CUDA when it is available and chunked otherwise.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import torch

BACKENDS = ("auto", "plain", "chunked", "triton")

MiB = 1 << 20
# Largest distance tile the chunked path allocates. On CPU: small enough to bound memory and stay near the
# caches, large enough that the three thread-pool syncs per chunk (add, addmm, argmin) stay cheap on a busy
# machine (2 MiB tiles ran 10x slower than 16 MiB under load); a GPU needs bigger tiles to fill its cores.
CPU_TILE_BYTES = 16 * MiB
GPU_TILE_BYTES = 256 * MiB
# Fewer rows than this per matmul wastes the BLAS kernel; the chunked path then splits the codebook instead.
MIN_ROWS = 64

# Opt-in to the faster tensor-core product on CUDA (see vqkit.search_triton.PRECISIONS).
PRECISION_ENV = "VQKIT_SEARCH_PRECISION"


def _check(z: torch.Tensor, codebook: torch.Tensor) -> None:
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"nearest_code needs z [N, D] and codebook [K, D] with the same D, "
            f"got {tuple(z.shape)} and {tuple(codebook.shape)}"
        )
    if codebook.shape[0] == 0:
        raise ValueError("nearest_code needs a codebook with at least one code")


def finite_operands(
    z: torch.Tensor, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 ``z``, ``|z|^2``, ``e``, ``|e|^2`` with the non-finite rule applied, and the mask of latents
    that get code 0: a non-finite code is zeroed with ``|e|^2 = inf`` (its distance is inf to every latent),
    a non-finite latent is zeroed (its code is overwritten afterwards). O(N + K) work, no host sync, traceable.
    Norms come from ``torch.sum``, so every path rounds them alike."""
    z, e = z.float(), e.float()
    zsq, esq = torch.sum(z**2, dim=-1), torch.sum(e**2, dim=-1)
    bad_z, bad_e = ~torch.isfinite(zsq), ~torch.isfinite(esq)
    z = torch.where(bad_z.unsqueeze(1), 0.0, z)
    zsq = torch.where(bad_z, 0.0, zsq)
    e = torch.where(bad_e.unsqueeze(1), 0.0, e)
    esq = torch.where(bad_e, float("inf"), esq)
    return z, zsq, e, esq, bad_z


def nearest_code_plain(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The textbook formula (|z|^2 + |e|^2 - 2 z.e, argmin) over the whole N x K matrix; traceable by
    torch.export and ONNX."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        z, zsq, e, esq, bad_z = finite_operands(z, codebook)
        distances = (zsq.unsqueeze(1) + esq.unsqueeze(0)) - 2 * torch.matmul(z, e.t())
        return torch.where(bad_z, 0, torch.argmin(distances, dim=-1))


def tile_shape(n: int, k: int, max_bytes: int) -> tuple[int, int]:
    """Rows and codes per distance tile so that a fp32 ``[rows, codes]`` tile fits in ``max_bytes``.

    All K codes at once when at least ``MIN_ROWS`` rows fit (one argmin per chunk); otherwise the codebook
    is split too, and a running minimum is carried across its tiles.
    """
    elems = max(1, max_bytes // 4)
    rows = elems // k
    if rows >= MIN_ROWS or rows >= n:
        return max(1, min(n, rows)), k
    rows = min(n, MIN_ROWS)
    return rows, max(1, min(k, elems // rows))


@torch.no_grad()
def nearest_code_chunked(
    z: torch.Tensor, codebook: torch.Tensor, max_bytes: int | None = None
) -> torch.Tensor:
    """The same formula, one bounded tile at a time: extra memory is one tile (``max_bytes``) plus O(N + K)."""
    _check(z, codebook)
    with torch.autocast(device_type=z.device.type, enabled=False):
        n, k = z.shape[0], codebook.shape[0]
        out = torch.empty(n, dtype=torch.int64, device=z.device)
        if n == 0:
            return out
        z, zsq, e, esq, bad_z = finite_operands(z.detach(), codebook.detach())
        if max_bytes is None:
            max_bytes = CPU_TILE_BYTES if z.device.type == "cpu" else GPU_TILE_BYTES
        rows, codes = tile_shape(n, k, max_bytes)
        et = e.t()
        buf = torch.empty(rows, codes, dtype=torch.float32, device=z.device)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            zc, zsq_c = z[r0:r1], zsq[r0:r1]
            if codes == k:
                tile = buf[: r1 - r0]
                # (|z|^2 + |e|^2) - 2 z.e^T, in the plain formula's order: the addmm adds the exactly
                # doubled product to the rounded norm sum, as the plain formula's subtraction does.
                torch.add(zsq_c.unsqueeze(1), esq.unsqueeze(0), out=tile)
                tile.addmm_(zc, et, alpha=-2)
                torch.argmin(tile, dim=1, out=out[r0:r1])
                continue
            best = torch.full((r1 - r0,), float("inf"), device=z.device)
            best_idx = out[r0:r1].zero_()
            for c0 in range(0, k, codes):
                c1 = min(k, c0 + codes)
                tile = buf[: r1 - r0, : c1 - c0]
                torch.add(zsq_c.unsqueeze(1), esq[c0:c1].unsqueeze(0), out=tile)
                tile.addmm_(zc, et[:, c0:c1], alpha=-2)
                vals, idx = torch.min(tile, dim=1)
                # Strict <: on a tie the earlier tile (lower index) keeps the row, as argmin would.
                better = vals < best
                best = torch.where(better, vals, best)
                best_idx.copy_(torch.where(better, idx + c0, best_idx))
        return out.masked_fill_(bad_z, 0)


@functools.cache
def _triton_search() -> Callable[..., torch.Tensor] | None:
    """The Triton kernel's entry point, or None where Triton is missing (CPU-only builds, some platforms)."""
    try:
        from vqkit.search_triton import nearest_code_triton
    except Exception:  # ImportError, or Triton failing to find its compiler/driver
        return None
    return nearest_code_triton


_triton_broken: str | None = None  # why the kernel failed, once it has: auto then uses the chunked path


def fast_path(device: torch.device | str) -> str:
    """Which implementation ``nearest_code(..., backend="auto")`` runs eagerly on ``device`` now: ``"triton"``,
    or ``"chunked"`` with the reason on CUDA (``"chunked (Triton is not installed)"``). Benchmarks ask it so
    they never time the fallback believing it is the kernel."""
    if torch.device(device).type != "cuda":
        return "chunked"
    if _triton_broken is not None:
        return f"chunked (the Triton kernel failed: {_triton_broken})"
    if _triton_search() is None:
        return "chunked (Triton is not installed)"
    return "triton"


def _search_fast(z: torch.Tensor, codebook: torch.Tensor, backend: str) -> torch.Tensor:
    """Eager dispatch between the kernel and the chunked path; a kernel failure falls back, loudly, once.
    Running out of memory is not a kernel failure: it propagates (the chunked path would need more)."""
    global _triton_broken
    want_triton = backend == "triton" or (
        backend == "auto" and z.device.type == "cuda" and _triton_broken is None
    )
    if want_triton:
        kernel = _triton_search()
        if kernel is None:
            if backend == "triton":
                raise RuntimeError("the triton search backend needs Triton, which is not installed")
        else:
            precision = os.environ.get(PRECISION_ENV, "ieee")
            with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
                zf, zsq, e, esq, bad_z = finite_operands(z.detach(), codebook.detach())
                if backend == "triton":
                    return kernel(zf, zsq, e, esq, precision).masked_fill_(bad_z, 0)
                try:
                    return kernel(zf, zsq, e, esq, precision).masked_fill_(bad_z, 0)
                except torch.OutOfMemoryError:
                    raise
                except Exception as err:  # a GPU or driver Triton cannot compile for: stay correct
                    _triton_broken = (
                        str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    )
                    warnings.warn(
                        f"vqkit: the Triton nearest-code kernel failed ({err}); using the chunked search",
                        RuntimeWarning,
                        stacklevel=3,
                    )
    return nearest_code_chunked(z, codebook)


# Under torch.compile the search is one opaque op: Dynamo must not trace the chunk loop (it would
# specialise on N) nor inline the plain formula (Inductor would materialise N x K).
@torch.library.custom_op("vqkit::nearest_code", mutates_args=())
def _nearest_code_op(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return _search_fast(z, codebook, "auto")


@_nearest_code_op.register_fake
def _(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return z.new_empty(z.shape[0], dtype=torch.int64)


def is_tracing() -> bool:
    """True while torch.export / torch.onnx.export / torch.jit trace the caller into a graph."""
    return (
        bool(torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.jit.is_scripting())
        or torch.onnx.is_in_onnx_export()
    )


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Index of the nearest row of ``codebook [K, D]`` for each row of ``z [N, D]`` (int64 ``[N]``).

    ``backend="auto"`` chooses as the module docstring says; ``"plain"``, ``"chunked"``, ``"triton"`` force
    one (benchmarks, tests). Not differentiable (indices); inputs may require grad and may be bf16.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "plain" or (backend == "auto" and is_tracing()):
        return nearest_code_plain(z, codebook)
    _check(z, codebook)
    if backend == "auto" and torch.compiler.is_compiling():
        return _nearest_code_op(z.detach(), codebook.detach())
    if backend == "chunked":
        return nearest_code_chunked(z, codebook)
    return _search_fast(z, codebook, backend)
