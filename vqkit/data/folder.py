"""A folder of image files (recursive) as one uint8 array.

Held-out split: a file belongs to ``test`` when the CRC-32 of its path relative to the folder (with ``/``) is
divisible by 10, so about one image in ten is held out, the choice never depends on the order or number of the
other files, and adding images to the folder never moves an old one between splits.
"""

from __future__ import annotations

import os
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vqkit.data.common import DataError, DataWarning, EmptySplitError
from vqkit.errors import VQKitError
from vqkit.images import IMAGE_SUFFIXES, find_images, read_image

HOLDOUT_EVERY = 10
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La")


def is_held_out(relative: str) -> bool:
    """Whether the file at this folder-relative path (``/``-separated) is in the ``test`` split. The path's
    bytes are the name's bytes on disk, UTF-8 or not (a name that is not UTF-8 comes as lone surrogates)."""
    return zlib.crc32(relative.encode("utf-8", "surrogateescape")) % HOLDOUT_EVERY == 0


def split_files(folder: Path, files: list[Path], split: str) -> list[Path]:
    if split == "all":
        return files
    want_test = split == "test"
    chosen = [p for p in files if is_held_out(p.relative_to(folder).as_posix()) == want_test]
    if not chosen:
        raise EmptySplitError(
            f"{folder} has {len(files)} image(s) and none falls in its {split!r} split (about 1 in "
            f"{HOLDOUT_EVERY} is held out for 'test'); use split 'all' (--split all) for a folder this small"
        )
    return chosen


def _header(path: Path) -> tuple[tuple[int, int], str]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except FileNotFoundError:
        raise VQKitError(f"image file vanished while reading: {path}") from None
    except Exception as exc:  # Pillow raises many types for bad files
        raise VQKitError(f"cannot read image {path}: {exc}") from exc


def load_folder(
    folder: str | os.PathLike[str],
    *,
    split: str = "train",
    channels: int | None = None,
    image_size: int | None = None,
    skip_bad: bool = False,
) -> np.ndarray:
    """Every image under ``folder`` in ``split`` -> uint8 ``[N, C, S, S]``.

    ``channels`` None: 1 if every image is greyscale, else 3. ``image_size`` None: the images' own size when
    they all share one (non-square ones are centre-cropped), else an error asking for one. Images are resized
    (shorter side) and centre-cropped to ``image_size``; one smaller than that is an error. A file that cannot
    be read is an error naming it, or, with ``skip_bad``, left out and counted in one :class:`DataWarning`.
    """
    root = Path(folder)
    files = find_images(root)
    if not files:
        raise DataError(f"no images under {root} (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
    files = split_files(root, files, split)

    bad: list[str] = []

    def reject(path: Path, reason: str) -> None:
        if not skip_bad:
            raise DataError(f"{reason} (pass --skip-bad to leave out such files)")
        bad.append(f"{path.relative_to(root)}: {reason}")

    headers: list[tuple[Path, tuple[int, int], str]] = []
    for p in files:
        try:
            size, mode = _header(p)
        except VQKitError as exc:
            reject(p, str(exc))
            continue
        headers.append((p, size, mode))
    if not headers:
        raise DataError(f"none of the {len(files)} image(s) under {root} could be read: {bad[0]}")

    if channels is None:
        channels = 1 if all(mode in GREY_MODES for _, _, mode in headers) else 3
    if image_size is None:
        sizes = {size for _, size, _ in headers}
        if len(sizes) > 1:
            (a, sa), (b, sb) = _two_sizes(headers)
            raise DataError(
                f"images under {root} differ in size ({a.name} is {sa[0]}x{sa[1]}, {b.name} is {sb[0]}x{sb[1]}); "
                "give an image size (--image-size) to resize and crop them to"
            )
        image_size = min(next(iter(sizes)))

    usable = []
    for p, (w, h), _ in headers:
        if min(w, h) < image_size:
            reject(p, f"image {p} is {w}x{h}, smaller than the model's {image_size}x{image_size}")
        else:
            usable.append(p)

    def read(p: Path) -> np.ndarray | None:
        try:
            return read_image(p, channels, image_size)
        except VQKitError as exc:
            if not skip_bad:
                raise DataError(f"{exc} (pass --skip-bad to leave out such files)") from exc
            bad.append(f"{p.relative_to(root)}: {exc}")
            return None

    # Decoding releases the GIL in Pillow, so a few threads speed up big folders.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = [a for a in pool.map(read, usable) if a is not None]
    if bad:
        warnings.warn(
            f"skipped {len(bad)} of {len(files)} image(s) under {root} that could not be used, e.g. {bad[0]}",
            DataWarning,
            stacklevel=3,
        )
    if not arrays:
        raise DataError(f"no usable images under {root} ({len(bad)} skipped)")
    return np.stack(arrays)


def _two_sizes(headers: list[tuple[Path, tuple[int, int], str]]) -> tuple[tuple[Path, tuple[int, int]], ...]:
    first_path, first_size, _ = headers[0]
    other = next((p, s) for p, s, _ in headers if s != first_size)
    return (first_path, first_size), other
