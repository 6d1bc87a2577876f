"""``vqkit plot``: a run's training curves drawn to a PNG, from a real run and from hand-written metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.cli_run import run
from vqkit.cli.main import cli
from vqkit.errors import VQKitError
from vqkit.metrics_sinks import MetricsWarning
from vqkit.plot import BLUE, ORANGE, WIDTH, Axis, collect, plot_run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) run of ``vqkit train``: 6 steps, held-out evaluations at steps 3 and 6."""
    out = tmp_path_factory.mktemp("plot") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["train", "--steps", "6", "--eval-every", "3", "--checkpoint-every", "0", "-o", str(out)]
        args += ["--batch-size", "16", "--eval-images", "32", "--log-every", "2", "-q"]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out


def _pixels_of(path: Path, color: tuple[int, int, int]) -> int:
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    return int((np.abs(rgb - np.array(color)).sum(axis=-1) < 40).sum())


def _changed_pixels(a: Path, b: Path, *, below: int) -> int:
    """How many pixels differ between two pictures of the same size, under their first ``below`` rows."""
    with Image.open(a) as im_a, Image.open(b) as im_b:
        assert im_a.size == im_b.size
        diff = np.abs(np.asarray(im_a.convert("RGB"), int) - np.asarray(im_b.convert("RGB"), int)).sum(-1)
    return int((diff[below:] > 60).sum())


