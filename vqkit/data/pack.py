"""Packing a folder of images into tar shards that stream fast (``vqkit data pack``).

Each image goes in as its original bytes (no re-encoding, nothing lost), under its folder-relative path,
so the shards keep the folder's held-out split and order. Every image is decoded once on the way in:
an unreadable one is an error naming it, or with ``skip_bad`` left out and counted.

The output folder belongs to the packer: a manifest (``vqkit-shards.json``) marks it, and a folder holding
anything else is refused rather than overwritten. Shards are written under a ``.partial`` name and renamed
when complete, so a killed run never leaves a half shard under a shard's name.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vqkit import checks
from vqkit.data.common import DataError
from vqkit.errors import OptionError, VQKitError
from vqkit.images import IMAGE_SUFFIXES, find_image_names, open_image

MANIFEST = "vqkit-shards.json"
FORMAT = "vqkit-shards"
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A shard holds its images in memory while it is written: a million small images is already a lot.
MAX_SHARD_SIZE = 1_000_000


@dataclass
class PackResult:
    out: Path
    shards: list[Path] = field(default_factory=list)
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why)


def _ours(name: str, prefix: str) -> bool:
    return (
        name == MANIFEST
        or re.fullmatch(rf"\.?{re.escape(prefix)}-\d{{6}}\.tar(\.partial)?", name) is not None
    )


def check_output(out: Path, prefix: str) -> None:
    """Refuse an output folder that holds anything an earlier pack with this prefix did not write."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give a folder for the shards")
    if not out.is_dir():
        return
    entries = sorted(os.listdir(out))
    if not entries:
        return
    manifest = out / MANIFEST
    earlier = None
    if manifest.is_file():
        try:
            earlier = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = None
    if not (
        isinstance(earlier, dict) and earlier.get("format") == FORMAT and earlier.get("prefix") == prefix
    ):
        raise DataError(
            f"{out} is not empty and holds no earlier pack with prefix {prefix!r} (e.g. {entries[0]}); "
            "give a new or empty folder: vqkit never overwrites files it did not write"
        )
    foreign = [e for e in entries if not _ours(e, prefix)]
    if foreign:
        raise DataError(
            f"{out} holds files an earlier pack did not write (e.g. {foreign[0]}); move them away or give "
            "another folder: vqkit never overwrites files it did not write"
        )


def check_complete(folder: Path) -> None:
    """Refuse a folder whose manifest says its pack never finished (killed, out of space): its shards hold
    only the first part of the images, and training on them would look like training on all of them."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # shards someone else wrote, without our manifest: nothing says they are incomplete
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("complete") is not False
    ):
        return
    source = manifest.get("source")
    again = f"vqkit data pack {source} -o {folder}" if isinstance(source, str) else "vqkit data pack"
    raise DataError(
        f"{folder} holds an interrupted pack ({folder / MANIFEST} says it is incomplete, so its shards lack "
        f"part of the images); run the pack again to finish it: {again}"
    )


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as f:  # open(): the user's umask decides the mode
        f.write(text)
    os.replace(tmp, path)


def _load(root: Path, name: str) -> tuple[str, bytes | None, str]:
    """(name, original bytes or None, why not) after checking the image decodes."""
    path = root / name
    try:
        data = path.read_bytes()
        open_image(io.BytesIO(data), 3, str(path))
    except OSError as exc:
        return name, None, f"cannot read image {path}: {exc.strerror or exc}"
    except VQKitError as exc:
        return name, None, str(exc)
    return name, data, ""


def pack_folder(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    shard_size: int = 1000,
    prefix: str = "shard",
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PackResult:
    """Pack every image under ``folder`` (recursive) into ``out/PREFIX-000000.tar``, ... of ``shard_size``
    images each, and a manifest. ``progress(n)`` is called as each n more images are done."""
    root, target = checks.path(folder, "folder"), checks.path(out, "out")
    shard_size = checks.integer(shard_size, "shard_size", minimum=1, maximum=MAX_SHARD_SIZE)
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise OptionError(
            f"prefix must be 1-64 letters, digits, '-' or '_', got {checks.shown(prefix)}", param="prefix"
        )
    checks.boolean(skip_bad, "skip_bad")
    checks.callable_or_none(progress, "progress")
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    names = find_image_names(root)
    if not names:
        raise DataError(f"no images under {root} (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
    check_output(target, prefix)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {target}: {exc.strerror or exc}") from exc
    result = PackResult(out=target)
    manifest = {
        "format": FORMAT,
        "version": 1,
        "prefix": prefix,
        "complete": False,  # until the last shard is in place: readers refuse an interrupted pack
        "source": str(root),
        "shards": [],
    }
    _write_text(target / MANIFEST, json.dumps(manifest))
    pending: list[tuple[str, bytes]] = []
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # Pillow releases the GIL
        for start in range(0, len(names), shard_size):
            for name, data, why in pool.map(lambda n: _load(root, n), names[start : start + shard_size]):
                if data is None:
                    if not skip_bad:
                        raise DataError(f"{why} (skip_bad, --skip-bad, leaves such files out)")
                    result.skipped.append((name, why))
                else:
                    pending.append((name, data))
                if progress is not None:
                    progress(1)
            while len(pending) >= shard_size:
                _flush(target, prefix, pending[:shard_size], result)
                del pending[:shard_size]
    if pending:
        _flush(target, prefix, pending, result)
    if not result.shards:
        raise DataError(f"none of the {len(names)} image(s) under {root} could be read")
    _remove_stale(target, prefix, {p.name for p in result.shards})
    manifest.update(
        complete=True,
        images=result.images,
        skipped=len(result.skipped),
        shards=[{"name": p.name} for p in result.shards],
    )
    _write_text(target / MANIFEST, json.dumps(manifest, indent=1))
    return result


def _flush(out: Path, prefix: str, members: list[tuple[str, bytes]], result: PackResult) -> None:
    path = out / f"{prefix}-{len(result.shards):06d}.tar"
    partial = path.with_name(f".{path.name}.partial")
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0  # the same folder packs the same bytes
                tar.addfile(info, io.BytesIO(data))
        os.replace(partial, path)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from exc
    result.shards.append(path)
    result.images += len(members)


def _remove_stale(out: Path, prefix: str, keep: set[str]) -> None:
    """Shards of an earlier, bigger pack into the same folder (ours by the manifest and their names)."""
    for name in os.listdir(out):
        if name != MANIFEST and _ours(name, prefix) and name not in keep:
            os.remove(out / name)
