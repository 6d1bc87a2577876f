"""Pieces every data source shares: the error type and converting uint8 arrays to a model's channels/size."""

from __future__ import annotations

import warnings

import numpy as np

from vqkit.errors import VQKitError

SPLITS = ("train", "test", "all")


class DataError(VQKitError):
    """A data source the user named cannot give the images asked for (missing, empty, corrupt, too small)."""


class EmptySplitError(DataError):
    """The data hold no image of the asked split (a folder too small to hold any out): the one case where a run
    evaluates on training images instead, and says so. Any other problem with the held-out images is an error."""


class DataWarning(UserWarning):
    """Something was left out of the data (``skip_bad``), or the data and the run do not fit well; the CLI
    prints it as one ``Warning:`` line."""


def warn_if_batch_exceeds(images: int, batch_size: int, what: str) -> None:
    """A batch bigger than the whole training set repeats images within every step (and usually means a
    mistyped batch size): allowed, but said once."""
    if batch_size > images:
        warnings.warn(
            f"batch_size {batch_size} is larger than the {images} training images of {what}: every step "
            "repeats images within its batch (a smaller batch trains on the same data in cheaper steps)",
            DataWarning,
            stacklevel=3,
        )


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> ``[N, channels, H, W]``: grey is repeated to RGB, RGB becomes grey with the
    ITU-R 601 luma weights (what Pillow's ``convert("L")`` uses), an alpha channel is dropped or added opaque."""
    c = images.shape[1]
    if c == channels:
        return images
    if channels not in (1, 3, 4):
        raise DataError(f"cannot convert images to {channels} channels (use 1, 3 or 4)")
    rgb = images[:, :3] if c >= 3 else np.repeat(images[:, :1], 3, axis=1)
    if channels == 1:
        r, g, b = (rgb[:, i].astype(np.uint32) for i in range(3))
        grey = (r * 299 + g * 587 + b * 114 + 500) // 1000
        return grey.astype(np.uint8)[:, None]
    if channels == 3:
        return np.ascontiguousarray(rgb)
    alpha = images[:, 3:4] if c == 4 else np.full_like(rgb[:, :1], 255)
    return np.ascontiguousarray(np.concatenate([rgb, alpha], axis=1))


def resize_square(images: np.ndarray, size: int, what: str) -> np.ndarray:
    """Resize (shorter side to ``size``, bicubic) and centre-crop uint8 ``[N, C, H, W]`` images to
    ``size x size``, the same rule as :func:`vqkit.images.read_image`. Upscaling is refused: a model that
    wants bigger images than the data has would learn from blur."""
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    if min(h, w) < size:
        raise DataError(
            f"{what} has {h}x{w} images, smaller than the model's {size}x{size}; "
            f"use --image-size {min(h, w)} or less (or a model for smaller images)"
        )
    from PIL import Image

    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for i in range(n):
        for ch in range(c):  # per channel in mode "L": works for any channel count
            im = Image.fromarray(images[i, ch]).resize((nw, nh), Image.BICUBIC)
            out[i, ch] = np.asarray(im.crop((left, top, left + size, top + size)))
    return out


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad ``[N, C, h, w]`` images on every side to ``size x size`` (MNIST's 28x28 -> 32x32, like mnist5k)."""
    n, c, h, w = images.shape
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, c, size, size), dtype=np.uint8)
    out[:, :, top : top + h, left : left + w] = images
    return out
