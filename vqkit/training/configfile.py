"""Training configs as files: TOML (always) or YAML (when PyYAML is installed) in, TOML out.

A run folder's ``config.toml`` is the run's resolved config (every field, the defaults filled in), so
``vqkit train --config runs/a/config.toml -o runs/b`` trains the same run again.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vqkit.errors import OptionError
from vqkit.fileio import atomic_path

CONFIG_NAME = "config.toml"


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings in a ``.toml``, ``.yaml`` or ``.yml`` file (a table at the top level)."""
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"no such config file: {p}", param="config")
    text = p.read_text(encoding="utf-8", errors="replace")
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise OptionError(
                f"{p} is YAML, which needs the PyYAML package (pip install pyyaml); or write it as TOML",
                param="config",
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise OptionError(f"{p} is not valid YAML ({exc})", param="config") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise OptionError(f"{p} is not valid TOML ({exc})", param="config") from None
    if not isinstance(data, dict):
        raise OptionError(f"{p} must hold a table of settings at the top level", param="config")
    return data


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
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


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
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    raise OptionError(f"cannot write {v!r} to a config file")
