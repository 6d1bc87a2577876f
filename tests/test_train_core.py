"""The training core as a user meets it: warm-up for short runs, collapse warnings, SIGTERM, config files,
one owner per run folder, and settings checked before anything starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import vqkit
from vqkit.cli.main import cli
from vqkit.errors import OptionError
from vqkit.training import TrainConfig, train
from vqkit.training.config import DEFAULT_LR
from vqkit.training.configfile import read_config_file, write_config_toml
from vqkit.training.health import collapse_warning
from vqkit.training.rundir import prepare_run_dir

FAST = ["--batch-size", "16", "--eval-images", "32", "--log-every", "2", "-q"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.output


def test_short_runs_cap_their_warm_up_and_say_so(tmp_path: Path) -> None:
    assert TrainConfig(steps=30).warmup() == 6 and TrainConfig(steps=200).warmup() == 40
    assert TrainConfig().warmup() == TrainConfig().warmup_steps  # the default run keeps its full warm-up
    code, text = _run(["train", "--steps", "10", "--eval-every", "0", "-o", str(tmp_path / "r"), *FAST])
    assert code == 0, text
    assert "warm-up 2 steps (asked 200, capped at a fifth of the run)" in text
    lrs = [json.loads(x).get("lr") for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert max(v for v in lrs if v is not None) > 0.9 * DEFAULT_LR  # reached its peak (conv3 names no lr)


def test_every_evaluation_prints_one_line_and_a_collapse_is_flagged(tmp_path: Path) -> None:
    lines: list[str] = []
    config = TrainConfig(
        model={"quantizer_options": {"init": "normal", "restart_after": 0}},  # collapses when this short
        steps=8,
        batch_size=16,
        lr=0.05,
        eval_every=4,
        eval_images=32,
        log_every=4,
        checkpoint_every=0,
        out=str(tmp_path / "r"),
        progress=False,
    )
    result = train(config, log=lines.append)
    evals = [line for line in lines if line.startswith("eval ")]
    assert len(evals) == 2 and "held-out PSNR" in evals[0] and "codes" in evals[0]
    assert result.warnings and "collapsed" in result.warnings[0] and "try" in result.warnings[0]
    assert any(line.startswith("warning ") for line in lines)
    # the resolved options of every component are in the header
    assert any(line.startswith("quantizer") and "restart_after=0" in line for line in lines)


def test_collapse_check_tells_a_constant_image_from_a_healthy_one() -> None:
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 255, (8, 1, 8, 8), dtype=np.uint8)
    healthy = {"codes_used": 300, "codebook_size": 512}
    assert collapse_warning(healthy, originals, originals) is None
    constant = np.repeat(originals[:1], 8, axis=0)
    assert "collapsed" in (collapse_warning(healthy, originals, constant) or "")
    assert "3 of 512 codes" in (
        collapse_warning({"codes_used": 3, "codebook_size": 512}, originals, originals) or ""
    )


def test_sigterm_checkpoints_and_prints_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "vqkit", "train", "--steps", "100000", "--eval-every", "0"]
    args += ["--checkpoint-every", "0", "-o", str(out), *FAST]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 600  # start-up (torch, data) can take minutes on a loaded machine
    while time.time() < deadline and not _logged_a_step(out) and proc.poll() is None:
        time.sleep(0.2)
    assert _logged_a_step(out), "the run never logged a step"
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, text
    assert "stopped by SIGTERM" in text and "--resume" in text and "Traceback" not in text
    assert (out / "model.safetensors").is_file() and (out / "train_state.pt").is_file()


def _logged_a_step(out: Path) -> bool:
    metrics = out / "metrics.jsonl"
    return metrics.exists() and '"loss"' in metrics.read_text()


def test_a_run_folder_has_one_owner(tmp_path: Path) -> None:
    lock = prepare_run_dir(tmp_path / "r", resuming=False, owned=("model.safetensors",))
    try:
        code, text = _run(["train", "--steps", "2", "-o", str(tmp_path / "r"), *FAST])
        assert code == 1 and "in use by another vqkit run" in text
        assert not (tmp_path / "r" / "metrics.jsonl").exists()  # the second start wrote nothing
    finally:
        lock.release()
    # a killed run's lock and temporaries do not block the next run
    (tmp_path / "r" / ".train_state.pt.abc123.tmp").write_bytes(b"half")
    code, text = _run(["train", "--steps", "2", "--eval-every", "0", "-o", str(tmp_path / "r"), *FAST])
    assert code == 0, text
    assert not list((tmp_path / "r").glob(".train_state.pt.*.tmp"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "nan"], "--lr must be a number, got nan"),
        (["--lr", "inf"], "--lr must be a number, got inf"),
        (["--lr", "0"], "--lr must be above 0"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--min-lr-ratio", "2"], "--min-lr-ratio must be between 0 and 1"),
        (["--betas", "0.9", "1.5"], "--betas must be two numbers"),
        (["--set", "loss.lpips"], "expected loss.NAME.KEY=VALUE"),
    ],
)
def test_bad_settings_are_one_line_naming_the_flag(args: list[str], message: str) -> None:
    code, text = _run(["train", *args, *FAST])
    assert code != 0 and message in text and "Traceback" not in text


def test_library_errors_name_parameters_not_flags() -> None:
    with pytest.raises(OptionError, match=r"^lr must be a number, got nan") as info:
        TrainConfig(lr=float("nan")).validate()
    assert info.value.param == "lr"
    with pytest.raises(OptionError, match="unknown training setting"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_config_file_round_trip_gives_the_same_weights(tmp_path: Path) -> None:
    cfg = tmp_path / "my.toml"
    cfg.write_text(
        "steps = 4\nbatch_size = 16\neval_every = 0\neval_images = 16\nlog_every = 2\nlr = 0.003\n"
    )
    code, text = _run(["train", "--config", str(cfg), "-o", str(tmp_path / "a"), "-q"])
    assert code == 0, text
    written = read_config_file(tmp_path / "a" / "config.toml")
    assert written["steps"] == 4 and written["lr"] == 0.003 and "out" not in written
    first = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert isinstance(first["config"], dict) and first["config"]["lr"] == 0.003  # an object, not a string
    # re-train from the run folder's config: the same weights
    code, text = _run(
        ["train", "--config", str(tmp_path / "a" / "config.toml"), "-o", str(tmp_path / "b"), "-q"]
    )
    assert code == 0, text
    a = vqkit.load(tmp_path / "a" / "model.safetensors").state_dict()
    b = vqkit.load(tmp_path / "b" / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # options given on the command line win over the file
    code, text = _run(["train", "--config", str(cfg), "--steps", "2", "-o", str(tmp_path / "c"), "-q"])
    assert code == 0 and "trained    2 steps" in text


def test_config_files_keep_every_kind_of_value(tmp_path: Path) -> None:
    data = {
        "steps": 3,
        "lr": 1e-4,
        "betas": [0.5, 0.9],
        "schedule": "constant",
        "grad_clip": None,
        "compile": False,
        "model": {
            "quantizer": "ema",
            "quantizer_options": {"decay": 0.9},
            "encoder_options": {"widths": [8, 16]},
        },
        "loss_options": {"lpips": {"weights": 'w "quoted".safetensors'}},
    }
    path = write_config_toml(tmp_path / "c.toml", data)
    back = read_config_file(path)
    assert back == {k: v for k, v in data.items() if v is not None}
    assert TrainConfig.from_dict(back).validate().betas == (0.5, 0.9)
    (tmp_path / "bad.toml").write_text("steps = [")
    code, text = _run(["train", "--config", str(tmp_path / "bad.toml"), "-q"])
    assert code == 1 and "not valid TOML" in text
    (tmp_path / "unknown.toml").write_text("stepz = 3\n")
    code, text = _run(["train", "--config", str(tmp_path / "unknown.toml"), "-q"])
    assert code == 1 and "unknown training setting(s) 'stepz'" in text


def test_a_different_model_on_resume_names_the_files_real_value(tmp_path: Path) -> None:
    code, text = _run(["train", "--steps", "2", "--eval-every", "0", "-o", str(tmp_path / "r"), *FAST])
    assert code == 0, text
    model = str(tmp_path / "r" / "model.safetensors")
    code, text = _run(["train", "--model", model, "--resume", "--set", "quantizer.beta=0.5", "-q"])
    assert code == 1 and "quantizer.beta=0.5 (the file has 0.25)" in text and "None" not in text


def test_a_run_without_lr_takes_the_architectures_and_says_which(tmp_path: Path) -> None:
    steps = ["--steps", "2", "--eval-every", "0", *FAST[:4]]
    code, text = _run(["train", "--encoder", "resnet", *steps, "-o", str(tmp_path / "res")])
    assert code == 0, text
    assert "lr 0.001 (cosine" in text  # resnet's own
    assert read_config_file(tmp_path / "res" / "config.toml")["lr"] == 1e-3  # resuming keeps it
    code, text = _run(["train", *steps, "-o", str(tmp_path / "conv3")])
    assert code == 0 and f"lr {DEFAULT_LR:g} (cosine" in text, text  # conv3 names none: the default
    code, text = _run(["train", "--encoder", "resnet", "--lr", "5e-4", *steps, "-o", str(tmp_path / "set")])
    assert code == 0 and "lr 0.0005 (cosine" in text, text  # an lr the user gives wins
    assert read_config_file(tmp_path / "set" / "config.toml")["lr"] == 5e-4


def test_a_plugins_recommended_lr_is_checked_before_training() -> None:
    from vqkit.training.setup import model_lr

    model = vqkit.build_model(encoder="resnet", quantizer="vq")
    assert model_lr(model) == 1e-3 and model_lr(vqkit.build_model()) == DEFAULT_LR
    model.decoder.recommended_lr = 3e-4  # the lower of the two parts wins
    assert model_lr(model) == 3e-4
    model.encoder.recommended_lr = float("nan")
    with pytest.raises(OptionError, match=r"encoder 'resnet''s recommended_lr must be a number, got nan"):
        model_lr(model)
