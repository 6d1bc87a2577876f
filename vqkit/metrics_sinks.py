"""A run's metrics beyond ``metrics.jsonl``: read that file back, and copy its records, as training writes
them, to ``metrics.csv`` and to TensorBoard.

``metrics.jsonl`` stays the run's record of truth: one JSON object a line, written by the training loop.
Training lines (no ``event``) hold the means over the last log interval; ``"event": "eval"`` lines hold the
held-out metrics; ``start``/``resume``/``end``/``interrupted``/``diverged`` lines mark the run's course. The
sinks here copy the training and eval lines, numeric fields only (the rest stays in ``metrics.jsonl``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from vqkit.errors import VQKitError
from vqkit.fileio import atomic_path

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_HINT = 'pip install "vqkit[tensorboard]"'

# The CSV's first columns, in this order, whether or not a record has them yet: the header then rarely
# changes (only when a record brings a key outside this list, e.g. a plugin quantizer's own statistic).
CSV_COLUMNS = (
    "step",
    "event",
    "lr",
    "loss",
    "mse",
    "psnr",
    "codes_used",
    "perplexity",
    "images_per_s",
    "elapsed_s",
    "images",
    "codebook_size",
    "usage",
    "bits_per_image",
)


class MetricsWarning(UserWarning):
    """Something in a metrics file was skipped (an unreadable line)."""


# --- records -------------------------------------------------------------------------------------------


def record_kind(record: dict[str, Any]) -> str | None:
    """``"train"`` for a training line, ``"eval"`` for a held-out evaluation, None for the other events."""
    event = record.get("event")
    if event is None:
        return "train"
    return "eval" if event == "eval" else None


def finite_number(value: Any) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a boolean), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        return None
    return number if math.isfinite(number) else None


def numeric_fields(record: dict[str, Any]) -> dict[str, float]:
    """The record's finite numbers (not ``step``, not booleans); strings, objects and nulls are left out."""
    numbers = {key: finite_number(value) for key, value in record.items() if key != "step"}
    return {key: value for key, value in numbers.items() if value is not None}


def record_step(record: dict[str, Any]) -> int | None:
    step = finite_number(record.get("step"))
    return None if step is None else int(step)


