"""vqkit's own image resize: separable bicubic in integer arithmetic, with numpy alone.

Pillow's ``Image.resize(..., BICUBIC)`` is not a fixed definition: which axis it resamples first has changed
between releases (an 8-bit pass rounds, so the order changes pixels and, through them, codes). This module
is the definition instead, written so that any language reproduces it bit for bit from the description in an
export's ``vqkit.json`` (``preprocessing.resize``). It is the algorithm of Pillow's ``Resample.c`` with the
order fixed: the width pass first, then the height pass.

For one axis resized from ``n_in`` to ``n_out`` samples, in IEEE-754 double precision, each operation rounded
as written (no fused multiply-add, sums taken left to right):

- ``scale = n_in / n_out``; ``filterscale = max(scale, 1)``; ``support = 2 * filterscale``;
  ``ss = 1 / filterscale``.
- For output index ``i``: ``center = (i + 0.5) * scale``; ``lo = max(trunc(center - support + 0.5), 0)``;
  ``hi = min(trunc(center + support + 0.5), n_in)``; for ``j`` in ``lo .. hi - 1`` the weight
  ``w_j = cubic((j - center + 0.5) * ss)`` where ``j - center`` is computed as ``(t + lo) - center`` with
  ``t = j - lo``; ``total = w_lo + ... + w_(hi-1)`` (left to right); ``u_j = w_j / total`` (when ``total != 0``).
- ``cubic(x)`` (a = -0.5): ``x = |x|``; ``x < 1``: ``((a + 2) * x - (a + 3)) * x * x + 1``;
  ``x < 2``: ``(((x - 5) * x + 8) * x - 4) * a``; else 0.
- Integer weights ``k_j = trunc(u_j * 2**22 + 0.5)`` for ``u_j >= 0``, ``trunc(u_j * 2**22 - 0.5)`` below 0
  (computed as ``0.5 + u * 4194304`` and ``-0.5 + u * 4194304``).
- Each output sample: ``clip((2**21 + sum_j k_j * p_j) >> 22, 0, 255)`` on the 8-bit inputs ``p_j``, with an
  arithmetic (flooring) shift; the sum is exact (integers).

A pass whose size does not change is skipped. Four-channel images are resized in premultiplied alpha as
Pillow does: before, ``c' = (c * a + 128 + ((c * a + 128) >> 8)) >> 8``; after, for ``0 < a < 255``,
``c = min(255, (255 * c') // a)`` (colour kept as is where ``a`` is 0 or 255).
"""

from __future__ import annotations

import numpy as np

