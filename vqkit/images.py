"""Reading and writing image files with numpy and Pillow only (no torch), so the ONNX runtime side can use it.

Conventions: uint8 arrays are ``[N, C, H, W]`` with values 0..255; float arrays are ``[N, C, H, W]`` in [-1, 1].
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from vqkit.errors import VQKitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _pil():
    from PIL import Image

    return Image


# Modes that hold more than 8 bits a pixel: Pillow's convert() to "L"/"RGB" would clip them at 255.
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# Pixels of one image, checked on its header before anything is decoded: 8192 x 8192 is the largest image read.
# A few KB of PNG can claim far more (a decompression bomb); Pillow only refuses beyond about 179M pixels, and
# a data loader decoding several at once must not take gigabytes for files that are not training images.
MAX_PIXELS = 8192 * 8192


def _eight_bit(im, name: str):
    """A single-channel image with more than 8 bits a pixel -> mode ``L``, scaled (not clipped) to 0..255:
    16-bit integers by 65535 -> 255; 32-bit integers only from a PNG (where they are 16-bit samples);
    floats when they lie in [0, 1]. Anything else is refused with a message naming the file."""
    Image = _pil()
    mode = im.mode
    if mode not in (*_SIXTEEN_BIT, "I", "F"):
        return im
    arr = np.asarray(im)
    if mode == "I" and im.format != "PNG":
        raise VQKitError(
            f"cannot read image {name}: it holds 32-bit integer pixels, which have no agreed 8-bit scale; "
            "convert it to 8 or 16 bits a channel"
        )
    if mode == "F":
        finite = np.isfinite(arr).all()
        if not finite or (arr.size and (arr.min() < 0 or arr.max() > 1)):
            raise VQKitError(
                f"cannot read image {name}: it holds floating-point pixels outside [0, 1] "
                "(or NaN), which have no agreed 8-bit scale; convert it to 8 or 16 bits a channel"
            )
        eight = np.rint(arr.astype(np.float64) * 255.0)
    else:
        wide = arr.astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise VQKitError(f"cannot read image {name}: its pixel values lie outside 0..65535")
        eight = (wide * 255 + 32767) // 65535  # rounded, so 65535 -> 255 and 257 * v -> v
    return Image.fromarray(eight.astype(np.uint8), "L")


def _orient(im):
    """Apply the file's EXIF Orientation tag (0x0112), as browsers and photo viewers do; values other than
    2..8 (or no EXIF) leave the image as stored."""
    try:
        orientation = im.getexif().get(0x0112)
    except Exception:  # a damaged EXIF block is no reason to refuse the pixels
        return im
    method = _ORIENTATIONS.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        return im
    Image = _pil()
    transposed = im.transpose(getattr(getattr(Image, "Transpose", Image), method))  # no enum before 9.1
    transposed.info = dict(im.info)
    transposed.format = im.format  # what _eight_bit asks
    return transposed


_ORIENTATIONS = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


def _to_mode(im, mode: str):
    """Pillow's conversion to ``mode``, with the steps the export metadata names made explicit: anything
    not grey/RGB goes to RGB (or RGBA) first, so grey is always the luma of RGB; alpha is dropped (never
    composited) for ``L`` and ``RGB``. Palette transparency only reaches a four-channel image."""
    import warnings

    if im.mode == mode:
        return im
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's note that palette transparency is dropped
        if im.mode == "CMYK":
            im = _cmyk_to_rgb(im)
        if mode == "RGBA":
            return im.convert("RGBA")
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        return im.convert(mode)


def _cmyk_to_rgb(im):
    """CMYK -> RGB as browsers compute it: each channel floor((255 - C) * (255 - K) / 255). (Pillow's convert
    rounds instead; a browser page cannot reach the ink values to round them, so the contract floors.)"""
    ink = np.asarray(im, dtype=np.int64)
    light = 255 - ink
    rgb = (light[..., :3] * light[..., 3:]) // 255
    return _pil().fromarray(rgb.astype(np.uint8), "RGB")


def open_image(source, channels: int, name: str | None = None):
    """A decoded Pillow image in the mode for ``channels`` (1 ``L``, 3 ``RGB``, 4 ``RGBA``): EXIF orientation
    applied, high-bit-depth pixels scaled to 8 bits. ``source``: a path or a binary file object. Raises
    VQKitError naming the file."""
    Image = _pil()
    label = name if name is not None else str(source)
    mode = _MODES.get(channels)
    if mode is None:
        raise VQKitError(f"cannot convert images to {channels} channels (use 1, 3 or 4)")
    try:
        with Image.open(source) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise VQKitError(
                    f"cannot read image {label}: it claims {w}x{h} pixels, more than the {MAX_PIXELS:,} "
                    "vqkit decodes (8192x8192); a decompression bomb, or a picture to scale down first"
                )
            im.load()
            return _to_mode(_eight_bit(_orient(im), label), mode)
    except VQKitError:
        raise
    except FileNotFoundError:
        raise VQKitError(f"no such image file: {label}") from None
    except Exception as exc:  # Pillow raises many types for bad files
        raise VQKitError(f"cannot read image {label}: {exc}") from exc


def centre_square(im, size: int):
    """Resize (shorter side to ``size``) and centre-crop a Pillow image to ``size x size`` with vqkit's own
    bicubic resize (``vqkit.resample``: exactly specified, the same whatever Pillow is installed)."""
    if im.size == (size, size):
        return im
    from vqkit.resample import centre_square as square

    arr = to_hwc(im)
    out = square(arr, size)
    return _pil().fromarray(out[:, :, 0] if out.shape[2] == 1 else out, im.mode)


def to_hwc(im) -> np.ndarray:
    """A Pillow image -> uint8 ``[H, W, C]``."""
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def to_chw(im) -> np.ndarray:
    """A Pillow image -> uint8 ``[C, H, W]``."""
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def read_image(path: str | os.PathLike[str], channels: int, size: int | None = None) -> np.ndarray:
    """One image file -> uint8 ``[C, H, W]``; converted to ``channels`` (1 grey, 3 RGB, 4 RGBA), and if ``size``
    is given, resized (shorter side) and centre-cropped to ``size x size``. 16-bit and float images are
    scaled to 8 bits (see :func:`open_image`). Raises VQKitError naming the file."""
    im = open_image(path, channels)
    try:
        if size is not None:
            im = centre_square(im, size)
        return to_chw(im)
    except Exception as exc:
        raise VQKitError(f"cannot read image {path}: {exc}") from exc


def read_images(
    paths: Iterable[str | os.PathLike[str]], channels: int, size: int | None = None
) -> np.ndarray:
    """Several image files -> uint8 ``[N, C, H, W]`` (all must end up the same size)."""
    arrays = [read_image(p, channels, size) for p in paths]
    if not arrays:
        raise VQKitError("no images given")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise VQKitError(f"images differ in size {sorted(shapes)}; give an image size to resize them")
    return np.stack(arrays)


def find_image_names(folder: str | os.PathLike[str]) -> list[str]:
    """The ``/``-separated paths, relative to ``folder``, of every image file under it (recursive; symlinked
    folders are not entered), in :func:`find_images`' order. Strings, not Paths: a folder of a million
    images lists in a fraction of the memory."""
    root = os.fspath(folder)
    names = []
    for top, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(top, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for f in files:
            if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES and os.path.isfile(os.path.join(top, f)):
                names.append(prefix + f)
    names.sort(key=lambda n: n.split("/"))  # Path order: compared part by part
    return names


def find_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Every image file under ``folder`` (recursive), sorted."""
    root = Path(folder)
    return [root / n for n in find_image_names(root)]


