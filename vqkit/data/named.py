"""Datasets by name: the built-in ``mnist5k`` (ships inside the package, no download) and torchvision sets
(``mnist``, ``fashion-mnist``, ``cifar10``, ...; downloaded only when asked). They come as arrays."""

from __future__ import annotations

import difflib
import os
from importlib import resources

import numpy as np

from vqkit.data.common import DataError, convert_channels, pad_to, resize_square
from vqkit.data.torchvision_sets import DATASETS as TORCHVISION_DATASETS
from vqkit.data.torchvision_sets import load_torchvision

BUILTIN = ("mnist5k",)


def load_mnist5k(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The built-in MNIST subset: uint8 images ``[N, 1, 32, 32]`` (28x28 digits padded by 2) and labels ``[N]``.

    ``split`` is ``"train"`` (4,500 images) or ``"test"`` (500, held out; fixed split). See ``MNIST5K.md``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with (
        resources.files("vqkit.data").joinpath("mnist5k.npz").open("rb") as f,
        np.load(f, allow_pickle=False) as z,
    ):
        return z[f"{split}_images"], z[f"{split}_labels"]


def source_names() -> list[str]:
    """Dataset names ``load_images`` knows (besides folders)."""
    return [*BUILTIN, *TORCHVISION_DATASETS]


def _fit(images: np.ndarray, channels: int | None, image_size: int | None, what: str) -> np.ndarray:
    """Bring a dataset's own array to the asked channels and size (MNIST-like 28x28 digits are zero-padded
    to 32x32 when no other size is asked, as in mnist5k, so three stride-2 layers give a 4x4 grid)."""
    if channels is not None:
        images = convert_channels(images, channels)
    h, w = images.shape[-2:]
    if (h, w) == (28, 28) and image_size in (None, 32):
        return pad_to(images, 32)
    if image_size is not None:
        images = resize_square(images, image_size, what)
    elif h != w:
        images = resize_square(images, min(h, w), what)
    return np.ascontiguousarray(images)


def load_named(
    name: str,
    split: str,
    channels: int | None,
    image_size: int | None,
    download: bool = False,
    data_root: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` of a dataset by name (``split`` checked by the caller)."""
    if name.lower() in BUILTIN:
        parts = ["train", "test"] if split == "all" else [split]
        images = np.concatenate([load_mnist5k(s)[0] for s in parts])
        return _fit(images, channels, image_size, "mnist5k")
    if name.lower() in TORCHVISION_DATASETS:
        images = load_torchvision(name.lower(), split, data_root, download)
        return _fit(images, channels, image_size, name.lower())
    close = difflib.get_close_matches(name.lower(), source_names(), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(
        f"no data source {name!r}: not a folder, nor tar shards, nor a dataset name.{hint} "
        f"Datasets: {', '.join(source_names())} (only mnist5k ships with vqkit; the others need --download once)."
    )
