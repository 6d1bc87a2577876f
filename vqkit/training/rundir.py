"""The run folder: where a run writes, who owns it while it runs, and its ``metrics.jsonl``."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import IO, Any

from vqkit.errors import OptionError, VQKitError
from vqkit.training.configfile import CONFIG_NAME

METRICS_NAME = "metrics.jsonl"
LOCK_NAME = ".vqkit-run.lock"


def next_run_dir(base: Path = Path("runs")) -> Path:
    """``runs/run-1``, ``runs/run-2``, ...: the first number above every existing one."""
    taken = [
        int(m.group(1))
        for p in (base.iterdir() if base.is_dir() else [])
        if (m := re.fullmatch(r"run-(\d+)", p.name))
    ]
    return base / f"run-{max(taken, default=0) + 1}"


class RunLock:
    """An exclusive lock on a run folder for as long as the run lives.

    ``flock`` on a lock file: the kernel releases it when the process ends, however it ends, so a crashed or
    killed run never leaves a folder locked; a second run into the same folder is refused while the first runs.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the 'already holds a run' check still applies
            return
        f = open(self.path, "a+")  # noqa: SIM115 (held open for the run's life)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            f.close()
            raise VQKitError(
                f"{self.path.parent} is in use by another vqkit run ({owner}); wait for it to end or choose "
                "another output folder"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def started_here(folder: Path) -> bool:
    """Whether ``folder``'s ``metrics.jsonl`` is one a vqkit run wrote (its first line is the run's start)."""
    try:
        with open(folder / METRICS_NAME, encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and first.get("event") in ("start", "resume") and "config" in first


def prepare_run_dir(
    path: Path,
    *,
    resuming: bool,
    owned: tuple[str, ...],
    what: str = "a run",
    hint: str = "",
    checkpoint: tuple[str, ...] = (),
) -> RunLock:
    """Create the folder, take its lock, and refuse to start over another run's files (``owned``: the files a
    run writes). Temporary files that a killed run left behind (``.NAME.*.tmp`` of those files) are removed.

    A run that stopped before writing any of ``checkpoint`` (diverged at once, a full disk) left nothing to
    resume: its folder is started over, or it could be neither continued nor reused."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise VQKitError(f"cannot write to the run folder {path}: {exc.strerror or exc}") from exc
    lock = RunLock(path)
    lock.acquire()
    try:
        present = [name for name in owned if (path / name).exists()]
        nothing_to_resume = (
            bool(checkpoint) and not any((path / n).exists() for n in checkpoint) and started_here(path)
        )
        if not resuming and present and not nothing_to_resume:
            found = f" (found {', '.join(present)})"
            raise OptionError(f"{path} already holds {what}{'; ' + hint if hint else ''}{found}", param="out")
        for name in owned:
            for stale in path.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock


class MetricsLog:
    """Appends one JSON object a line. On resume, lines from steps after the checkpoint are dropped, since
    those steps are about to be trained again. Further sinks (CSV, TensorBoard) receive the same records."""

    def __init__(
        self, path: Path, *, enabled: bool, resume_step: int | None = None, sinks: list[Any] | None = None
    ) -> None:
        self.path = path
        self.enabled = enabled
        self.sinks = list(sinks or [])
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
        for sink in self.sinks:
            sink.write(clean)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def check_resumable(model_path: Path, state_name: str) -> None:
    """A resume of a run that stopped before its first checkpoint: say what to do instead of naming a
    missing model file."""
    folder = model_path.parent
    if not model_path.exists() and not (folder / state_name).exists() and started_here(folder):
        raise VQKitError(
            f"the run in {folder} stopped before its first checkpoint, so there is nothing to resume; "
            f"start it again: vqkit train --config {folder / CONFIG_NAME} -o {folder}"
        )


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (ValueError, AttributeError):
        return math.inf
