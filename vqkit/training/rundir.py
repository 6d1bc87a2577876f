"""The run folder: where a run writes, and its ``metrics.jsonl``."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from vqkit.errors import VQKitError
from vqkit.training.checkpoint import MODEL_NAME, STATE_NAME

METRICS_NAME = "metrics.jsonl"


def next_run_dir(base: Path = Path("runs")) -> Path:
    """``runs/run-1``, ``runs/run-2``, ...: the first number above every existing one."""
    taken = [
        int(m.group(1))
        for p in (base.iterdir() if base.is_dir() else [])
        if (m := re.fullmatch(r"run-(\d+)", p.name))
    ]
    return base / f"run-{max(taken, default=0) + 1}"


def prepare_run_dir(path: Path, *, resuming: bool) -> Path:
    """Create the folder (a clear error if it cannot be) and refuse to overwrite another run's files."""
    if not resuming and ((path / MODEL_NAME).exists() or (path / STATE_NAME).exists()):
        raise VQKitError(
            f"{path} already holds a run ({MODEL_NAME}); continue it with "
            f"--model {path / MODEL_NAME} --resume, or choose another --out"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise VQKitError(f"cannot write to the run folder {path}: {exc.strerror or exc}") from exc
    return path


class MetricsLog:
    """Appends one JSON object a line. On resume, lines from steps after the checkpoint are dropped, since
    those steps are about to be trained again."""

    def __init__(self, path: Path, *, enabled: bool, resume_step: int | None = None) -> None:
        self.path = path
        self.enabled = enabled
        if enabled and resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resume_step]
            path.write_text("".join(f"{line}\n" for line in kept))
        elif enabled and resume_step is None:
            path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(clean) + "\n")
        except OSError as exc:
            raise VQKitError(f"cannot write {self.path}: {exc.strerror or exc}") from exc


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (ValueError, AttributeError):
        return math.inf
