"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Temporary files and folders are named ``.<target>.vqkit-<pid>-<random>.tmp`` beside their target. A process
killed mid-write (SIGKILL, power loss) leaves one behind; the next atomic write to the same target removes
those whose process is gone. Only names of exactly that form are touched, so a user's own ``.x.tmp`` is safe.
Files and folders end up with the modes a plain ``open()``/``mkdir()`` would give under the current umask
(an existing file keeps its mode), not the owner-only modes ``tempfile`` creates.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from vqkit.errors import VQKitError

_TMP_TAG = "vqkit"


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path as a message shows it: bytes of a name that are not UTF-8 as ``\\xNN``, so that printing it
    never fails (the OS gives such names as text with lone surrogates, which no terminal can encode)."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else by setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_name(target: Path) -> str:
    return f".{target.name}.{_TMP_TAG}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _tmp_pattern(target: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target.name)}\.{_TMP_TAG}-(\d+)-[0-9a-f]{{8}}\.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def clean_stale_tmp(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files/folders an earlier, killed atomic write to ``target`` left beside it
    (only ``.<target>.vqkit-<pid>-<hex>.tmp`` whose process no longer runs). Returns what was removed."""
    target = Path(target)
    pattern = _tmp_pattern(target)
    removed = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        m = pattern.fullmatch(p.name)
        if m is None or _alive(int(m.group(1))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass  # not ours to fight over; the next write tries again
    return removed


def _file_mode(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(target)
        tmp_path = target.parent / _tmp_name(target)
        mode = _file_mode(target)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except OSError as exc:
        raise VQKitError(f"cannot write {target}: {_describe(exc)}") from exc
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, target)
    except OSError as exc:
        raise VQKitError(f"cannot write {target}: {_describe(exc)}") from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it takes the place of ``path``.

    A failure leaves ``path`` as it was (or absent), never half-written. The caller decides whether what is
    in ``path`` may be replaced (see ``vqkit.export.target``); this function replaces it whole.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(target)
        tmp = target.parent / _tmp_name(target)
        tmp.mkdir(mode=0o700)
    except OSError as exc:
        raise VQKitError(f"cannot write {target}: {_describe(exc)}") from exc
    try:
        yield tmp
        _fix_folder_mode(tmp)
        old = None
        if target.exists():
            old = target.parent / _tmp_name(target)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise VQKitError(f"cannot write {target}: {_describe(exc)}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fix_folder_mode(folder: Path) -> None:
    """Give ``folder`` the mode ``mkdir`` gives (it was made owner-only while being written)."""
    os.chmod(folder, 0o777 & ~current_umask())
