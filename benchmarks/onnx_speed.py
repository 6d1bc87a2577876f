"""ONNX Runtime against PyTorch eager on CPU: the exported encoder and decoder graphs, batch 1, 16 and 256.

    python benchmarks/onnx_speed.py                      # default model (conv3 + vq 512x64, 3x32x32), 1 thread
    python benchmarks/onnx_speed.py --model runs/a/model.safetensors --threads 4 --out table.md

Both sides get the same thread count and the same inputs; PyTorch runs ``encoder + quantizer.quantize`` and
``quantizer.dequantize + decoder`` under ``torch.inference_mode``, ONNX Runtime runs ``encoder.onnx`` and
``decoder.onnx`` as ``vqkit export`` writes them. Measurements interleave the runtimes call by call, so load
from other processes hits both alike; each cell is the median over calls. The decoder is also timed as exported
with ``--set subpixel=true`` (each transposed conv rewritten as conv + DepthToSpace), to show which is faster.
One thread by default: on a machine shared with other jobs, multi-threaded timings measure the scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import vqkit
from vqkit.export import export


def _session(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def _time(fns: dict[str, Callable[[], object]], min_seconds: float, min_calls: int) -> dict[str, float]:
    """Median seconds per call of each fn, calling them in turn until each ran ``min_calls`` times and
    ``min_seconds`` passed."""
    for fn in fns.values():  # warm-up (allocations, ORT's first-run planning)
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    while min(len(t) for t in times.values()) < min_calls or time.perf_counter() - start < min_seconds:
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="A vqkit model file (default: a fresh default conv3 + vq model).")
    ap.add_argument("--threads", type=int, default=1, help="Threads for both runtimes (default 1).")
    ap.add_argument("--batches", default="1,16,256", help="Comma-separated batch sizes.")
    ap.add_argument("--seconds", type=float, default=2.0, help="Minimum measuring time per cell.")
    ap.add_argument("--out", help="Also write the markdown table to this file.")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = vqkit.load(args.model) if args.model else vqkit.build_model(seed=0).eval()
    spec = model.spec
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        export(model, Path(tmp) / "plain", num_images=64)
        export(model, Path(tmp) / "sub", num_images=64, options={"subpixel": True})
        enc = _session(Path(tmp) / "plain" / "encoder.onnx", args.threads)
        dec = _session(Path(tmp) / "plain" / "decoder.onnx", args.threads)
        dec_sub = _session(Path(tmp) / "sub" / "decoder.onnx", args.threads)
        # The graphs' codes dtype (int32 by default where the codebook fits), as vqkit.json records it.
        codes_dtype = json.loads((Path(tmp) / "plain" / "vqkit.json").read_text())["codes_dtype"]
        rows = []
        g = torch.Generator().manual_seed(0)
        for b in batches:
            x = torch.rand(b, spec.channels, spec.image_size, spec.image_size, generator=g) * 2 - 1
            with torch.inference_mode():
                codes = model.quantizer.quantize(model.encoder(x))
            xn, cn = x.numpy(), codes.numpy().astype(codes_dtype)

            def torch_enc(x: torch.Tensor = x) -> object:
                with torch.inference_mode():
                    return model.quantizer.quantize(model.encoder(x))

            def torch_dec(c: torch.Tensor = codes) -> object:
                with torch.inference_mode():
                    return model.decoder(model.quantizer.dequantize(c))

            calls = 20 if b <= 16 else 5
            te = _time({"torch": torch_enc, "ort": lambda xn=xn: enc(xn)}, args.seconds, calls)
            td = _time(
                {"torch": torch_dec, "ort": lambda cn=cn: dec(cn), "sub": lambda cn=cn: dec_sub(cn)},
                args.seconds,
                calls,
            )
            rows.append(("encoder", b, te["torch"], te["ort"], None))
            rows.append(("decoder", b, td["torch"], td["ort"], td["sub"]))
            print(f"batch {b} done", file=sys.stderr)

    def ms(t: float) -> str:
        return f"{t * 1e3:.3f}" if t < 0.01 else f"{t * 1e3:.1f}"

    lines = [
        f"model: {spec.encoder} + {spec.quantizer} (codebook {spec.codebook_size} x {spec.latent_dim}) + "
        f"{spec.decoder}, {spec.channels}x{spec.image_size}x{spec.image_size}; {args.threads} threads each; "
        f"torch {torch.__version__.split('+')[0]}, onnxruntime {ort.__version__}, {os.cpu_count()} CPUs seen",
        "",
        "| graph | batch | PyTorch eager ms | ONNX Runtime ms | ORT speed-up | ORT sub-pixel ms | its speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for graph, b, t_torch, t_ort, t_sub in rows:
        sub = " | " if t_sub is None else f"{ms(t_sub)} | {t_torch / t_sub:.2f}x"
        lines.append(f"| {graph} | {b} | {ms(t_torch)} | {ms(t_ort)} | {t_torch / t_ort:.2f}x | {sub} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
