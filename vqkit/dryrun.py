"""The build's dry run: one blank image through encoder, quantizer (training path, ``quantize`` and
``dequantize``) and decoder, so that a component breaking its contract fails at build, naming itself, rather
than deep inside training or export."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vqkit.errors import ShapeError
from vqkit.spec import ModelSpec


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextmanager
def _eval(*modules: nn.Module) -> Iterator[None]:
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def _call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one component call; an exception becomes one line naming the component."""
    try:
        return fn(*args)
    except ShapeError:
        raise
    except Exception as exc:
        shapes = ", ".join(str(list(a.shape)) for a in args if isinstance(a, torch.Tensor))
        raise ShapeError(f"{what} failed on {shapes}: {_first_line(exc)}") from exc


def _check_forward(quantizer: nn.Module, z: torch.Tensor, name: str, codes_shape: list[int]) -> None:
    out = _call(f"quantizer {name!r}", quantizer, z)
    for attr in ("z_q", "indices", "loss"):
        if not isinstance(getattr(out, attr, None), torch.Tensor):
            raise ShapeError(f"quantizer {name!r} returned {type(out).__name__} without a tensor {attr!r}")
    if list(out.z_q.shape) != list(z.shape):
        raise ShapeError(
            f"quantizer {name!r} returned z_q {list(out.z_q.shape)} for latents {list(z.shape)}; "
            f"the contract wants z_q shaped like its input"
        )
    if list(out.indices.shape) != codes_shape or out.loss.numel() != 1:
        raise ShapeError(
            f"quantizer {name!r} returned indices {list(out.indices.shape)} and a loss of {out.loss.numel()} "
            f"values; the contract wants indices {codes_shape} and a scalar loss"
        )


def _check_quantizer(quantizer: nn.Module, z: torch.Tensor, name: str) -> torch.Tensor:
    """Run the quantizer's entry points on latents ``z`` and check what each returns; gives the quantized
    latents. The training path (``forward``) is checked when the quantizer has one: an inference-only
    quantizer (``quantize``/``dequantize`` alone) can still be built and exported."""
    b, _, h, w = z.shape
    s = int(getattr(quantizer, "num_codebooks", 1))
    codes_shape = [b, h, w] if s == 1 else [b, h, w, s]
    if type(quantizer).forward is not nn.Module.forward:
        _check_forward(quantizer, z, name, codes_shape)
    codes = _call(f"quantizer {name!r}.quantize", quantizer.quantize, z)
    if (
        not isinstance(codes, torch.Tensor)
        or list(codes.shape) != codes_shape
        or codes.dtype.is_floating_point
    ):
        got = (
            f"{list(codes.shape)} {codes.dtype}" if isinstance(codes, torch.Tensor) else type(codes).__name__
        )
        raise ShapeError(
            f"quantizer {name!r}.quantize returned {got}; the contract wants integer codes {codes_shape}"
        )
    back = _call(f"quantizer {name!r}.dequantize", quantizer.dequantize, codes.long())
    if not isinstance(back, torch.Tensor) or list(back.shape) != list(z.shape):
        got = list(back.shape) if isinstance(back, torch.Tensor) else type(back).__name__
        raise ShapeError(
            f"quantizer {name!r}.dequantize returned {got} for codes {codes_shape}; the contract wants {list(z.shape)}"
        )
    return back


def dry_run(encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module, spec: ModelSpec) -> None:
    """Push one blank ``image_size`` image through the model; a mismatched part is one clear ShapeError."""
    s, c, d = spec.image_size, spec.channels, spec.latent_dim
    f = int(encoder.downsample)
    with _eval(encoder, quantizer, decoder):
        z = _call(f"encoder {spec.encoder!r}", encoder, torch.zeros(1, c, s, s))
        if tuple(z.shape) != (1, d, s // f, s // f):
            raise ShapeError(
                f"encoder {spec.encoder!r} gave latents {list(z.shape)} for a {s}x{s} image; "
                f"the contract wants [1, {d}, {s // f}, {s // f}]"
            )
        z_q = _check_quantizer(quantizer, z, spec.quantizer)
        y = _call(f"decoder {spec.decoder!r}", decoder, z_q)
        if tuple(y.shape) != (1, c, s, s):
            raise ShapeError(
                f"decoder {spec.decoder!r} turned latents {list(z.shape)} into {list(y.shape)}; "
                f"the model needs images [1, {c}, {s}, {s}]"
            )
