"""Training through the CLI and the library on mnist5k with tiny step counts."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open

import vqkit
from vqkit.cli.main import cli
from vqkit.training import TrainConfig, TrainingDiverged, train

pytestmark = pytest.mark.usefixtures("one_thread")


FAST = ["--batch-size", "16", "--eval-images", "32", "--log-every", "2", "-q"]


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.output


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return vqkit.load(path).state_dict()


def test_cli_train_writes_a_usable_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = _run(
        ["train", "--steps", "6", "--eval-every", "3", "--checkpoint-every", "3", "-o", str(out), *FAST]
    )
    assert code == 0, text
    assert "held-out   PSNR" in text and f"saved      {out / 'model.safetensors'}" in text
    for name in ("model.safetensors", "train_state.pt", "recon_000003.png", "recon_000006.png"):
        assert (out / name).is_file(), name
    with Image.open(out / "recon_000006.png") as im:  # 8 originals above their 8 reconstructions
        assert im.size == (3 * (8 * 34 + 2), 3 * (2 * 34 + 2))  # enlarged 3x: 32-pixel tiles become 96
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [2, 3, 4, 6]
    evals = [r for r in records if r.get("event") == "eval"]
    assert [e["step"] for e in evals] == [3, 6] and evals[-1]["split"] == "test" and evals[-1]["images"] == 32
    model = vqkit.load(out / "model.safetensors")
    assert model.spec.channels == 1 and model.spec.image_size == 32  # followed the data
    # a second run into the same folder would overwrite it: refused
    code, text = _run(["train", "--steps", "2", "-o", str(out), *FAST])
    assert code == 1 and "already holds a run" in text and "--resume" in text


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    common = dict(steps=10, batch_size=16, log_every=5, eval_every=0, eval_images=16, checkpoint_every=5)
    full = train(TrainConfig(**common, out=str(tmp_path / "full"), progress=False))

    def ctrl_c_at_step_4(step: int, model: object) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; the loop checkpoints and stops

    cut = train(TrainConfig(**common, out=str(tmp_path / "cut"), progress=False), callback=ctrl_c_at_step_4)
    assert cut.interrupted and cut.step == 4
    model_file = tmp_path / "cut" / "model.safetensors"
    code, text = _run(["train", "--model", str(model_file), "--resume", "-q"])
    assert code == 0, text
    resumed, reference = _weights(model_file), _weights(full.model_path)
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    with safe_open(str(model_file), "pt") as f:
        assert f.metadata()["vqkit.train.step"] == "10"


def test_an_interrupted_gan_run_resumes_to_the_weights_of_an_unbroken_one(tmp_path: Path) -> None:
    # The discriminator is built on the first batch the loss sees: at step 0 of an unbroken run, at the
    # resumed step of a resumed one. Dead-code restarts every step make any shift in the random stream show.
    common = dict(
        steps=8,
        batch_size=16,
        log_every=4,
        eval_every=0,
        eval_images=16,
        checkpoint_every=4,
        loss="mse+patchgan:0.1",
        loss_options={"patchgan": {"start": 1, "ramp": 0, "width": 4, "layers": 2}},
        model={
            "encoder_options": {"widths": [8, 8, 8]},
            "decoder_options": {"widths": [8, 8, 8]},
            "latent_dim": 4,
            "codebook_size": 32,
            "quantizer_options": {"restart_after": 2},
        },
        progress=False,
    )
    full = train(TrainConfig(**common, out=str(tmp_path / "full")))

    def ctrl_c_at_step_3(step: int, model: object) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cut = train(TrainConfig(**common, out=str(tmp_path / "cut")), callback=ctrl_c_at_step_3)
    assert cut.interrupted and cut.step == 3
    model_file = tmp_path / "cut" / "model.safetensors"
    code, text = _run(["train", "--model", str(model_file), "--resume", "-q"])
    assert code == 0, text
    resumed, reference = _weights(model_file), _weights(full.model_path)
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    states = [
        torch.load(p / "train_state.pt", weights_only=True) for p in (tmp_path / "full", tmp_path / "cut")
    ]
    discriminators = [s["objectives"]["patchgan"]["discriminator"] for s in states]
    for key in discriminators[0]:
        assert torch.equal(discriminators[0][key], discriminators[1][key]), key


def test_resume_refuses_another_model_and_a_finished_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = _run(["train", "--steps", "2", "--eval-every", "0", "-o", str(out), *FAST])
    assert code == 0, text
    model = str(out / "model.safetensors")
    code, text = _run(["train", "--model", model, "--resume", "--latent-dim", "8", "-q"])
    assert code == 1 and "different model" in text and "latent dim 8" in text
    code, text = _run(["train", "--model", model, "--resume", "-q"])
    assert code == 1 and "already trained 2 steps" in text
    (out / "train_state.pt").unlink()
    code, text = _run(["train", "--model", model, "--resume", "-q"])
    assert code == 1 and "cannot be resumed" in text


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    def poison(step: int, model: torch.nn.Module) -> None:
        if step == 3:
            with torch.no_grad():
                next(model.decoder.parameters()).fill_(float("nan"))

    config = TrainConfig(
        steps=8,
        batch_size=16,
        log_every=1,
        eval_every=0,
        eval_images=16,
        checkpoint_every=2,
        out=str(tmp_path / "run"),
        progress=False,
    )
    with pytest.raises(TrainingDiverged, match=r"NaN or infinite.*last good checkpoint \(step 2\)"):
        train(config, callback=poison)
    weights = _weights(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as f:
        assert f.metadata()["vqkit.train.step"] == "2"


def test_a_run_that_stopped_before_its_first_checkpoint_leaves_a_folder_to_start_again(
    tmp_path: Path,
) -> None:
    def poison(step: int, model: torch.nn.Module) -> None:
        if step == 1:
            with torch.no_grad():
                next(model.decoder.parameters()).fill_(float("nan"))

    out = tmp_path / "run"
    common = dict(steps=4, batch_size=16, log_every=1, eval_every=0, eval_images=16, checkpoint_every=4)
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        train(TrainConfig(**common, out=str(out), progress=False), callback=poison)
    assert not (out / "model.safetensors").exists() and (out / "metrics.jsonl").exists()
    code, text = _run(["train", "--model", str(out / "model.safetensors"), "--resume", "-q"])
    assert code == 1 and text.strip().count("\n") == 0, text
    again = f"vqkit train --config {out / 'config.toml'} -o {out}"
    assert "nothing to resume" in text and again in text, text
    code, text = _run(again.split()[1:] + ["-q"])  # what the message says works
    assert code == 0, text
    assert (out / "model.safetensors").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = [r["event"] for r in records if "event" in r]
    assert events.count("start") == 1 and "diverged" not in events  # the failed start is gone
    # a run that could only fail at its final evaluation is refused before it starts
    code, text = _run(["train", "--eval-images", "0", "-o", str(tmp_path / "none"), "-q"])
    assert code == 1 and "--eval-images must be at least 1" in text and not (tmp_path / "none").exists()
    # a folder whose metrics.jsonl is not a run's is still not ours to start over
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("my own notes\n")
    code, text = _run(["train", "--steps", "2", "-o", str(other), *FAST])
    assert code == 1 and "already holds a run" in text
    assert (other / "metrics.jsonl").read_text() == "my own notes\n"


def test_new_model_follows_a_folder_of_rgb_images(tmp_path: Path) -> None:
    data = tmp_path / "images"
    data.mkdir()
    for i in range(12):
        Image.new("RGB", (16, 16), (i * 20, 100, 200 - i * 10)).save(data / f"{i}.png")
    out = tmp_path / "run"
    code, text = _run(
        [
            "train",
            "--data",
            str(data),
            "--steps",
            "2",
            "--precision",
            "bf16",
            "--eval-every",
            "0",
            "-o",
            str(out),
            *FAST,
        ]
    )
    assert code == 0, text
    spec = vqkit.load(out / "model.safetensors").spec
    assert (spec.channels, spec.image_size) == (3, 16)


def test_user_mistakes_are_one_clear_line(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        code, text = _run(["train", "--device", "cuda", "--steps", "1", "-o", str(tmp_path / "a"), *FAST])
        assert code == 1 and "no CUDA GPU" in text
    code, text = _run(["train", "--device", "tpu", "--steps", "1", *FAST])
    assert code == 1 and ("unknown device" in text or "unsupported device" in text)
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    code, text = _run(["train", "--steps", "1", "-o", str(blocker / "run"), *FAST])
    assert code == 1 and "cannot write to the run folder" in text
    code, text = _run(["train", "--resume", *FAST])
    assert code == 1 and "--resume needs --model" in text
    code, text = _run(["train", "--data", str(tmp_path / "nothing-here"), *FAST])
    assert code == 1 and "no data source" in text


def test_build_and_train_give_the_same_model(tmp_path: Path) -> None:
    """The same options give the same model through vqkit.build_model, `vqkit build` and `vqkit train`."""
    built = tmp_path / "built.safetensors"
    code, text = _run(["build", "--channels", "1", "--image-size", "32", "-o", str(built)])
    assert code == 0, text
    code, text = _run(["train", "--steps", "1", "--eval-every", "0", "-o", str(tmp_path / "run"), *FAST])
    assert code == 0, text
    specs = [
        vqkit.load(built).spec,
        vqkit.load(tmp_path / "run" / "model.safetensors").spec,
        vqkit.build_model(channels=1, image_size=32).spec,
    ]
    for part in ("encoder", "quantizer", "decoder"):
        assert len({getattr(s, part) for s in specs}) == 1, part
        options = [json.dumps(getattr(s, f"{part}_options"), sort_keys=True) for s in specs]
        assert len(set(options)) == 1, (part, options)
    assert len({(s.latent_dim, s.codebook_size) for s in specs}) == 1


def test_misspelt_names_fail_before_any_image_is_read(tmp_path: Path) -> None:
    """Every image here is unreadable: a run that touched the data would fail on them, not on the name."""
    data = tmp_path / "data"
    data.mkdir()
    for k in range(50):
        (data / f"{k}.png").write_bytes(b"not a png")
    base = ["train", "--data", str(data), "--steps", "1", "-o", str(tmp_path / "run"), "-q"]
    for extra, expected in (
        (["--quantizer", "vqq"], "unknown quantizer 'vqq'"),
        (["--encoder", "conv33"], "unknown encoder 'conv33'"),
        (["--set", "quantizer.betaa=0.5"], "has no option 'betaa'"),
        (["--loss", "mse+lpipz"], "lpipz"),
        (["--loss", "ssim", "--set", "loss.ssim.nope=1"], "has no option 'nope'"),
    ):
        code, text = _run([*base, *extra])
        assert code != 0 and expected in text and "cannot read" not in text, (extra, text)
        assert not (tmp_path / "run").exists()
    code, text = _run(base)  # the names are fine: now the data's problem is the one reported
    assert code != 0 and "cannot read image" in text, text
