"""What the CUDA paths say about themselves, checked on CPU: which search implementation runs, and a
benchmark that never reports the fallback as the kernel."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqkit import search

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(name: str) -> object:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fast_path_says_when_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    assert search.fast_path("cpu") == "chunked"
    monkeypatch.setattr(search, "_triton_search", lambda: None)
    assert search.fast_path("cuda") == "chunked (Triton is not installed)"
    monkeypatch.setattr(search, "_triton_search", lambda: object())
    assert search.fast_path("cuda") == "triton"
    monkeypatch.setattr(search, "_triton_broken", "ptxas fatal: Unsupported .version 9.0")
    assert (
        search.fast_path("cuda")
        == "chunked (the Triton kernel failed: ptxas fatal: Unsupported .version 9.0)"
    )


def test_quantizer_benchmark_labels_each_path_and_keeps_failed_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _benchmark("quantizer_speed")
    assert (
        bench.path_of("search", "vqkit", "cuda") == "triton ieee"
    )  # asked for by name: fails, never falls back
    assert bench.path_of("search", "vqkit-chunked", "cuda") == "chunked"
    assert bench.path_of("search", "tutorial", "cuda") == "-"
    monkeypatch.setattr(search, "_triton_broken", "out of resources")
    # the quantizer searches through auto: after a kernel failure the row is labelled (and not timed)
    assert bench.path_of("vq fwd+bwd", "vqkit", "cuda").startswith("chunked (the Triton kernel failed")
    rows = [
        {
            "n": 1,
            "k": 2,
            "d": 3,
            "part": "search",
            "method": "tutorial",
            "path": "-",
            "error": "out of GPU memory",
        },
        {
            "n": 1,
            "k": 2,
            "d": 3,
            "part": "search",
            "method": "vqkit",
            "path": "triton ieee",
            "ms": 1.0,
            "mib": 2.0,
        },
    ]
    text = bench.table(rows, "header")
    assert "| tutorial | - | out of GPU memory |" in text
    assert "| vqkit | triton ieee | 1.0 | n/a | 2.0 | n/a |" in text


def test_quantizer_benchmark_on_cuda_without_a_gpu_is_one_line() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quantizer_speed.py"), "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("quantizer_speed.py: device cuda:"), done.stderr


def test_gpu_check_script_is_complete_and_keeps_to_its_budget(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for name in ("quantizer_speed.py", "train_speed.py", "sync_debug.py"):
        assert f"benchmarks/{name}" in text and (ROOT / "benchmarks" / name).exists()
    for needed in ("--no-deps", "-m gpu", "--precision bf16", "--compile", "sync_debug", "torchrun"):
        assert needed in text, needed
    budget = int(text.split("BUDGET_S=${GPU_CHECK_BUDGET_S:-")[1].split("}")[0])
    assert budget + 20 <= 8 * 60  # the last step's kill margin and the summary included
    # With no budget left every step is skipped, and the summary still says so: the skeleton runs on CPU.
    out = tmp_path / "results"
    done = subprocess.run(
        ["bash", str(script), str(out)],
        env={**os.environ, "GPU_CHECK_BUDGET_S": "0", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = (out / "summary.md").read_text()
    assert "| pytest-gpu | skipped" in summary and "| quantizer-speed | skipped" in summary