def _write(path: Path, records: list[object], *extra_lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _training(steps: range, *, resume_at: int | None = None) -> list[dict[str, object]]:
    records: list[dict[str, object]] = [
        {"step": 0, "event": "start", "config": {"data": "mnist5k", "lr": 2e-3}}
    ]
    for step in steps:
        if step == resume_at:
            records.append({"step": step, "event": "resume", "config": json.dumps({"data": "mnist5k"})})
        loss = 2.0 * math.exp(-step / 300) + 0.02
        records.append(
            {"step": step, "lr": 2e-3 * min(1, step / 200), "loss": loss, "mse": loss, "psnr": 10 * math.log10(4 / loss),
             "codes_used": min(500, step / 4), "perplexity": 90.0, "images_per_s": 1000.0}
        )  # fmt: skip
        if step % 500 == 0:
            records.append({"step": step, "event": "eval", "split": "test", "psnr": 9 + step / 200,
                            "codes_used": step / 5, "codebook_size": 512})  # fmt: skip
    return records


def test_plot_of_a_real_run_draws_training_and_held_out_curves(real_run: Path) -> None:
    code, text = run("plot", str(real_run))
    assert code == 0, text
    png = real_run / "curves.png"
    assert text.strip() == f"wrote {png}"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width == WIDTH
        assert im.height > 600  # four panels: two rows
    assert _pixels_of(png, BLUE) > 500  # the training curves
    assert _pixels_of(png, ORANGE) > 100  # the held-out evaluations
    # the metrics file itself works too, and -o puts the picture where asked (folders made as needed)
    out = real_run.parent / "elsewhere" / "c.png"
    code, text = run("plot", str(real_run / "metrics.jsonl"), "-o", str(out))
    assert code == 0 and out.is_file(), text


def test_library_call_returns_the_written_path_and_skips_corrupt_lines(tmp_path: Path) -> None:
    records = _training(range(25, 3001, 25), resume_at=1500)
    metrics = _write(tmp_path / "run" / "metrics.jsonl", records, "{not json", "[1, 2]", '{"no": "step"}', "")
    with pytest.warns(MetricsWarning, match=r"skipped 3 unreadable lines"):
        written = plot_run(tmp_path / "run", tmp_path / "out.png")
    assert written == tmp_path / "out.png" and written.is_file()
    assert not (metrics.parent / "curves.png").exists()
    # the resume is marked in every panel by a dashed grey line
    without = _write(tmp_path / "plain" / "metrics.jsonl", [r for r in records if r.get("event") != "resume"])
    assert _changed_pixels(written, plot_run(without.parent), below=80) > 4 * 150


def test_a_prior_run_plots_its_bits_per_image(tmp_path: Path) -> None:
    records = [
        {"step": s, "train_bits_per_image": 60 - s / 100, "test_bits_per_image": 62 - s / 100,
         "uniform_bits_per_image": 144.0, "lr": 3e-4}
        for s in range(200, 2001, 200)
    ]  # fmt: skip
    _write(tmp_path / "prior" / "metrics.jsonl", records)
    png = plot_run(tmp_path / "prior")
    assert png == tmp_path / "prior" / "curves.png"
    with Image.open(png) as im:
        assert im.height < 600  # two panels: one row
    assert _pixels_of(png, ORANGE) > 100 and _pixels_of(png, BLUE) > 100


def test_hostile_numbers_do_not_break_the_plot(tmp_path: Path) -> None:
    lines = [
        '{"step": 1, "loss": NaN, "psnr": Infinity, "lr": "fast", "codes_used": true}',
        '{"step": 2, "loss": 1e308, "psnr": -1e308, "lr": 1e-300, "codes_used": ' + "9" * 400 + "}",
        '{"step": 3, "loss": 0.5, "psnr": 20, "lr": 0, "codes_used": 4}',
        '{"step": 1e300, "loss": 0.4}',
        '{"step": -5, "loss": 0.3, "config": {"data": "\\u001b[31mred\\u2603", "steps": "x"}, "event": "start"}',
    ]
    _write(tmp_path / "m.jsonl", [], *lines)
    assert plot_run(tmp_path / "m.jsonl").is_file()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["missing"], "no run folder or metrics file at"),
        ("folder", ["run"], "has no metrics.jsonl"),
        ("empty", ["run"], "is empty: the run has not logged any metrics yet"),
        ("corrupt", ["run"], "holds no metrics: none of its 2 lines is a JSON record with a step"),
        ("events", ["run"], "holds no curves to plot"),
        ("good", ["run", "-o", "curves.jpg"], "out must be a .png file"),
    ],
)
def test_user_mistakes_are_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: str | None, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    if setup is not None:
        (tmp_path / "run").mkdir()
    contents = {
        "empty": "\n",
        "corrupt": "{oops\n\x00\xff\n",
        "events": json.dumps({"step": 0, "event": "start", "config": {}}) + "\n",
        "good": json.dumps({"step": 1, "loss": 1.0}) + "\n",
    }
    if setup in contents:
        metrics.write_text(contents[setup])
    code, text = run("plot", *args)
    assert code == 1 and message in text, text
    assert len(text.strip().splitlines()) == 1, text
    with pytest.raises(VQKitError, match="no run folder"):
        plot_run(tmp_path / "nowhere")


def test_tick_labels_share_one_style_per_axis() -> None:
    def labels(lo: float, hi: float) -> list[str]:
        axis = Axis(lo, hi)
        return [axis.label(t) for t in axis.ticks()]

    assert labels(0, 0.0021) == ["0", "0.0005", "0.0010", "0.0015", "0.0020"]
    assert labels(0, 3.1e-4) == ["0", "0.5e-4", "1.0e-4", "1.5e-4", "2.0e-4", "2.5e-4", "3.0e-4"]
    assert labels(0, 150_000) == ["0", "50k", "100k", "150k"]
    assert labels(5.8, 10.9) == ["6", "7", "8", "9", "10"]


def test_steps_trained_again_after_a_resume_are_plotted_once_with_their_later_values() -> None:
    first = [{"step": s, "loss": 1.0} for s in range(1, 11)]  # steps 7..10 were lost with the crash
    again = [{"step": 6, "event": "resume"}] + [{"step": s, "loss": 2.0} for s in range(7, 13)]
    curves = collect(first + again)
    assert curves.points[("train", "loss")] == [(s, 1.0) for s in range(1, 7)] + [
        (s, 2.0) for s in range(7, 13)
    ]
    assert curves.resumed_at == [6]
