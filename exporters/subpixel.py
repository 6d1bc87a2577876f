"""Rewrite transposed convolutions as sub-pixel convolutions for export.

ONNX Runtime's CPU ConvTranspose runs image by image (a GEMM, then a single-threaded col2im scatter), which
can scale poorly with threads at large batch. A ConvTranspose2d whose ``kernel - 2*padding == stride``
computes, for each of the stride x stride output phases, an ordinary convolution of the input; stacking the
phases as output channels gives one Conv2d followed by PixelShuffle (ONNX DepthToSpace, CRD order). The map is
exactly the same (only the order of float additions differs); the exporter's parity check proves it on real
images. The price: a (2q+1)^2 kernel holds zeros for taps a phase does not use (9 taps for 4 used with the
common 4x4 stride-2 layer), so it does 2.25x the multiply-adds; on one thread that made it slower than
ConvTranspose (benchmarks/onnx_speed.py), hence opt-in: ``vqkit export --set subpixel=true``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def _taps(k: int, s: int, p: int) -> int | None:
    """Half-width q of the conv kernel (2q+1 taps) that covers every phase, or None if the layer doesn't fit."""
    if k - 2 * p != s:
        return None
    d_min = min(math.ceil((r + p - k + 1) / s) for r in range(s))
    d_max = max((r + p) // s for r in range(s))
    return d_max if d_min == -d_max else None


def subpixel_equivalent(layer: nn.ConvTranspose2d) -> nn.Module | None:
    """An exactly equivalent Conv2d (+ PixelShuffle) for ``layer``, or None when it has no such form here
    (groups, dilation, output padding, non-square settings, or ``kernel - 2*padding != stride``)."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    if (kh, sh, ph) != (kw, sw, pw) or layer.groups != 1 or tuple(layer.dilation) != (1, 1):
        return None
    if (
        tuple(layer.output_padding) != (0, 0)
        or layer.padding_mode != "zeros"
        or isinstance(layer.padding, str)
    ):
        return None
    k, s, p = kh, sh, ph
    q = _taps(k, s, p)
    if q is None:
        return None
    w = layer.weight.detach()  # [C_in, C_out, k, k]
    c_in, c_out = w.shape[:2]
    t = 2 * q + 1
    conv = nn.Conv2d(c_in, c_out * s * s, t, padding=q, bias=layer.bias is not None)
    v = torch.zeros(c_out, s, s, c_in, t, t, dtype=w.dtype)
    for ry in range(s):
        for ty in range(t):
            ky = ry + p - s * (ty - q)  # kernel row that output phase ry takes from input row i + ty - q
            if not 0 <= ky < k:
                continue
            for rx in range(s):
                for tx in range(t):
                    kx = rx + p - s * (tx - q)
                    if 0 <= kx < k:
                        v[:, ry, rx, :, ty, tx] = w[:, :, ky, kx].t()
    with torch.no_grad():
        conv.weight.copy_(v.reshape(c_out * s * s, c_in, t, t))
        if layer.bias is not None:
            conv.bias.copy_(layer.bias.detach().repeat_interleave(s * s))
    conv.to(device=w.device)
    return conv if s == 1 else nn.Sequential(conv, nn.PixelShuffle(s))


def rewrite_conv_transpose(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``module`` with every rewritable ConvTranspose2d replaced; and how many were replaced."""
    out = copy.deepcopy(module)
    count = 0
    targets = [(name, m) for name, m in out.named_modules() if isinstance(m, nn.ConvTranspose2d)]
    for name, layer in targets:
        new = subpixel_equivalent(layer)
        if new is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        if not name:  # the module itself is a ConvTranspose2d
            return new, 1
        setattr(parent, attr, new)
        count += 1
    return out, count
