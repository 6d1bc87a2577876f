"""Fused nearest-code search as a Triton kernel: distances tile by tile, only the running argmin is kept.

Each program owns ``BLOCK_N`` rows of ``z``; it walks the codebook ``BLOCK_K`` codes at a time, computes
``(|z|^2 + |e|^2) - 2 z.e^T`` for the tile in registers (the same expression, in the same order, as the plain
formula, so codes agree with it except on exact ties) and folds the tile's minimum into a running
(min, argmin) per row. Nothing of size N x K is ever written: memory is the output ``[N]`` and the two
norm vectors ``[N]``, ``[K]``.

Imported lazily by :mod:`vqkit.search`: importing Triton is slow, and Triton's CPU interpreter
(``TRITON_INTERPRET=1``, used by the tests) must be chosen before the first import.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# ``ieee`` is exact fp32 (FMA units). ``tf32x3`` splits each operand into two TF32 halves and runs three
# tensor-core products: close to fp32 accuracy, several times faster on Ampere/Hopper. ``tf32`` alone
# rounds operands to 10 mantissa bits and would change codes, so it is not offered.
PRECISIONS = ("ieee", "tf32x3")

# z tile and accumulator live in registers; past this D the kernel loops over D in chunks instead.
MAX_SINGLE_BLOCK_D = 128

# Tiles by architecture family, precision and padded D: (BLOCK_N, BLOCK_K, num_warps), and for D past one
# register block (BLOCK_N, BLOCK_K, num_warps, BLOCK_D of the loop over D). Each is the largest tile for which
# ptxas reports no register spills and whose shared memory fits the SM, found by compiling for the family's
# first chip (sm_80: A100, sm_90: H100) without a GPU (``benchmarks/kernel_spills.py`` rechecks them all).
# The sm_90 tiles spill on sm_80 (its ptxas keeps fewer values live across the tf32x3 split and the D loop),
# and the loop tile chosen for H100 before spilled there too. Never timed on a GPU yet: retune with
# ``benchmarks/quantizer_speed.py``.
TILES: dict[str, dict[str, dict[int, tuple[int, int, int]]]] = {
    "sm90": {
        "ieee": {16: (128, 128, 8), 32: (128, 128, 8), 64: (128, 64, 8), 128: (64, 32, 4)},
        "tf32x3": {16: (128, 64, 8), 32: (128, 64, 8), 64: (128, 64, 8), 128: (64, 64, 4)},
    },
    "sm80": {
        "ieee": {16: (128, 128, 8), 32: (128, 128, 8), 64: (128, 32, 8), 128: (64, 32, 4)},
        "tf32x3": {16: (128, 64, 8), 32: (128, 64, 8), 64: (128, 64, 8), 128: (128, 32, 8)},
    },
}
LOOP_TILES: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "sm90": {"ieee": (128, 64, 8, 32), "tf32x3": (64, 64, 4, 32)},
    "sm80": {"ieee": (64, 128, 8, 16), "tf32x3": (128, 64, 8, 16)},
}
# Shared memory one block may use (dynamic, opt-in maximum) per family, for the checks of the table.
SHARED_BYTES = {"sm80": 163 * 1024, "sm90": 227 * 1024}


def arch_family(capability: tuple[int, int]) -> str:
    """The tile table for a compute capability: Hopper and newer use sm_90's, older chips sm_80's (sm_86/89
    have sm_80's register file; a tile past their smaller shared memory fails to launch and the search falls
    back to the chunked path, with a warning)."""
    return "sm90" if capability[0] >= 9 else "sm80"


@triton.jit
def _nearest_code_kernel(
    z_ptr,
    zsq_ptr,
    e_ptr,
    esq_ptr,
    out_ptr,
    N,
    K,
    D,
    stride_z,
    stride_e,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ONE_D_BLOCK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    # 64-bit offsets: N * D can pass 2**31 for large batches.
    row_off = rows.to(tl.int64) * stride_z
    offs_d = tl.arange(0, BLOCK_D)
    zsq = tl.load(zsq_ptr + rows, mask=row_ok, other=0.0)
    if ONE_D_BLOCK:
        # The whole z tile fits: load it once, reuse it against every codebook tile.
        z_tile = tl.load(
            z_ptr + row_off[:, None] + offs_d[None, :],
            mask=row_ok[:, None] & (offs_d[None, :] < D),
            other=0.0,
        )
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        code_ok = codes < K
        code_off = codes.to(tl.int64) * stride_e
        if ONE_D_BLOCK:
            # Loaded transposed, [BLOCK_D, BLOCK_K], so the product is a plain dot.
            e_tile = tl.load(
                e_ptr + code_off[None, :] + offs_d[:, None],
                mask=code_ok[None, :] & (offs_d[:, None] < D),
                other=0.0,
            )
            dot = tl.dot(z_tile, e_tile, input_precision=PRECISION)
        else:
            dot = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + offs_d
                z_part = tl.load(
                    z_ptr + row_off[:, None] + dd[None, :],
                    mask=row_ok[:, None] & (dd[None, :] < D),
                    other=0.0,
                )
                e_part = tl.load(
                    e_ptr + code_off[None, :] + dd[:, None],
                    mask=code_ok[None, :] & (dd[:, None] < D),
                    other=0.0,
                )
                dot = tl.dot(z_part, e_part, dot, input_precision=PRECISION)
        esq = tl.load(esq_ptr + codes, mask=code_ok, other=0.0)
        dist = (zsq[:, None] + esq[None, :]) - 2.0 * dot
        dist = tl.where(code_ok[None, :], dist, float("inf"))
        # Ties inside a tile go to the lowest index (as torch.argmin); across tiles the strict < keeps
        # the earlier tile, so the first minimum wins overall.
        tile_min, tile_arg = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_min < best
        best = tl.where(better, tile_min, best)
        best_idx = tl.where(better, tile_arg + k0, best_idx)
    tl.store(out_ptr + rows, best_idx.to(tl.int64), mask=row_ok)


def kernel_config(
    d: int, precision: str = "ieee", capability: tuple[int, int] = (9, 0)
) -> dict[str, int | bool]:
    """Tile sizes for a latent width, precision and GPU (compute capability ``(major, minor)``), from
    :data:`TILES` / :data:`LOOP_TILES`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    family = arch_family(capability)
    block_d = max(16, triton.next_power_of_2(d))
    one_block = block_d <= MAX_SINGLE_BLOCK_D
    if one_block:
        block_n, block_k, warps = TILES[family][precision][block_d]
    else:
        block_n, block_k, warps, block_d = LOOP_TILES[family][precision]
    return {
        "BLOCK_N": block_n,
        "BLOCK_K": block_k,
        "BLOCK_D": block_d,
        "ONE_D_BLOCK": one_block,
        "num_warps": warps,
        "num_stages": 2,
    }