PRECISION_BITS = 22
_A = -0.5


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    near = ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * _A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def coefficients(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output index its first input index ``lo`` ``[n_out]`` and its integer weights
    ``[n_out, taps]`` (zero beyond each index's own count), as the module docstring defines them."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ss = 1.0 / filterscale
    center = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    lo = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    hi = np.minimum(np.trunc(center + support + 0.5), n_in).astype(np.int64)
    count = hi - lo
    taps = int(count.max())
    weights = np.zeros((n_out, taps), dtype=np.float64)
    total = np.zeros(n_out, dtype=np.float64)
    for t in range(taps):  # one tap at a time: the total is summed left to right, as the definition says
        w = _cubic(((t + lo).astype(np.float64) - center + 0.5) * ss)
        w = np.where(t < count, w, 0.0)
        weights[:, t] = w
        total += w
    safe = np.where(total != 0.0, total, 1.0)
    u = np.where((total != 0.0)[:, None], weights / safe[:, None], weights)
    scaled = u * float(1 << PRECISION_BITS)
    k = np.where(u < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int64)
    k[np.arange(taps)[None, :] >= count[:, None]] = 0
    return lo, k


def _pass(
    img: np.ndarray, n_in: int, n_out: int, axis: int, keep: tuple[int, int], offset: int = 0
) -> np.ndarray:
    """Resample uint8 ``[H, W, C]`` along ``axis`` (1: width, 0: height) from ``n_in`` to ``n_out`` samples,
    computing only output indices ``keep[0] .. keep[1] - 1``; ``img`` holds input samples from ``offset`` on."""
    lo, k = coefficients(n_in, n_out)
    lo, k = lo[keep[0] : keep[1]] - offset, k[keep[0] : keep[1]]
    # float64 is exact here: every partial sum is an integer below 2**31 (|k| sums to < 2**23, pixels < 2**8).
    moved = np.moveaxis(img, axis, 0).astype(np.float64)  # [samples, other, C]
    weights = k.astype(np.float64)
    acc = np.full((len(lo), *moved.shape[1:]), float(1 << (PRECISION_BITS - 1)))
    for t in range(k.shape[1]):
        idx = np.clip(lo + t, 0, len(moved) - 1)  # taps past an index's count have weight 0
        acc += weights[:, t, None, None] * moved[idx]
    out = np.clip(np.floor(acc / float(1 << PRECISION_BITS)), 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def _span(n_in: int, n_out: int, keep: tuple[int, int]) -> tuple[int, int]:
    """The input indices output indices ``keep`` read: ``[first, last)``."""
    lo, k = coefficients(n_in, n_out)
    lo, k = lo[keep[0] : keep[1]], k[keep[0] : keep[1]]
    used = np.nonzero(k.any(axis=0))[0]
    last = int((lo + (used[-1] + 1 if len(used) else 1)).max())
    return int(lo.min()), min(last, n_in)


def _premultiply(img: np.ndarray) -> np.ndarray:
    wide = img.astype(np.int64)
    a = wide[..., 3:4]
    t = wide[..., :3] * a + 128
    return np.concatenate([((t >> 8) + t) >> 8, a], axis=-1).astype(np.uint8)


def _unpremultiply(img: np.ndarray) -> np.ndarray:
    wide = img.astype(np.int64)
    a = wide[..., 3:4]
    partial = (a > 0) & (a < 255)
    colour = np.where(partial, np.minimum(255, (255 * wide[..., :3]) // np.maximum(a, 1)), wide[..., :3])
    return np.concatenate([colour, a], axis=-1).astype(np.uint8)


def resize(
    img: np.ndarray, width: int, height: int, crop: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """uint8 ``[H, W, C]`` (C = 1, 3 or 4; 4 is RGBA) -> uint8 ``[height, width, C]``: width pass, then height.
    ``crop`` = ``(left, top, right, bottom)``: only that box of the result (the same pixels, computed alone)."""
    img = np.asarray(img, dtype=np.uint8)
    if img.ndim != 3:
        raise ValueError(f"resize takes [H, W, C] pixels, got shape {list(img.shape)}")
    if width < 1 or height < 1 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"cannot resize {img.shape[1]}x{img.shape[0]} pixels to {width}x{height}")
    left, top, right, bottom = crop if crop is not None else (0, 0, width, height)
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"crop {crop} lies outside {width}x{height}")
    h_in, w_in = img.shape[:2]
    alpha = img.shape[2] == 4
    if alpha:
        img = _premultiply(img)
    # Each pass is computed only where the kept box needs it: the width pass on the rows the height pass reads.
    first, last = _span(h_in, height, (top, bottom)) if h_in != height else (top, bottom)
    img = img[first:last]
    if w_in != width:
        img = _pass(img, w_in, width, 1, (left, right))
    else:
        img = img[:, left:right]
    if h_in != height:
        img = _pass(img, h_in, height, 0, (top, bottom), offset=first)
    if alpha:
        img = _unpremultiply(img)
    return np.ascontiguousarray(img)


def centre_square(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> ``[size, size, C]``: the shorter side resized to ``size`` (the other to
    ``max(size, round(side * size / shorter))``, halves to even), then the centre cropped
    (``left = (new_w - size) // 2``, ``top = (new_h - size) // 2``)."""
    h, w = img.shape[:2]
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    return resize(img, nw, nh, (left, top, left + size, top + size))