def read_metrics(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """The records of a ``metrics.jsonl`` and how many lines were unreadable (not a JSON object with a
    numeric ``step``). Blank lines are not counted."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise VQKitError(f"cannot read {path}: {exc.strerror or exc}") from exc
    records: list[dict[str, Any]] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict) and record_step(record) is not None:
            records.append(record)
        else:
            bad += 1
    return records, bad


# --- sinks ---------------------------------------------------------------------------------------------


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Sinks(list[Sink]):
    """The open sinks, written and closed together; also a context manager that closes them."""

    def write(self, record: dict[str, Any]) -> None:
        for sink in self:
            sink.write(record)

    def close(self) -> None:
        for sink in self:
            sink.close()

    def __enter__(self) -> Sinks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_sinks(
    run_dir: str | os.PathLike[str], *, csv: bool, tensorboard: bool, resume_step: int | None
) -> Sinks:
    """The sinks asked for, for the run in ``run_dir``: ``metrics.csv`` (``csv``) and TensorBoard event files
    in ``run_dir/tensorboard`` (``tensorboard``).

    ``resume_step`` is the step a resumed run continues from (None for a new run): what an earlier part of
    the run wrote after that step is dropped, as ``metrics.jsonl`` drops it, since those steps are trained
    again. Write every record the run writes to ``metrics.jsonl``; only training and eval records are kept.
    """
    run_dir = Path(run_dir)
    sinks = Sinks()
    # TensorBoard first: it is the one that can fail for want of a package, before any file is touched.
    if tensorboard:
        sinks.append(TensorBoardSink(run_dir / TENSORBOARD_DIR, resume_step=resume_step))
    if csv:
        try:
            sinks.append(CsvSink(run_dir / METRICS_CSV, resume_step=resume_step))
        except BaseException:
            sinks.close()
            raise
    return sinks


class CsvSink:
    """``metrics.csv``: one row per training or eval record, ``event`` telling which (``train``/``eval``).

    Rows are appended as they come (and reach the disk at once, so a killed run keeps them). A record with
    a key the header lacks adds a column: the file is rewritten once, atomically, with the wider header.
    """

    def __init__(self, path: Path, *, resume_step: int | None) -> None:
        self.path = path
        self.columns = list(CSV_COLUMNS)
        rows = [] if resume_step is None else self._earlier_rows(resume_step)
        for row in rows:
            self.columns += [key for key in row if key not in self.columns]
        self._rewrite(rows)

    def _earlier_rows(self, resume_step: int) -> list[dict[str, Any]]:
        """The rows the run's earlier parts wrote up to ``resume_step``: from this CSV, or rebuilt from
        ``metrics.jsonl`` when there is none (CSV asked for only on resume) or it cannot be read."""
        if self.path.exists():
            try:
                return [row for row in _read_csv(self.path) if _csv_step(row) <= resume_step]
            except VQKitError:
                pass
        jsonl = self.path.with_name(METRICS_JSONL)
        records = read_metrics(jsonl)[0] if jsonl.exists() else []
        rows = (csv_row(record) for record in records)
        return [row for row in rows if row is not None and int(row["step"]) <= resume_step]

    def write(self, record: dict[str, Any]) -> None:
        row = csv_row(record)
        if row is None:
            return
        new = [key for key in row if key not in self.columns]
        if new:
            rows = _read_csv(self.path)
            self.columns += new
            self._rewrite([*rows, row])
            return
        try:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)
        except OSError as exc:
            raise VQKitError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        pass  # every row is on disk as soon as it is written

    def _rewrite(self, rows: Iterable[dict[str, Any]]) -> None:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        with atomic_path(self.path) as tmp:
            tmp.write_text(buffer.getvalue(), newline="")


def csv_row(record: dict[str, Any]) -> dict[str, Any] | None:
    """The CSV row of a training or eval record (None for the other events): step, event, its numbers."""
    kind = record_kind(record)
    step = record_step(record)
    if kind is None or step is None:
        return None
    numbers = {key: _csv_number(value) for key, value in numeric_fields(record).items()}
    return {"step": str(step), "event": kind, **numbers}


def _csv_number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows, each with every column of the header (a short row's missing cells are empty)."""
    try:
        with path.open(newline="") as f:
            return [{k: v for k, v in row.items() if k is not None} for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VQKitError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc


def _csv_step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or math.inf)
    except ValueError:
        return math.inf


def require_tensorboard() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or one clear error saying what to install. Cheap to call
    early (before loading data) so that a run asked to log to TensorBoard fails at once, not after setup."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise VQKitError(
            f"logging to TensorBoard needs the tensorboard package, which is not installed: {TENSORBOARD_HINT}"
        ) from exc
    return SummaryWriter


class TensorBoardSink:
    """Scalars ``train/<name>`` and ``eval/<name>`` at each record's step, in ``run_dir/tensorboard``.

    TensorBoard is told where this part of the run starts (``purge_step``), so it hides what an earlier
    part wrote from that step on: the steps trained again on resume, or a whole earlier run in the folder.
    """

    def __init__(self, log_dir: Path, *, resume_step: int | None) -> None:
        SummaryWriter = require_tensorboard()  # noqa: N806 (a class)
        self.log_dir = log_dir
        try:
            self.writer = SummaryWriter(
                log_dir=str(log_dir), purge_step=0 if resume_step is None else resume_step + 1
            )
        except OSError as exc:
            raise VQKitError(f"cannot write {log_dir}: {exc.strerror or exc}") from exc

    def write(self, record: dict[str, Any]) -> None:
        kind = record_kind(record)
        step = record_step(record)
        if kind is None or step is None:
            return
        for key, value in numeric_fields(record).items():
            self.writer.add_scalar(f"{kind}/{key}", value, global_step=step)
        if kind == "eval":
            self.writer.flush()  # at most a log interval of training scalars is lost if the run is killed

    def close(self) -> None:
        self.writer.close()


def warn_skipped(path: Path, bad: int) -> None:
    if bad:
        warnings.warn(
            f"skipped {bad} unreadable line{'s' if bad != 1 else ''} of {path}", MetricsWarning, stacklevel=3
        )
