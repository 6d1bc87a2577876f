"""The held-out split of a folder of images (and of the shards packed from it).

A file belongs to ``test`` when the CRC-32 of its path relative to the folder (with ``/``) is
divisible by 10, so about one image in ten is held out, the choice never depends on the order or number of the
other files, and adding images to the folder never moves an old one between splits.
"""

from __future__ import annotations

import zlib

HOLDOUT_EVERY = 10
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La")


def is_held_out(relative: str) -> bool:
    """Whether the file at this folder-relative path (``/``-separated) is in the ``test`` split. The path's
    bytes are the name's bytes on disk, UTF-8 or not (a name that is not UTF-8 comes as lone surrogates)."""
    return zlib.crc32(relative.encode("utf-8", "surrogateescape")) % HOLDOUT_EVERY == 0
