"""The same augmentations on a batch already in memory (and on the training device): one affine resampling
for the whole batch instead of a Pillow call per image.

The draws are :meth:`Augment.draw`'s, seeded by (seed, epoch, sample index), so an in-memory run is as
reproducible and resumable as a streamed one. The crops come from the stored square images (the streamed
path crops the original files before resizing, so the two paths see slightly different pixels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vqkit.data.augment import Augment


def augment_batch(
    x: torch.Tensor, samples: Sequence[tuple[int, int]], augment: Augment, seed: int
) -> torch.Tensor:
    """Float images ``[B, C, S, S]`` -> the same, each cropped (``augment.scale``), resized back to ``S x S``
    (bilinear) and flipped as drawn for its ``(epoch, index)`` in ``samples``."""
    if not augment.active:
        return x
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, dtype=torch.float32)
    for k, (epoch, index) in enumerate(samples):
        (left, top, right, bottom), flip = augment.draw(seed, epoch, index, w, h)
        sx = (right - left) / w
        # an output pixel u in [-1, 1] reads the input at u * (crop width / W) + (crop centre, normalised)
        theta[k, 0, 0] = -sx if flip else sx
        theta[k, 0, 2] = (left + right) / w - 1
        theta[k, 1, 1] = (bottom - top) / h
        theta[k, 1, 2] = (top + bottom) / h - 1
    if not augment.crops:  # flips only: exact pixels, no resampling
        flips = theta[:, 0, 0] < 0
        return torch.where(flips.to(x.device)[:, None, None, None], x.flip(-1), x)
    grid = F.affine_grid(theta.to(x.device), [b, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(
        x.float(), grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.to(x.dtype)
