"""Training configs as files: TOML (always) or YAML (when PyYAML is installed) in, TOML out.

A run folder's ``config.toml`` is the run's resolved config (every field, the defaults filled in), so
``vqkit train --config runs/a/config.toml -o runs/b`` trains the same run again.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from vqkit import checks, textformats
from vqkit.errors import OptionError
from vqkit.fileio import atomic_path, shown_path
from vqkit.training.config import PATH_BYTES_KEY, TrainConfig

CONFIG_NAME = "config.toml"


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings in a ``.toml``, ``.yaml`` or ``.yml`` file (a table at the top level), parsed within the
    limits of :mod:`vqkit.textformats` (size, nesting, YAML aliases); a byte-order mark is fine."""
    p = checks.path(path, "config")
    try:
        with open(p, "rb") as f:  # no more than the limit: a config named /dev/zero must not read forever
            raw = f.read(textformats.MAX_BYTES + 1)
    except FileNotFoundError:
        raise OptionError(f"no such config file: {shown_path(p)}", param="config") from None
    except OSError as exc:
        raise OptionError(
            f"cannot read config file {shown_path(p)}: {exc.strerror or exc}", param="config"
        ) from None
    where = shown_path(p)
    try:
        text = textformats.decode(raw, where)
        if p.suffix.lower() in (".yaml", ".yml"):
            data = textformats.load_yaml(text, where)
        else:
            data = textformats.load_toml(text, where)
    except textformats.TextFormatError as exc:
        raise OptionError(str(exc), param="config") from None
    if not isinstance(data, dict):
        raise OptionError(f"{where} must hold a table of settings at the top level", param="config")
    return _decode_names(data, where)


def _decode_names(table: dict[str, Any], where: str) -> dict[str, Any]:
    """Every ``{path_bytes_hex = "..."}`` (how :func:`write_config_toml` writes a name that is not UTF-8)
    back to the name, as the OS gives it (text with lone surrogates)."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict) and set(value) == {PATH_BYTES_KEY}:
            try:
                value = os.fsdecode(bytes.fromhex(value[PATH_BYTES_KEY]))
            except (TypeError, ValueError):
                raise OptionError(
                    f"{where}: {key}.{PATH_BYTES_KEY} must be hex digits", param=key, source=where
                ) from None
        elif isinstance(value, dict):
            value = _decode_names(value, where)
        out[key] = value
    return out


def load_config(path: str | os.PathLike[str], base: TrainConfig | None = None) -> TrainConfig:
    """A config file as a checked :class:`TrainConfig` (``base`` or the defaults, with the file on top); a
    mistake in it is an :class:`OptionError` whose message names the file and the field."""
    data = read_config_file(path)
    where = shown_path(checks.path(path, "config"))
    try:
        return TrainConfig.from_dict(data, base=base).validate()
    except OptionError as exc:
        raise in_source(exc, where) from None


def in_source(exc: OptionError, where: str) -> OptionError:
    """``exc`` said of the file ``where``: its message starts with the file, and ``source`` names it."""
    return OptionError(f"{where}: {exc}", param=exc.param, source=where)


def write_config_toml(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as TOML, atomically. ``None`` values are left out (TOML has no null; a missing key
    reads back as the field's default, which is where every None of a config comes from)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    for name, table in tables.items():
        lines += _table(name, table)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _table(name: str, table: dict[str, Any]) -> list[str]:
    flat = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
    nested = {k: v for k, v in table.items() if isinstance(v, dict)}
    out = ["", f"[{name}]", *(f"{_key(k)} = {_value(v)}" for k, v in flat.items())]
    for key, sub in nested.items():
        out += _table(f"{name}.{_key(key)}", sub)
    return out


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "")
    if bare.isascii() and bare.isalnum():
        return key
    if not _is_unicode(key):
        raise OptionError(f"cannot write the key {key!r} to a config file: it is not Unicode text")
    return _string(key)


def _is_unicode(v: str) -> bool:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string(v: str) -> str:
    """A TOML basic string. Non-ASCII text (emoji included) is written as itself; a name the OS gave as
    bytes that are not UTF-8 (held as lone surrogates, which TOML cannot hold) is written as its bytes in
    hex, in a table the config's path fields read back to the same name."""
    if not _is_unicode(v):
        return f'{{ {PATH_BYTES_KEY} = "{os.fsencode(v).hex()}" }}'
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    out = []
    for ch in v:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    raise OptionError(f"cannot write {v!r} to a config file")
