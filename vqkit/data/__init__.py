"""Image data for vqkit.

Sources: the built-in ``mnist5k`` (ships inside the package, no download), a folder of images (recursive),
tar shards (``vqkit.data.pack.pack_folder`` writes them), or a torchvision dataset by name (``mnist``,
``fashion-mnist``, ``cifar10``, ...; downloaded only when asked). Every command reads them the same way:

- ``vqkit.data.imageset.open_images``: one split, in order, a batch at a time (a folder or shards is never
  held whole); ``load_images`` is its whole split as one uint8 array ``[N, C, H, W]``.
- training: ``vqkit.training.data`` holds the decoded images in memory when they fit the memory budget, else
  streams them (``vqkit.data.stream``, decoding worker processes); both in ``vqkit.data.order``'s order, with
  ``vqkit.data.augment``'s one augmentation function, so the residency changes speed only.

uint8 images are channels first, ``[N, C, H, W]``, as torchvision's. ``vqkit.data.stream`` and
``vqkit.data.order`` import torch; the rest of this package does not, so the decoding workers stay small.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vqkit import checks
from vqkit.data.common import SPLITS, DataError, DataWarning, check_split
from vqkit.data.folder import HOLDOUT_EVERY
from vqkit.data.imageset import open_images, streamable
from vqkit.data.named import BUILTIN, load_mnist5k, load_named, source_names
from vqkit.data.torchvision_sets import DATASETS as TORCHVISION_DATASETS
from vqkit.data.torchvision_sets import default_root

__all__ = [
    "BUILTIN",
    "HOLDOUT_EVERY",
    "SPLITS",
    "TORCHVISION_DATASETS",
    "DataError",
    "DataWarning",
    "default_root",
    "load_images",
    "load_mnist5k",
    "source_names",
]


def load_images(
    source: str,
    *,
    split: str = "train",
    channels: int | None = None,
    image_size: int | None = None,
    download: bool = False,
    skip_bad: bool = False,
    data_root: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Images of a data source as uint8 ``[N, C, H, W]`` (values 0..255).

    ``source``: ``"mnist5k"``, a folder of images, or a torchvision dataset name (``vqkit.data.source_names()``).
    ``split``: ``"train"``, ``"test"`` (held out) or ``"all"``. For a folder, ``test`` is a fixed ~1/10 of
    the files chosen by a hash of each path (see ``vqkit.data.folder``). ``channels``/``image_size`` None keep
    the data's own (a folder of mixed sizes needs ``image_size``); images are converted, resized and
    centre-cropped to them, never upscaled. ``download`` fetches a torchvision dataset into ``data_root``
    (default ``~/.cache/vqkit`` or ``$VQKIT_DATA``). ``skip_bad`` leaves out unreadable images of a folder
    (with one :class:`DataWarning` giving the count) instead of failing.
    Every problem a user can cause raises :class:`DataError` (a ``VQKitError``) with one clear message.
    """
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise DataError(f"source must be a dataset name or a folder, got {checks.shown(source)}")
    check_split(split)
    checks.optional_integer(channels, "channels")
    checks.optional_integer(image_size, "image_size")
    checks.boolean(download, "download")
    checks.boolean(skip_bad, "skip_bad")
    if channels is not None and channels not in (1, 3, 4):
        raise DataError(f"cannot convert images to {channels} channels (use 1, 3 or 4)")
    if image_size is not None and image_size < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    name = str(source)
    path = Path(name).expanduser()
    if streamable(name):  # a folder or tar shards: read as every command reads them
        found = open_images(name, split=split, channels=channels, image_size=image_size, skip_bad=skip_bad)
        return found.read()
    if path.exists():
        raise DataError(
            f"{path} is a file; give a folder of images or tar shards, or a dataset name like mnist5k"
        )
    return load_named(name, split, channels, image_size, download, data_root)
