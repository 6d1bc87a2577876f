"""WebDataset-style tar shards: naming them (paths, globs, brace ranges) and indexing their image members.

A shard is an uncompressed tar file; every regular member whose name ends in an image suffix is one
sample (other members, such as WebDataset's ``.cls`` or ``.json`` files, are ignored). Members are read
by offset, so any sample can be decoded without reading the ones before it, and the shards are never
extracted: a member's name is only a label, never a path that is opened.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from pathlib import Path

import numpy as np

from vqkit.data.common import DataError
from vqkit.data.pack import check_complete
from vqkit.fileio import shown_path
from vqkit.images import IMAGE_SUFFIXES

SHARD_SUFFIX = ".tar"
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """``train-{000..002}.tar`` -> ``train-000.tar``, ``train-001.tar``, ``train-002.tar``; ``{a,b}`` lists
    alternatives. Zero padding follows the first bound's width, as in the shell and WebDataset."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    r = _RANGE.match(body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        if hi < lo:
            raise DataError(f"shard pattern {pattern!r}: the range {{{body}}} runs backwards")
        if hi - lo >= 1_000_000:
            raise DataError(f"shard pattern {pattern!r}: the range {{{body}}} is too long")
        width = len(r.group(1)) if r.group(1).lstrip("-").startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        choices = body.split(",")
    return [x for c in choices for x in expand_braces(head + c + tail)]


def looks_like_shards(source: str) -> bool:
    """Whether a data source names tar shards (a ``.tar`` file, or a pattern of them)."""
    return source.endswith(SHARD_SUFFIX) or bool(_BRACE.search(source) and SHARD_SUFFIX in source)


def resolve_shards(source: str) -> list[Path]:
    """The shard files a source names: a ``.tar`` path, a brace pattern, a glob, or a folder holding
    ``*.tar`` files (in name order). Every named shard must exist."""
    path = Path(source).expanduser()
    if path.is_dir():
        found = sorted(path.glob(f"*{SHARD_SUFFIX}"))
        if not found:
            raise DataError(f"{path} holds no {SHARD_SUFFIX} shards")
        check_complete(path)
        return found
    shards: list[Path] = []
    for name in expand_braces(os.path.expanduser(source)):
        if glob.has_magic(name):
            matches = sorted(glob.glob(name))
            if not matches:
                raise DataError(f"no shard matches {name!r}")
            shards += [Path(m) for m in matches]
        elif not Path(name).is_file():
            raise DataError(f"no such shard: {name}")
        else:
            shards.append(Path(name))
    if not shards:
        raise DataError(f"the shard pattern {source!r} names no files")
    for folder in sorted({p.parent for p in shards}):
        check_complete(folder)
    return shards


def index_shard(path: Path) -> list[tuple[int, int, str]]:
    """``(data offset, size, member name)`` of each image member of one shard, in the shard's order."""
    with open(path, "rb") as f:
        magic = f.read(3)
    if magic[:2] == b"\x1f\x8b" or magic == b"BZh" or magic[:3] == b"\xfd7z":
        raise DataError(
            f"{path} is a compressed tar; shards must be plain .tar files so that samples can be read by "
            "offset (vqkit data pack writes them)"
        )
    members = []
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if m.isreg() and os.path.splitext(m.name)[1].lower() in IMAGE_SUFFIXES:
                    members.append((m.offset_data, m.size, m.name))
            end = tar.offset  # where reading stopped: the end-of-archive marker, in a whole shard
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot read shard {shown_path(path)}: {exc}") from exc
    size = path.stat().st_size
    for offset, length, name in members:
        if offset + length > size:
            raise DataError(f"shard {shown_path(path)} is truncated: member {name!r} runs past its end")
    if not _ends_whole(path, end, size):
        # tarfile stops quietly at a header cut short: without this a shard cut in half trains on half
        raise DataError(
            f"shard {shown_path(path)} is truncated: it stops after {len(members)} image(s) without the end "
            "of a tar archive (an interrupted copy?); copy or pack it again, or leave it out"
        )
    return members


def _ends_whole(path: Path, end: int, size: int) -> bool:
    """Whether the tar archive has its end-of-archive marker (a zero block) where its members end."""
    if size - end < tarfile.BLOCKSIZE:
        return False
    with open(path, "rb") as f:
        f.seek(end)
        return f.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)


class NameTable:
    """Many strings in two numpy arrays (bytes and offsets): compact, and copied into a forked process
    without Python objects whose reference counts would touch every page."""

    def __init__(self, names: list[str]) -> None:
        encoded = [n.encode("utf-8", "surrogateescape") for n in names]  # names need not be UTF-8
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        start = int(self._ends[i - 1]) if i > 0 else 0
        return self._blob[start : int(self._ends[i])].tobytes().decode("utf-8", "surrogateescape")
