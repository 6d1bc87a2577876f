"""Where a CUDA training step waits on the host: trains a few steps under ``torch.cuda.set_sync_debug_mode``
and counts every synchronizing CUDA call by the vqkit line that made it.

    python benchmarks/sync_debug.py                      # 60 steps, read-backs every 20
    python benchmarks/sync_debug.py --precision bf16 --compile --out syncs.md

The loop is meant to sync only at its read-backs (every ``--log-every`` steps), evaluations and checkpoints,
and on the steps where the codebook upkeep looks for dead codes; any other line in the table is a stall to fix.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

from vqkit.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _where(stack: list[traceback.FrameSummary]) -> str:
    """The innermost frame in vqkit's own code (or the innermost frame at all)."""
    for frame in reversed(stack):
        path = Path(frame.filename).resolve()
        if ROOT in path.parents and "benchmarks" not in path.parts:
            return f"{path.relative_to(ROOT)}:{frame.lineno} ({frame.name})"
    return f"{stack[-1].filename}:{stack[-1].lineno}" if stack else "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", help="also write the table (markdown) here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("sync_debug.py: needs a CUDA GPU (torch.cuda.is_available() is False)")
    counts: collections.Counter[str] = collections.Counter()
    steps_seen = [0]

    def record(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if "synchronizing" in str(message):
            counts[_where(traceback.extract_stack()[:-1])] += 1
        else:
            print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)

    def after(step: int, _model: object) -> None:
        steps_seen[0] = step

    warnings.showwarning = record
    warnings.simplefilter("always")
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            device="cuda",
            steps=args.steps,
            batch_size=args.batch_size,
            log_every=args.log_every,
            eval_every=0,
            checkpoint_every=0,
            eval_images=64,
            precision=args.precision,
            compile=args.compile,
            progress=False,
            out=str(Path(tmp) / "run"),
        )
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(config, callback=after)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    lines = [
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {steps_seen[0]} steps, "
        f"read-back every {args.log_every}, {args.precision}{', compile' if args.compile else ''}",
        "",
        "| synchronizing calls | where |",
        "|---:|---|",
        *(f"| {n} | {where} |" for where, n in counts.most_common()),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