def expand_image_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, and each folder as every image file under it (recursive, sorted); an empty folder or a
    missing path is an error naming it."""
    out: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = find_images(item)
            if not found:
                raise VQKitError(f"no image files in folder {item}")
            out.extend(found)
        elif item.exists():
            out.append(item)
        else:
            raise VQKitError(f"no such image file or folder: {item}")
    return out


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float ``[-1, 1]`` -> uint8 0..255 (uint8 input is returned as is)."""
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint((np.asarray(images, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 [-1, 1]."""
    return images.astype(np.float32) / 127.5 - 1.0


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """``[N, C, H, W]`` (uint8 or float in [-1, 1]) -> one uint8 ``[H', W', C]`` picture, ``nrow`` per row."""
    imgs = to_uint8(np.asarray(images))
    n, c, h, w = imgs.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = imgs[i].transpose(1, 2, 0)
    return grid


def write_image(array_hwc: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 ``[H, W, C]`` picture (C = 1, 3 or 4) as PNG (or by suffix), atomically."""
    from vqkit.fileio import atomic_path

    Image = _pil()
    arr = array_hwc[:, :, 0] if array_hwc.shape[2] == 1 else array_hwc
    target = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(target.suffix.lower(), "PNG")
    with atomic_path(target) as tmp:
        Image.fromarray(arr).save(tmp, format=fmt)
    return target


# Sheets are enlarged (nearest neighbour, whole factors) until a tile is about this many pixels tall: a
# 32x32 image written at its native size is too small to judge by eye.
SHEET_TILE = 96


def sheet_scale(image_size: int, scale: int | None = None) -> int:
    """The whole-number enlargement of a sheet of ``image_size`` tiles: ``scale``, or by default enough to make
    a tile about 96 pixels (1 for images that large already)."""
    if scale is not None:
        if scale < 1:
            raise VQKitError(f"scale must be a whole number of at least 1, got {scale}")
        return int(scale)
    return max(1, min(8, round(SHEET_TILE / max(image_size, 1))))


def write_grid(
    images: np.ndarray, path: str | os.PathLike[str], nrow: int | None = None, scale: int | None = None
) -> Path:
    """Tile ``[N, C, H, W]`` images into one PNG, enlarged by ``scale`` (default: :func:`sheet_scale`)."""
    grid = make_grid(images, nrow)
    factor = sheet_scale(int(np.asarray(images).shape[-2]), scale)
    if factor > 1:
        grid = grid.repeat(factor, axis=0).repeat(factor, axis=1)
    return write_image(grid, path)


def write_images(
    images: np.ndarray, folder: str | os.PathLike[str], names: Sequence[str] | None = None
) -> list[Path]:
    """Write each of ``[N, C, H, W]`` to ``folder/NAME.png`` (default names 000000.png, ...)."""
    imgs = to_uint8(np.asarray(images))
    out = []
    for i, img in enumerate(imgs):
        name = names[i] if names is not None else f"{i:06d}.png"
        out.append(write_image(img.transpose(1, 2, 0), Path(folder) / name))
    return out
