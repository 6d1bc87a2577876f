"""Where an export may go: a new or empty folder, or an earlier export that holds only files vqkit wrote.

An export's ``vqkit.json`` lists every file the export wrote with its SHA-256 (``manifest``). Re-exporting
into such a folder replaces it only if nothing else is there and none of those files was changed since; a
folder holding anything else (a user's notes, a folder of their own, an edited graph) is refused with one line
naming what is in the way. An export made before manifests existed has no checksums: its graph files could
have been edited without a trace, so such a folder is refused while they are there. Nothing is ever deleted
that vqkit did not write.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vqkit.errors import VQKitError

METADATA_FILE = "vqkit.json"
METADATA_FORMAT = "vqkit.export"
MAX_LISTED = 3


class ExportError(VQKitError):
    """The model could not be turned into the asked format (an unsupported op, a bad option, a bad folder)."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(folder: Path) -> dict[str, str]:
    """``{relative POSIX path: sha256}`` of every file under ``folder`` except ``vqkit.json`` itself."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != METADATA_FILE:
            out[rel] = sha256(p)
    return out


def _earlier_export(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == METADATA_FORMAT else None


def _ours(info: dict[str, Any]) -> dict[str, str | None]:
    """The files an earlier export says it wrote: its manifest, or for an export made before manifests
    existed, the graph files it names (no hashes to compare)."""
    listed = info.get("manifest")
    if isinstance(listed, dict):
        return {str(k): str(v) for k, v in listed.items()}
    names: dict[str, str | None] = {}
    for role in ("encoder", "decoder"):
        entry = info.get(role)
        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
            names[entry["file"]] = None
    return names


def _cwd_inside(target: Path) -> bool:
    try:
        here = Path.cwd().resolve()
    except OSError:
        return False
    t = target.resolve()
    return here == t or t in here.parents


def check_target(target: Path) -> None:
    """Refuse ``target`` unless it is absent, empty, or an earlier export holding only what it wrote.

    The export replaces the folder whole (one rename), so the current folder or one above it cannot be
    the target: the shell would be left in a deleted folder.
    """
    if not target.exists():
        return
    if not target.is_dir():
        raise ExportError(f"{target} is a file; give a folder for the exported files")
    entries = sorted(target.iterdir())
    if not entries:
        if _cwd_inside(target):
            raise ExportError(
                f"cannot export into {target}: it is the current folder (or holds it); "
                f"give a new folder such as ./tokenizer"
            )
        return
    info = _earlier_export(target)
    if info is None:
        raise ExportError(
            f"{target} is a folder with other files in it; give a new or empty folder (an earlier export "
            f"there, with its {METADATA_FILE}, would be replaced)"
        )
    ours = _ours(info)
    unverifiable = sorted(rel for rel, digest in ours.items() if digest is None and (target / rel).exists())
    if unverifiable:
        raise ExportError(
            f"{target} holds an export by an older vqkit that kept no checksums of its files, so vqkit cannot "
            f"tell whether {_listing(unverifiable)} changed since; move them out (or remove the folder "
            f"yourself) or give another folder"
        )
    foreign, changed = _not_ours(target, ours)
    if foreign or changed:
        what = []
        if foreign:
            what.append(f"files vqkit did not write ({_listing(foreign)})")
        if changed:
            what.append(f"exported files changed since ({_listing(changed)})")
        raise ExportError(
            f"{target} holds an earlier export plus {' and '.join(what)}; move them out or give another "
            f"folder (vqkit replaces only an export it wrote, unchanged)"
        )
    if _cwd_inside(target):
        raise ExportError(
            f"cannot replace {target}: it is the current folder (or holds it); give another folder"
        )


def _not_ours(target: Path, ours: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """What in ``target`` an earlier export did not write (a foreign folder is named once, not walked), and
    which of its files were changed since."""
    foreign, changed = [], []
    folders = {str(Path(k).parent.as_posix()) for k in ours}
    pending = [target]
    while pending:
        for p in sorted(pending.pop().iterdir()):
            rel = p.relative_to(target).as_posix()
            if rel == METADATA_FILE:
                continue
            if (
                p.is_dir()
                and not p.is_symlink()
                and any(f == rel or f.startswith(rel + "/") for f in folders)
            ):
                pending.append(p)
            elif rel not in ours or p.is_symlink() or not p.is_file():
                foreign.append(rel + ("/" if p.is_dir() else ""))
            elif ours[rel] is not None and sha256(p) != ours[rel]:
                changed.append(rel)
    return foreign, changed


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")
