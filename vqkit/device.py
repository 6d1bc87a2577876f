"""Choosing the device and precision: ``auto|cpu|cuda|cuda:N|mps``, fp32 or bf16 autocast."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from vqkit import checks
from vqkit.errors import OptionError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; anything asked for that is not there is a clear error
    (an :class:`OptionError` about the parameter ``device``)."""
    name = checks.device_name("auto" if name is None or name == "" else name)
    if name == "auto":
        if torch.cuda.is_available():
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
        if not torch.cuda.is_available():
            raise OptionError(
                "device cuda: no CUDA GPU is visible to PyTorch here; use cpu or auto", param="device"
            )
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
