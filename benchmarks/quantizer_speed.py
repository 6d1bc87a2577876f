"""Nearest-code search and the whole ``vq`` quantizer (forward + backward): vqkit against the tutorial formulation
(the full N x K distance matrix) and ``torch.cdist`` + argmin, side by side in one run.

    python benchmarks/quantizer_speed.py                    # CPU sizes, 1 thread
    python benchmarks/quantizer_speed.py --device cuda      # the issue's sizes on a GPU
    python benchmarks/quantizer_speed.py --threads 2 --reps 5 --out table.md

Parts and methods:
- ``search``: ``tutorial`` (the textbook expression of the widely used VQ-VAE tutorial, argmin over the full matrix), ``cdist`` (``torch.cdist`` +
  argmin), ``vqkit`` (``vqkit.search.nearest_code``: chunked on CPU, the Triton kernel on CUDA); on CUDA also
  ``vqkit-tf32x3`` (the kernel's tensor-core precision), ``vqkit-chunked`` (the fallback, timed on purpose) and
  ``matmul-bf16``, the bare bf16 ``z @ e.T`` the aim is stated against; on CPU ``matmul`` (fp32), the floor for
  any exact search.
- ``vq fwd+bwd``: the tutorial's ``VQEmbedding`` (transcribed), the same module searching with cdist, and vqkit's
  ``vq`` (init=normal, no restarts) — forward, loss, backward.

Path: which implementation a vqkit row ran. On CUDA the ``vqkit`` rows ask for the kernel by name (a kernel
failure is that row's error, not a silent switch to the chunked path), and the ``vq fwd+bwd`` row, which
searches through the quantizer's ``auto`` choice, is not timed when that choice is not the kernel: the row
says why instead. A row that runs out of GPU memory says so and the next row runs.

Time: median of ``--reps`` calls after one warm-up call at full size. Memory ("extra"): the peak memory of one
call above what was resident just before it (inputs, weights), so it counts every temporary and the outputs.
On CUDA that is ``max_memory_allocated`` minus ``memory_allocated``. On CPU each (case, part, method) runs in
its own fresh process (so no allocator cache from an earlier method hides a peak): after a small warm-up call
(one-time lazy initialisation is not the method's), the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``)
and extra = VmHWM after the call - VmRSS before it. Ratios: the tutorial's figure divided by the method's (time: >1
is faster than the tutorial's; memory: >1 is less memory).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import vqkit
from vqkit.device import resolve_device
from vqkit.errors import VQKitError
from vqkit.search import fast_path, nearest_code

GPU_CASES = [(65536, 512, 64), (65536, 8192, 64), (262144, 16384, 32)]
# Same K and D as on the GPU, N cut so that the tutorial's 3 live N x K matrices fit a small shared machine.
CPU_CASES = [(16384, 512, 64), (16384, 8192, 64), (16384, 16384, 32)]
SEARCHES = {
    "cpu": ["tutorial", "cdist", "vqkit", "matmul"],
    "cuda": ["tutorial", "cdist", "vqkit", "vqkit-tf32x3", "vqkit-chunked", "matmul-bf16"],
}
QUANTIZERS = ["tutorial", "cdist", "vqkit"]


def tutorial_search(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    distances = (
        torch.sum(z**2, dim=-1, keepdim=True)
        + torch.sum(e.t() ** 2, dim=0, keepdim=True)
        - 2 * torch.matmul(z, e.t())
    )
    return torch.argmin(distances, dim=-1)


def cdist_search(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    return torch.argmin(torch.cdist(z, e), dim=-1)


class TutorialVQEmbedding(nn.Module):
    """The tutorial formulation's VQEmbedding, with its distance step swappable for cdist."""

    def __init__(self, num_embeddings: int, embedding_dim: int, search: Callable = tutorial_search) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.commitment_cost = 0.25
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.search = search

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, c, h, w = z.shape
        z_flattened = z.permute(0, 2, 3, 1).reshape(b * h * w, self.embedding_dim)
        encoding_indices = self.search(z_flattened, self.embedding.weight)
        z_q = self.embedding(encoding_indices).reshape(b, h, w, self.embedding_dim).permute(0, 3, 1, 2)
        loss = F.mse_loss(z_q, z.detach()) + self.commitment_cost * F.mse_loss(z_q.detach(), z)
        z_q = z + (z_q - z).detach()
        return z_q, loss, encoding_indices


def vqkit_vq(k: int, d: int) -> nn.Module:
    cls = vqkit.quantizers.get("vq")
    options = {"init": "normal", "restart_after": 0, "estimator": "ste"}
    accepted = inspect.signature(cls).parameters
    return cls(d, k, **{key: v for key, v in options.items() if key in accepted})


