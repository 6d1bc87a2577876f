"""One split of any data source, read in the source's order in bounded memory: what every command that reads
images (eval, reconstruct, prior train, export validation, a training run's held-out images) uses.

A folder or tar shards is read batch by batch from disk (only one batch of decoded images is in memory at a
time, whatever the data's size); a dataset by name (``mnist5k``, torchvision sets) comes as the array it
already is. Either way the images are uint8 ``[B, C, S, S]``, centre-cropped to the size asked, and the
same pixels as :func:`vqkit.data.load_images` gives for the same split.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vqkit.data.common import DataError, DataWarning
from vqkit.errors import VQKitError

READ_BATCH = 256  # images decoded at a time when a caller asks for no batch size


class ImageSet:
    """``len(images)`` samples (an upper bound under ``skip_bad``), ``channels``/``image_size``, ``where``
    (for messages); ``batches(n, limit)`` yields uint8 ``[<=n, C, S, S]`` arrays in order, ``read(limit)``
    all of them (or the first ``limit``) as one array."""

    where: str
    channels: int
    image_size: int

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(
        self, batch_size: int = READ_BATCH, limit: int | None = None, names: list[str] | None = None
    ) -> Iterator[np.ndarray]:
        """Batches in order; ``names``, when given, receives the name of each image yielded (a file's path
        relative to its folder, a tar member's name, or ``DATASET[i]``)."""
        raise NotImplementedError

    def read(self, limit: int | None = None) -> np.ndarray:
        parts = list(self.batches(READ_BATCH, limit))
        if not parts:
            raise DataError(f"no usable images in {self.where}")
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class HeldImages(ImageSet):
    """Images already in memory (a dataset by name, or one held whole)."""

    def __init__(self, images: np.ndarray, where: str) -> None:
        self.images, self.where = images, where
        self.channels, self.image_size = int(images.shape[1]), int(images.shape[-1])

    def __len__(self) -> int:
        return len(self.images)

    def batches(
        self, batch_size: int = READ_BATCH, limit: int | None = None, names: list[str] | None = None
    ) -> Iterator[np.ndarray]:
        stop = len(self.images) if limit is None else min(limit, len(self.images))
        for i in range(0, stop, batch_size):
            end = min(i + batch_size, stop)
            if names is not None:
                names += [f"{self.where}[{k}]" for k in range(i, end)]
            yield self.images[i:end]


class StreamedImages(ImageSet):
    """A folder's or shards' split decoded a batch at a time (threads: Pillow decodes without the GIL).
    An unreadable image is an error naming it, or under ``skip_bad`` left out and counted in one warning."""

    def __init__(self, source, channels: int, image_size: int, skip_bad: bool = False) -> None:
        from vqkit.data.decode import DecodeSpec

        self.source, self.where = source, source.where
        self.channels, self.image_size = channels, image_size
        self.spec = DecodeSpec(channels, image_size)
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.source)

    def _one(self, i: int) -> np.ndarray | str:
        from vqkit.data.decode import decode_item

        try:
            return decode_item(self.source.item(0, i), self.spec)
        except VQKitError as exc:
            if not self.skip_bad:
                raise DataError(f"{exc} (skip_bad, --skip-bad, leaves such files out)") from exc
            return str(exc)

    def batches(
        self, batch_size: int = READ_BATCH, limit: int | None = None, names: list[str] | None = None
    ) -> Iterator[np.ndarray]:
        want = len(self.source) if limit is None else min(limit, len(self.source))
        given, bad, start = 0, [], 0
        looked = 0
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            while given < want and start < len(self.source):
                stop = min(start + batch_size, len(self.source))
                decoded = list(pool.map(self._one, range(start, stop)))
                looked += stop - start
                start = stop
                bad += [d for d in decoded if isinstance(d, str)]
                kept = [k for k, d in enumerate(decoded) if not isinstance(d, str)][: want - given]
                good = [decoded[k] for k in kept]
                if names is not None:
                    names += [self.source.name(start - len(decoded) + k) for k in kept]
                if good:
                    given += len(good)
                    yield np.stack(good)
        if bad:
            warnings.warn(
                f"skipped {len(bad)} of {looked} image(s) of {self.where} that could not be used, e.g. {bad[0]}",
                DataWarning,
                stacklevel=2,
            )
        if given == 0:
            raise DataError(f"none of the images of {self.where} could be read")