def nearest_code_triton(
    z: torch.Tensor, zsq: torch.Tensor, e: torch.Tensor, esq: torch.Tensor, precision: str = "ieee"
) -> torch.Tensor:
    """Fused search for fp32 ``z [N, D]`` and codebook ``e [K, D]`` on one device, given their squared
    norms ``zsq [N]`` and ``esq [K]``; int64 ``[N]``.

    The caller (:func:`vqkit.search.nearest_code`) prepares the operands as every path does
    (``vqkit.search.finite_operands``: fp32, norms from ``torch.sum`` so they round as the plain formula's,
    non-finite rows handled) and has disabled autograd.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    n, d = z.shape
    k = e.shape[0]
    out = torch.empty(n, dtype=torch.int64, device=z.device)
    if n == 0:
        return out
    z, e = z.contiguous(), e.contiguous()
    # Triton's CPU interpreter (tests) runs on CPU tensors: any table will do there.
    capability = torch.cuda.get_device_capability(z.device) if z.is_cuda else (9, 0)
    cfg = kernel_config(d, precision, capability)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]),)
    _nearest_code_kernel[grid](
        z,
        zsq,
        e,
        esq,
        out,
        n,
        k,
        d,
        z.stride(0),
        e.stride(0),
        BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"],
        BLOCK_D=cfg["BLOCK_D"],
        ONE_D_BLOCK=cfg["ONE_D_BLOCK"],
        PRECISION=precision,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return out


def ptxas_report(d: int, precision: str, capability: tuple[int, int]) -> dict[str, int]:
    """Compile the kernel with the tiles :func:`kernel_config` picks, for a GPU this machine need not have,
    and return what ``ptxas -v`` says: ``spill_stores``, ``spill_loads`` (bytes), ``registers`` (per thread)
    and ``shared`` (bytes per block). Needs Triton's bundled ptxas, not a GPU or a driver."""
    import os
    import re
    import subprocess
    import tempfile

    import triton.backends.nvidia as nvidia_backend
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cfg = kernel_config(d, precision, capability)
    pointers = {name: "*fp32" for name in ("z_ptr", "zsq_ptr", "e_ptr", "esq_ptr")}
    ints = {name: "i32" for name in ("N", "K", "D", "stride_z", "stride_e")}
    consts = {name: cfg[name] for name in ("BLOCK_N", "BLOCK_K", "BLOCK_D", "ONE_D_BLOCK")}
    consts["PRECISION"] = precision
    signature = {**pointers, "out_ptr": "*i64", **ints, **{name: "constexpr" for name in consts}}
    cc = capability[0] * 10 + capability[1]
    kernel = triton.compile(
        ASTSource(fn=_nearest_code_kernel, signature=signature, constexprs=consts),
        target=GPUTarget("cuda", cc, 32),
        options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]},
    )
    ptxas = os.environ.get("TRITON_PTXAS_PATH") or os.path.join(
        os.path.dirname(nvidia_backend.__file__), "bin", "ptxas"
    )
    arch = f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        done = subprocess.run(
            [ptxas, "-v", f"--gpu-name={arch}", ptx, "-o", os.path.join(tmp, "kernel.cubin")],
            capture_output=True,
            text=True,
            check=True,
        )
    text = done.stdout + done.stderr

    def total(pattern: str) -> int:
        return sum(int(x) for x in re.findall(pattern, text))

    return {
        "spill_stores": total(r"(\d+) bytes spill stores"),
        "spill_loads": total(r"(\d+) bytes spill loads"),
        "registers": max((int(x) for x in re.findall(r"Used (\d+) registers", text)), default=0),
        "shared": int(kernel.metadata.shared),
    }