def make_call(part: str, method: str, n: int, k: int, d: int, device: str) -> Callable[[int], None]:
    """A function running the measured operation on the first ``rows`` latents (fresh inputs built once)."""
    # Only the tf32x3 row opts into the kernel's tensor-core product; every other row is exact fp32.
    os.environ.pop("VQKIT_SEARCH_PRECISION", None)
    if method == "vqkit-tf32x3":
        os.environ["VQKIT_SEARCH_PRECISION"] = "tf32x3"
    g = torch.Generator(device="cpu").manual_seed(0)
    e = torch.randn(k, d, generator=g).to(device)
    if part == "search":
        z = torch.randn(n, d, generator=g).to(device)
        if method == "tutorial":
            return lambda rows: tutorial_search(z[:rows], e)
        if method == "cdist":
            return lambda rows: cdist_search(z[:rows], e)
        if method == "matmul":
            return lambda rows: torch.matmul(z[:rows], e.t())
        if method == "matmul-bf16":
            zb, eb = z.bfloat16(), e.bfloat16()
            return lambda rows: torch.matmul(zb[:rows], eb.t())
        if method == "vqkit-chunked":
            return lambda rows: nearest_code(z[:rows], e, backend="chunked")
        if device == "cuda":  # the kernel by name: never the fallback by accident
            return lambda rows: nearest_code(z[:rows], e, backend="triton")
        return lambda rows: nearest_code(z[:rows], e)
    # Latent maps of 16 x 16 positions, N / 256 of them.
    z = torch.randn(n // 256, d, 16, 16, generator=g).to(device).requires_grad_(True)
    if method == "vqkit":
        module = vqkit_vq(k, d).to(device).train()
    else:
        module = TutorialVQEmbedding(k, d, tutorial_search if method == "tutorial" else cdist_search).to(
            device
        )
    module.embedding.weight.data.copy_(e)

    def step(rows: int) -> None:
        out = module(z[: max(1, rows // 256)])
        z_q, loss = (out.z_q, out.loss) if method == "vqkit" else out[:2]
        (z_q.float().mean() + loss).backward()
        z.grad = None
        module.zero_grad(set_to_none=True)

    return step


def _kib(key: str) -> int:
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1))


def path_of(part: str, method: str, device: str) -> str:
    """The search implementation a row runs ("-" for rows that are not vqkit's)."""
    if method == "vqkit-chunked" or (method.startswith("vqkit") and device == "cpu"):
        return "chunked"
    if method == "vqkit-tf32x3":
        return "triton tf32x3"
    if method == "vqkit":
        return "triton ieee" if part == "search" else fast_path(device).replace("triton", "triton ieee")
    return "-"


def measure(part: str, method: str, n: int, k: int, d: int, device: str, reps: int) -> dict:
    call = make_call(part, method, n, k, d, device)
    if device == "cuda":
        call(n)  # compiles kernels, warms cuBLAS
        torch.cuda.synchronize()
        path = path_of(part, method, device)
        if method == "vqkit" and not path.startswith("triton"):
            return {"path": path, "error": "not timed: the quantizer's search is not the kernel"}
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call(n)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call(n)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    else:
        call(min(n, 256))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _kib("VmRSS")
        call(n)
        extra = (_kib("VmHWM") - before) * 1024
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            call(n)
            times.append((time.perf_counter() - t0) * 1000)
        path = path_of(part, method, device)
    return {"ms": statistics.median(times), "mib": extra / 2**20, "path": path}


def run_case(job: dict, device: str) -> dict:
    if device == "cuda":
        try:
            return measure(**job, device=device)
        except torch.OutOfMemoryError:
            return {"path": path_of(job["part"], job["method"], device), "error": "out of GPU memory"}
        except Exception as err:  # the kernel failing to compile or launch is this row's result
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return {"path": path_of(job["part"], job["method"], device), "error": f"failed: {first}"}
        finally:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # the next row starts from an empty cache, not this row's peak
    # A fresh process per measurement: see the module docstring.
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.splitlines()[-1])


def table(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| N, K, D | part | method | path | time (ms) | speed-up vs tutorial | extra memory (MiB) | memory vs tutorial |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        where = f"| {r['n']}, {r['k']}, {r['d']} | {r['part']} | {r['method']} | {r['path']} |"
        if "error" in r:
            lines.append(f"{where} {r['error']} | | | |")
            continue
        speedup = f"{r['speedup']:.2f}x" if r.get("speedup") else "n/a"
        mem_ratio = f"{r['mem_ratio']:.1f}x" if r.get("mem_ratio") else "n/a"
        lines.append(f"{where} {r['ms']:.1f} | {speedup} | {r['mib']:.1f} | {mem_ratio} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: a shared machine times the scheduler)"
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cases", help="N,K,D;N,K,D... instead of the defaults for the device")
    p.add_argument("--out", help="also write the table (markdown) here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        try:
            resolve_device("cuda")
        except VQKitError as err:
            sys.exit(f"quantizer_speed.py: {err}")
    vqkit.load_plugins()
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(measure(**job, device="cpu")))
        return
    cases = GPU_CASES if args.device == "cuda" else CPU_CASES
    if args.cases:
        cases = [tuple(int(x) for x in c.split(",")) for c in args.cases.split(";")]
    rows = []
    for n, k, d in cases:
        for part, methods in (("search", SEARCHES[args.device]), ("vq fwd+bwd", QUANTIZERS)):
            results = {}
            for method in methods:
                job = {"part": part, "method": method, "n": n, "k": k, "d": d, "reps": args.reps}
                results[method] = r = run_case(job, args.device)
                base = results["tutorial"]
                ratios = {}
                if "error" not in base and "error" not in r:
                    ratios = {"speedup": base["ms"] / r["ms"], "mem_ratio": base["mib"] / max(r["mib"], 1e-3)}
                rows.append({**job, **r, **ratios})
                print(table(rows[-1:], "").splitlines()[-1], flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} thread(s)"
    text = table(rows, f"{device}, torch {torch.__version__}, median of {args.reps}")
    print()
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
