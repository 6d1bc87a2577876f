"""What the decoder graph's code range check costs: ONNX Runtime on the default model's decoder exported with
the check (``DecodeGraph``: an image holding an out-of-range code comes out all NaN) and without it, side by side.

    python benchmarks/onnx_range_check.py [--threads 1] [--batches 1,16,256]

Calls alternate between the two graphs, so load from other processes hits both alike; each cell is the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import vqkit
from vqkit.exporters.onnx import DecodeGraph, OnnxExporter


class UncheckedDecodeGraph(nn.Module):
    """The decoder graph as it was before the range check: dequantize + decoder."""

    def __init__(self, model: vqkit.VQVAE) -> None:
        super().__init__()
        self.quantizer, self.decoder = model.quantizer, model.decoder

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.dequantize(codes.to(torch.int64)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,16,256")
    args = ap.parse_args(argv)
    model = vqkit.build_model(seed=0).eval()
    exporter = OnnxExporter()
    example = torch.randint(0, model.quantizer.codebook_size, (2, *model.codes_shape), dtype=torch.int32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, graph in (
            ("checked", DecodeGraph(model, model.decoder)),
            ("unchecked", UncheckedDecodeGraph(model)),
        ):
            path = Path(tmp) / f"{name}.onnx"
            exporter._export_one(graph, example, ("codes", "images"), path, {})
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    print(f"default model decoder, {args.threads} thread(s), onnxruntime {ort.__version__}\n")
    print("| batch | without check ms | with check ms | ratio |\n|---:|---:|---:|---:|")
    for b in (int(x) for x in args.batches.split(",")):
        codes = np.random.default_rng(0).integers(0, model.quantizer.codebook_size, (b, *model.codes_shape))
        feed = {"codes": codes.astype(np.int32)}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(40 if b <= 16 else 10):
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, feed)
                times[name].append(time.perf_counter() - start)
        plain, checked = (statistics.median(times[k]) * 1e3 for k in ("unchecked", "checked"))
        print(f"| {b} | {plain:.3f} | {checked:.3f} | {checked / plain:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
