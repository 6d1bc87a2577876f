"""Metric sinks: ``metrics.csv`` and TensorBoard get the run's training and eval records, also across a resume."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from vqkit.errors import VQKitError
from vqkit.metrics_sinks import METRICS_CSV, TENSORBOARD_DIR, open_sinks


def _records(steps: range, *, start_event: str = "start") -> list[dict[str, Any]]:
    """What the training loop writes: a start (or resume) line, training lines, eval lines, an end line."""
    out: list[dict[str, Any]] = [{"step": steps.start - 1, "event": start_event, "config": {"lr": 0.002}}]
    for step in steps:
        out.append({"step": step, "lr": step * 1e-5, "loss": 1.0 / step, "mse": 0.5 / step, "psnr": 10.0 + step,
                    "codes_used": 3 * step, "perplexity": 2.5, "images_per_s": 512.0, "elapsed_s": 0.5 * step})  # fmt: skip
        if step % 4 == 0:
            out.append({"step": step, "event": "eval", "split": "test", "images": 32, "mse": 0.25,
                        "psnr": 12.0 + step, "codes_used": 2 * step, "codebook_size": 512})  # fmt: skip
    out.append({"step": steps.stop - 1, "event": "end", "seconds": 3.0, "psnr": 99.0})
    return out


def _csv_rows(run: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (run / METRICS_CSV).open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_csv_holds_training_and_eval_rows_with_their_numbers(tmp_path: Path) -> None:
    with open_sinks(tmp_path, csv=True, tensorboard=False, resume_step=None) as sinks:
        for record in _records(range(1, 9)):
            sinks.write(record)
            # every row is on disk as soon as it is written: a killed run keeps them
            assert (tmp_path / METRICS_CSV).read_text().count("\n") >= 1
    header, rows = _csv_rows(tmp_path)
    assert header[:6] == ["step", "event", "lr", "loss", "mse", "psnr"]
    assert "config" not in header and "split" not in header  # not numbers: they stay in metrics.jsonl
    assert [(r["step"], r["event"]) for r in rows][:5] == [("1", "train"), ("2", "train"), ("3", "train"),
                                                           ("4", "train"), ("4", "eval")]  # fmt: skip
    assert len(rows) == 8 + 2  # start and end lines are not rows
    train4 = rows[3]
    assert float(train4["loss"]) == 0.25 and float(train4["psnr"]) == 14.0 and train4["codes_used"] == "12"
    eval8 = rows[-1]
    assert eval8["event"] == "eval" and float(eval8["psnr"]) == 20.0 and eval8["codebook_size"] == "512"
    assert eval8["lr"] == ""  # a column a record lacks is empty


def test_csv_grows_a_column_for_a_new_key_and_keeps_earlier_rows(tmp_path: Path) -> None:
    with open_sinks(tmp_path, csv=True, tensorboard=False, resume_step=None) as sinks:
        sinks.write({"step": 1, "loss": 1.0})
        sinks.write({"step": 2, "loss": 0.5, "commit_loss": 0.1, "note": "text is skipped"})
        sinks.write({"step": 3, "loss": 0.25, "commit_loss": 0.05})
    header, rows = _csv_rows(tmp_path)
    assert header[-1] == "commit_loss" and "note" not in header
    assert [(r["loss"], r["commit_loss"]) for r in rows] == [("1", ""), ("0.5", "0.1"), ("0.25", "0.05")]


def test_csv_on_resume_drops_the_rows_past_the_checkpoint_and_continues(tmp_path: Path) -> None:
    first = _records(range(1, 11))  # the run reached step 10, then died; its checkpoint was at step 6
    with open_sinks(tmp_path, csv=True, tensorboard=False, resume_step=None) as sinks:
        for record in first:
            sinks.write(record)
    with open_sinks(tmp_path, csv=True, tensorboard=False, resume_step=6) as sinks:
        for record in _records(range(7, 13), start_event="resume"):
            sinks.write(record)
    _, rows = _csv_rows(tmp_path)
    keys = [(int(r["step"]), r["event"]) for r in rows]
    assert len(keys) == len(set(keys))  # steps 7..10 once each, not twice
    assert [k for k in keys if k[1] == "train"] == [(s, "train") for s in range(1, 13)]
    assert [k for k in keys if k[1] == "eval"] == [(4, "eval"), (8, "eval"), (12, "eval")]


def test_csv_asked_for_only_on_resume_starts_from_metrics_jsonl(tmp_path: Path) -> None:
    earlier = _records(range(1, 11))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier) + "{torn line\n")
    with open_sinks(tmp_path, csv=True, tensorboard=False, resume_step=6) as sinks:
        sinks.write({"step": 7, "loss": 0.1})
    _, rows = _csv_rows(tmp_path)
    assert [int(r["step"]) for r in rows if r["event"] == "train"] == [1, 2, 3, 4, 5, 6, 7]


def test_a_new_run_replaces_an_old_csv_in_its_folder(tmp_path: Path) -> None:
    (tmp_path / METRICS_CSV).write_text("step,event,loss\n99,train,5\n")
    with open_sinks(tmp_path, csv=True, tensorboard=False, resume_step=None) as sinks:
        sinks.write({"step": 1, "loss": 1.0})
    assert [r["step"] for r in _csv_rows(tmp_path)[1]] == ["1"]


def test_tensorboard_without_its_package_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(VQKitError, match=r'tensorboard package.*pip install "vqkit\[tensorboard\]"'):
        open_sinks(tmp_path, csv=True, tensorboard=True, resume_step=None)
    assert not (tmp_path / METRICS_CSV).exists()  # nothing written before the error


def test_no_sinks_asked_writes_nothing(tmp_path: Path) -> None:
    with open_sinks(tmp_path, csv=False, tensorboard=False, resume_step=None) as sinks:
        sinks.write({"step": 1, "loss": 1.0})
    assert list(tmp_path.iterdir()) == []


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))  # purges what a restart superseded, as TensorBoard shows it
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_scalars_and_resume(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    with open_sinks(tmp_path, csv=False, tensorboard=True, resume_step=None) as sinks:
        for record in _records(range(1, 11)):
            sinks.write(record)
    scalars = _scalars(tmp_path / TENSORBOARD_DIR)
    assert {
        "train/loss",
        "train/psnr",
        "train/lr",
        "train/codes_used",
        "eval/psnr",
        "eval/codes_used",
    } <= set(scalars)
    assert not any(
        tag.startswith(("start", "end")) or tag.endswith(("/config", "/seconds")) for tag in scalars
    )
    assert [s for s, _ in scalars["eval/psnr"]] == [4, 8]
    assert scalars["train/psnr"][3] == (4, 14.0)

    # resumed from the checkpoint at step 6: steps 7..10 are trained again and shown once
    with open_sinks(tmp_path, csv=False, tensorboard=True, resume_step=6) as sinks:
        for record in _records(range(7, 13), start_event="resume"):
            sinks.write({**record, "psnr": -1.0} if "psnr" in record else record)
    scalars = _scalars(tmp_path / TENSORBOARD_DIR)
    steps = [s for s, _ in scalars["train/psnr"]]
    assert steps == list(range(1, 13))
    assert all(v == -1.0 for s, v in scalars["train/psnr"] if s > 6)
    assert [(s, v) for s, v in scalars["eval/psnr"]] == [(4, 16.0), (8, -1.0), (12, -1.0)]

    # a new run in the same folder hides the old one's scalars
    with open_sinks(tmp_path, csv=False, tensorboard=True, resume_step=None) as sinks:
        sinks.write({"step": 1, "loss": 7.0})
    assert _scalars(tmp_path / TENSORBOARD_DIR)["train/loss"] == [(1, 7.0)]
