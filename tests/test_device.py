"""Device choice on machines whose GPU cannot be used, and one process per GPU under torchrun: all on CPU,
with the driver file and CUDA's answers stood in for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import vqkit.device as device_mod
from vqkit.cli.main import cli
from vqkit.distributed import device_for_this_process
from vqkit.errors import OptionError

pytestmark = pytest.mark.usefixtures("one_thread")

DRIVER_535 = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"


@pytest.fixture
def old_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with an NVIDIA driver 535 and a PyTorch built for CUDA 13.0: CUDA does not initialise."""
    driver = tmp_path / "version"
    driver.write_text(DRIVER_535)
    monkeypatch.setattr(device_mod, "_DRIVER_FILE", driver)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_driver_version_is_read_without_cuda(old_driver: None) -> None:
    assert device_mod.nvidia_driver_version() == "535.104.05"


def test_no_driver_means_nothing_to_explain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "_DRIVER_FILE", tmp_path / "absent")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_mod.unusable_gpu_reason() is None
    assert device_mod.device_note(device_mod.resolve_device("auto")) is None


def test_auto_runs_on_the_cpu_and_says_why(old_driver: None) -> None:
    device = device_mod.resolve_device("auto")
    assert device.type == "cpu"
    note = device_mod.device_note(device)
    assert note and "535.104.05" in note and "CUDA 13.0" in note and ">= 580" in note and "cu126" in note


def test_asking_for_cuda_is_one_line_saying_why(old_driver: None) -> None:
    with pytest.raises(OptionError) as err:
        device_mod.resolve_device("cuda")
    text = str(err.value)
    assert "\n" not in text and "driver 535.104.05 is too old" in text and "whl/cu126" in text


def test_a_cpu_only_build_on_a_gpu_machine(old_driver: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in (device_mod.unusable_gpu_reason() or "")


def test_a_new_enough_driver_blames_something_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    driver = tmp_path / "version"
    driver.write_text(DRIVER_535.replace("535.104.05", "580.82.07"))
    monkeypatch.setattr(device_mod, "_DRIVER_FILE", driver)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "hides every GPU" in (device_mod.unusable_gpu_reason() or "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    reason = device_mod.unusable_gpu_reason() or ""
    assert "580.82.07" in reason and "too old" not in reason


def test_train_header_names_the_unusable_gpu(old_driver: None, tmp_path: Path) -> None:
    args = ["train", "--steps", "1", "--batch-size", "8", "--eval-images", "8", "-o", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "a GPU is present but unusable" in result.output and "535.104.05" in result.output
    result = CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "b"), "--device", "cuda"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "driver 535.104.05 is too old" in result.output


def _torchrun(monkeypatch: pytest.MonkeyPatch, local_rank: int, local_world: int, gpus: int) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(local_world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    _torchrun(monkeypatch, local_rank=1, local_world=2, gpus=2)
    assert device_for_this_process(torch.device("cuda", 0)) == torch.device("cuda", 1)
    assert device_for_this_process(torch.device("cpu")) == torch.device("cpu")  # gloo: any number


@pytest.mark.parametrize("local_rank", [0, 1])
def test_more_processes_than_gpus_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, local_rank: int) -> None:
    # Every rank says the same (rank 0 too, whose device exists): none of them reaches NCCL.
    _torchrun(monkeypatch, local_rank=local_rank, local_world=2, gpus=1)
    with pytest.raises(OptionError, match=r"2 processes .* only 1 CUDA GPU.*--nproc-per-node 1"):
        device_for_this_process(torch.device("cuda", 0))
