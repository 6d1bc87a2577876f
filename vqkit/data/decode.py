"""Decoding one batch of streamed images: file or tar-member bytes -> uint8 ``[B, C, S, S]``.

Torch-free (numpy + Pillow), so the decoding worker processes stay small: a process that imports torch
holds about half a gigabyte, a decoding worker about 40 MB.

A batch is described by plain tuples, so it pickles cheaply to a worker:
``(epoch, index, name, location)`` where ``location`` is ``("file", path)`` or
``("tar", shard_path, offset, size)``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from vqkit.data.augment import NO_AUGMENT, Augment, augment_image
from vqkit.errors import VQKitError
from vqkit.images import open_image, to_chw

Item = tuple[int, int, str, tuple]


@dataclass(frozen=True)
class DecodeSpec:
    """What every batch of a stream is decoded to, and how (sent to each worker once)."""

    channels: int
    image_size: int
    augment: Augment = NO_AUGMENT
    seed: int = 0
    skip_bad: bool = False


class _Reader:
    """Bytes of tar members by offset. ``os.pread`` leaves no shared file position, so a descriptor
    inherited across a fork can never be moved under another process's feet."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, path: str, offset: int, size: int) -> bytes:
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= 64:  # a run over thousands of shards must not run out of descriptors
                os.close(self._fds.pop(next(iter(self._fds))))
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise VQKitError(f"cannot open shard {path}: {exc.strerror or exc}") from exc
            self._fds[path] = fd
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise VQKitError(f"shard {path} is shorter than its index says (truncated while reading?)")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


_READER = _Reader()


def decode_item(item: Item, spec: DecodeSpec, reader: _Reader = _READER) -> np.ndarray:
    """One sample -> uint8 ``[C, S, S]``, augmented as ``spec`` says. Raises VQKitError naming the file."""
    epoch, index, name, location = item
    if location[0] == "file":
        source, label = location[1], location[1]
    else:
        _, shard, offset, size = location
        source, label = io.BytesIO(reader.read(shard, offset, size)), f"{name} in {shard}"
    im = open_image(source, spec.channels, label)
    w, h = im.size
    size = spec.image_size
    if min(w, h) < size:
        raise VQKitError(f"image {label} is {w}x{h}, smaller than the model's {size}x{size}")
    try:
        square = to_chw(centre_square(im, size))
    except Exception as exc:  # a file that decodes but fails to resample is still a bad file
        raise VQKitError(f"cannot read image {label}: {exc}") from exc
    if spec.augment.active:
        return augment_image(square, spec.augment, spec.seed, epoch, index)
    return square


def decode_batch(items: list[Item], spec: DecodeSpec) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """A batch -> (uint8 ``[B, C, S, S]``, the ``(name, reason)`` of each file left out).

    Under ``skip_bad`` an unreadable file's slot takes a copy of the next readable image of the same batch
    (the batch keeps its size, and the choice depends only on the data, so resuming repeats it)."""
    out = np.empty((len(items), spec.channels, spec.image_size, spec.image_size), dtype=np.uint8)
    bad: list[tuple[str, str]] = []
    failed = np.zeros(len(items), dtype=bool)
    for i, item in enumerate(items):
        try:
            out[i] = decode_item(item, spec)
        except VQKitError as exc:
            if not spec.skip_bad:
                raise
            bad.append((item[2], str(exc)))
            failed[i] = True
    return (out[stand_ins(failed)] if bad else out), bad


def centre_square(im, size: int):
    """Training's shorter-side resize and centre crop: Pillow's bicubic, about ten times faster than vqkit's
    own (``vqkit.resample``, the definition tokens are made with). The two differ by at most a level here
    and there, which is noise to training; encoding and exported clients follow ``vqkit.resample``."""
    if im.size == (size, size):
        return im
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), _bicubic())
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def _bicubic():
    from PIL import Image

    return Image.BICUBIC


def stand_ins(failed: np.ndarray) -> np.ndarray:
    """Each slot of a batch -> the slot whose image it takes: itself, or for an unreadable sample the next
    readable slot of the batch (wrapping to the first). The batch keeps its size, and the choice depends only
    on the data, so a resumed or a held run repeats it."""
    good = np.flatnonzero(~failed)
    if not len(good):
        raise VQKitError(
            f"none of the {len(failed)} images of a batch could be read; is the data readable at all?"
        )
    later = np.searchsorted(good, np.arange(len(failed)))  # the first readable slot at or after each
    return np.where(later < len(good), good[np.minimum(later, len(good) - 1)], good[0])
