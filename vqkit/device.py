"""Choosing the device and precision: ``auto|cpu|cuda|cuda:N|mps``, fp32 or bf16 autocast."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from vqkit import checks
from vqkit.errors import OptionError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; anything asked for that is not there is a clear error
    (an :class:`OptionError` about the parameter ``device``)."""
    name = checks.device_name("auto" if name is None or name == "" else name)
    if name == "auto":
        if _cuda_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise OptionError(
            f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps", param="device"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not _cuda_available():
            why = unusable_gpu_reason() or "no CUDA GPU is visible to PyTorch here"
            raise OptionError(f"device cuda: {why}; use cpu or auto", param="device")
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise OptionError(
                f"device {name}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})", param="device"
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise OptionError(
                "device mps: Apple's MPS backend is not available here; use cpu or auto", param="device"
            )
        return device
    raise OptionError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps", param="device")


# The oldest Linux driver each CUDA major version runs on (NVIDIA's CUDA compatibility table; minor-version
# compatibility lets every 12.x build run on a 525 driver, every 13.x on 580).
MIN_DRIVER = {11: (450, 80), 12: (525, 60), 13: (580, 65)}
# What to install for an older driver: a PyTorch CUDA 12 build runs on every driver from 525 (pick the cu12x
# index pytorch.org lists for the torch version at hand; cu126 is one). Older drivers: only an update helps.
WHEEL_FOR_DRIVER = ((580, "cu130"), (525, "cu126"))

_DRIVER_FILE = Path("/proc/driver/nvidia/version")
_cuda_warning: str | None = None


def _cuda_available() -> bool:
    """``torch.cuda.is_available()``, keeping the warning torch gives when a driver is there but unusable."""
    global _cuda_warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = torch.cuda.is_available()
    for w in caught:
        if "CUDA initialization" in str(w.message) or "driver" in str(w.message).lower():
            _cuda_warning = str(w.message).strip().splitlines()[0]
    return ok


def nvidia_driver_version() -> str | None:
    """The loaded NVIDIA kernel driver's version (``"535.104.05"``), or None where there is none (or it is
    not Linux): read from ``/proc``, which needs neither CUDA nor a working PyTorch build."""
    try:
        text = _DRIVER_FILE.read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return found.group(1) if found else None


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def unusable_gpu_reason() -> str | None:
    """Why an NVIDIA GPU that this machine has cannot be used by this PyTorch, in one clause; None when there
    is no NVIDIA driver at all (nothing to explain) or CUDA works."""
    driver = nvidia_driver_version()
    if driver is None or _cuda_available():
        return None
    if torch.version.cuda is None:
        return (
            f"this PyTorch ({torch.__version__}) is a CPU-only build, though an NVIDIA driver {driver} is "
            "loaded; install a CUDA build of torch"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    cuda_major = int(torch.version.cuda.split(".")[0])
    need = MIN_DRIVER.get(cuda_major)
    if need is not None and _numbers(driver)[:2] < need:
        wheel = next((tag for floor, tag in WHEEL_FOR_DRIVER if _numbers(driver)[0] >= floor), None)
        fix = (
            f"update the driver, or install a torch built for it: pip install torch --index-url "
            f"https://download.pytorch.org/whl/{wheel} (or another cu12x index pytorch.org lists)"
            if wheel
            else "update the driver"
        )
        return (
            f"the NVIDIA driver {driver} is too old for this PyTorch {torch.__version__} (built for CUDA "
            f"{torch.version.cuda}, which needs driver >= {need[0]}.{need[1]}); {fix}"
        )
    detail = f": {_cuda_warning}" if _cuda_warning else ""
    return f"an NVIDIA driver {driver} is loaded but CUDA failed to initialise{detail}"


def device_note(device: torch.device) -> str | None:
    """A line for a run's header when ``auto`` settled on the CPU though a GPU is there but unusable."""
    if device.type == "cuda":
        return None
    reason = unusable_gpu_reason()
    return f"a GPU is present but unusable, so this runs on {device.type}: {reason}" if reason else None


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise OptionError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp32")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast for the model's convolutions and matmuls. Quantizer distances stay fp32 (vqkit.codebook
    turns autocast off for them) and the reconstruction loss is taken in fp32 (VQVAE.forward)."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def use_channels_last(choice: bool | None, device: torch.device) -> bool:
    """Channels-last pays off for convolutions on CUDA (cuDNN's NHWC kernels, tensor cores) and on CPU
    (oneDNN's NHWC convolutions: 1.08x the images/s at batch 128 and 1.20x at batch 1024 for the conv3
    architecture on 2 idle cores, ``benchmarks/train_speed.py``); elsewhere (mps) only when asked."""
    return device.type in ("cuda", "cpu") if choice is None else bool(choice)
