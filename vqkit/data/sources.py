"""What a streamed data source is: an ordered list of samples (file paths, or tar members by offset), never
the decoded pixels. The order is the one the in-memory path uses (a folder's files sorted like
:func:`vqkit.images.find_images`; shards in the order named, members in tar order), and the held-out split
is the same CRC-32 rule on the sample's folder-relative path, so a folder packed into shards streams the
same training images in the same order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vqkit.data.common import DataError, EmptySplitError, check_split
from vqkit.data.folder import GREY_MODES, HOLDOUT_EVERY, is_held_out
from vqkit.data.shards import NameTable, index_shard, looks_like_shards, resolve_shards
from vqkit.errors import VQKitError
from vqkit.images import IMAGE_SUFFIXES, find_image_names

PROBE_SAMPLES = 32


class StreamSource:
    """Samples ``0..len-1`` of one split: ``name(i)`` (relative path or member name) and ``location(i)``
    (what a decoding worker reads: ``("file", path)`` or ``("tar", shard, offset, size)``)."""

    kind = "?"
    where = ""
    names: NameTable

    def __len__(self) -> int:
        return len(self.names)

    def name(self, i: int) -> str:
        return self.names[i]

    def location(self, i: int) -> tuple:
        raise NotImplementedError

    def item(self, epoch: int, i: int) -> tuple[int, int, str, tuple]:
        return (epoch, i, self.name(i), self.location(i))


def _keep(names: list[str], split: str, what: str) -> np.ndarray:
    """Indices of ``names`` in ``split`` (``train``/``test``/``all``)."""
    if split == "all":
        return np.arange(len(names), dtype=np.int64)
    want_test = split == "test"
    chosen = np.fromiter((is_held_out(n) == want_test for n in names), dtype=bool, count=len(names))
    if not chosen.any():
        raise EmptySplitError(
            f"{what} has {len(names)} image(s) and none falls in its {split!r} split (about 1 in "
            f"{HOLDOUT_EVERY} is held out for 'test'); use split 'all' (--split all) for data this small"
        )
    return np.flatnonzero(chosen)


class FolderSource(StreamSource):
    kind = "folder"

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        self.root = Path(root)
        self.where = str(self.root)
        names = find_image_names(self.root)
        if not names:
            raise DataError(
                f"no images under {self.root} (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)"
            )
        keep = _keep(names, check_split(split), str(self.root))
        self.names = NameTable([names[i] for i in keep])

    def location(self, i: int) -> tuple:
        return ("file", os.path.join(self.root, self.names[i]))


class ShardSource(StreamSource):
    kind = "shards"

    def __init__(self, pattern: str, split: str = "train") -> None:
        check_split(split)
        self.shards = [str(p) for p in resolve_shards(pattern)]
        self.where = pattern
        shard_of, offsets, sizes, names = [], [], [], []
        for k, shard in enumerate(self.shards):
            members = index_shard(Path(shard))
            shard_of += [k] * len(members)
            offsets += [m[0] for m in members]
            sizes += [m[1] for m in members]
            names += [m[2] for m in members]
        if not names:
            raise DataError(f"the {len(self.shards)} shard(s) of {pattern!r} hold no images")
        keep = _keep(names, split, f"the shards {pattern!r}")
        self.names = NameTable([names[i] for i in keep])
        self._shard = np.asarray(shard_of, dtype=np.int32)[keep]
        self._offset = np.asarray(offsets, dtype=np.int64)[keep]
        self._size = np.asarray(sizes, dtype=np.int64)[keep]

    def location(self, i: int) -> tuple:
        return ("tar", self.shards[int(self._shard[i])], int(self._offset[i]), int(self._size[i]))


def open_source(source: str | os.PathLike[str], split: str = "train") -> StreamSource:
    """A folder of images or tar shards (a ``.tar`` file, a glob or brace pattern, a folder of ``*.tar``)."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        # A folder of shards (what vqkit data pack writes): .tar files, and no images or sub-folders beside them.
        entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
        tars = [e for e in entries if e.name.endswith(".tar") and e.is_file()]
        other = [e for e in entries if e.is_dir() or os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]
        if tars and not other:
            return ShardSource(str(path), split)
        return FolderSource(path, split)
    if looks_like_shards(text) or any(c in text for c in "*?["):
        return ShardSource(text, split)
    if path.exists():
        raise DataError(f"{path} is neither a folder of images nor a .tar shard")
    raise DataError(f"no such folder or shard: {path}")


def probe(
    source: StreamSource, channels: int | None, image_size: int | None, skip_bad: bool = False
) -> tuple[int, int]:
    """Channels and image size for a stream when not given, from the headers of up to 32 samples spread
    over the source (a stream never reads every file before it starts): 1 channel when they are all
    greyscale, else 3; their size when they share one, else an error asking for one."""
    if channels is not None and image_size is not None:
        return channels, image_size
    n = len(source)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(n, PROBE_SAMPLES))})
    seen: list[tuple[str, tuple[int, int], str]] = []
    for i in picks:
        try:
            size, mode = header(source.location(i), source.name(i))
        except VQKitError as exc:
            if not skip_bad:
                raise DataError(f"{exc} (skip_bad, --skip-bad, leaves such files out)") from exc
            continue
        seen.append((source.name(i), size, mode))
    if not seen:
        raise DataError(f"none of the {len(picks)} images sampled from {source.where} could be read")
    if channels is None:
        channels = 1 if all(mode in GREY_MODES for _, _, mode in seen) else 3
    if image_size is None:
        sizes = {size for _, size, _ in seen}
        if len(sizes) > 1:
            (a, sa, _), (b, sb, _) = seen[0], next(x for x in seen if x[1] != seen[0][1])
            raise DataError(
                f"images of {source.where} differ in size ({a} is {sa[0]}x{sa[1]}, {b} is {sb[0]}x{sb[1]}); "
                "give an image size (image_size, --image-size) to resize and crop them to"
            )
        image_size = min(next(iter(sizes)))
    return channels, image_size


def header(location: tuple, name: str) -> tuple[tuple[int, int], str]:
    """An image's (width, height) and Pillow mode, read from its header only."""
    import io

    from PIL import Image

    from vqkit.data.decode import _READER

    label = location[1] if location[0] == "file" else f"{name} in {location[1]}"
    try:
        src = location[1] if location[0] == "file" else io.BytesIO(_READER.read(*location[1:]))
        with Image.open(src) as im:
            return im.size, im.mode
    except VQKitError:
        raise
    except FileNotFoundError:
        raise VQKitError(f"image file vanished while reading: {label}") from None
    except Exception as exc:  # Pillow raises many types for bad files
        raise VQKitError(f"cannot read image {label}: {exc}") from exc