def decode_in_place(found: StreamedImages) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of a folder or shards, in order, as one uint8 array, and which could not be read (their
    rows are zeros; under ``skip_bad`` only, else the first is an error): what a run holds in memory, sample
    for sample the stream it could have been."""
    n, c, s = len(found), found.channels, found.image_size
    out = np.zeros((n, c, s, s), dtype=np.uint8)
    bad = np.zeros(n, dtype=bool)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, image in enumerate(pool.map(found._one, range(n))):
            if isinstance(image, str):
                bad[i] = True
            else:
                out[i] = image
    if bad.all():
        raise DataError(f"none of the {n} images of {found.where} could be read")
    if bad.any():
        warnings.warn(
            f"skipping {int(bad.sum())} unreadable image(s) of {found.where} (each is replaced by another image "
            "of its batch)",
            DataWarning,
            stacklevel=2,
        )
    return out, bad


def streamable(source: str) -> bool:
    """A folder of images or tar shards (read from disk); datasets by name are arrays."""
    from vqkit.data.named import BUILTIN
    from vqkit.data.shards import looks_like_shards

    if source.lower() in BUILTIN:
        return False
    return Path(source).expanduser().is_dir() or looks_like_shards(source) or any(c in source for c in "*?[")


def open_images(
    source: str | os.PathLike[str],
    *,
    split: str = "test",
    channels: int | None = None,
    image_size: int | None = None,
    download: bool = False,
    skip_bad: bool = False,
    data_root: str | os.PathLike[str] | None = None,
) -> ImageSet:
    """The images of ``split`` of ``source`` (a folder, tar shards, ``mnist5k`` or a torchvision set by name),
    converted to ``channels``/``image_size`` (None: the data's own, from a few headers of a folder or
    shards). Nothing is decoded until the batches are asked for."""
    from vqkit.data.common import check_split
    from vqkit.data.named import load_named

    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source):
        raise DataError(f"source must be a dataset name, a folder or tar shards, got {source!r:.60}")
    text = os.fspath(source)
    check_split(split)
    if not streamable(text):
        if Path(text).expanduser().exists():
            raise DataError(
                f"{text} is a file; give a folder of images or tar shards, or a dataset name like mnist5k"
            )
        return HeldImages(load_named(text, split, channels, image_size, download, data_root), text)
    from vqkit.data.sources import open_source, probe

    found = open_source(text, split)
    ch, size = probe(found, channels, image_size, skip_bad)
    return StreamedImages(found, ch, size, skip_bad)


def encode_source(
    tokenizer,
    source: str | os.PathLike[str],
    *,
    split: str = "all",
    batch_size: int = READ_BATCH,
    skip_bad: bool = False,
    download: bool = False,
    data_root: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """``vqkit encode --data``: the codes of a source's ``split`` with an exported tokenizer
    (:class:`vqkit.runtime.Tokenizer`, which takes uint8 channels last), read a batch at a time, and the name
    of the image of each row."""
    found = open_images(
        source,
        split=split,
        channels=tokenizer.channels,
        image_size=tokenizer.image_size,
        skip_bad=skip_bad,
        download=download,
        data_root=data_root,
    )
    names: list[str] = []
    codes = [
        tokenizer.encode(x.transpose(0, 2, 3, 1), batch_size=batch_size)
        for x in found.batches(batch_size, names=names)
    ]
    return np.concatenate(codes), names
