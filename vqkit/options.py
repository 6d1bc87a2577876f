"""Plugin options: parsing ``--set PART.KEY=VALUE`` and checking options against a plugin's signature."""

from __future__ import annotations

import difflib
import json
from typing import Any

from vqkit.errors import OptionError
from vqkit.registry import Entry

PARTS = ("encoder", "quantizer", "decoder")


def parse_value(text: str) -> Any:
    """``--set`` values: JSON where it parses (numbers, true/false, null, lists), else a comma list, else text."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    if "," in text:
        return [parse_value(t) for t in text.split(",") if t.strip()]
    return text


def parse_sets(items: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``["quantizer.beta=0.5", "encoder.widths=16,32,64"]`` -> ``{"quantizer": {"beta": 0.5}, ...}``."""
    out: dict[str, dict[str, Any]] = {p: {} for p in PARTS}
    for item in items:
        key, sep, value = item.partition("=")
        part, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise OptionError(f"--set {item!r}: expected PART.KEY=VALUE, e.g. quantizer.beta=0.5")
        if part not in PARTS:
            raise OptionError(f"--set {item!r}: PART must be one of {', '.join(PARTS)}, not {part!r}")
        out[part][name] = parse_value(value)
    return out


def _coerce(entry: Entry, name: str, value: Any, default: Any) -> Any:
    """Bring a value to the type of the option's default, so ``--set encoder.widths=16,32`` gives a tuple."""
    if default is None or value is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            raise TypeError
        if isinstance(default, int) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise TypeError
            return int(value)
        if isinstance(default, float) and not isinstance(value, bool):
            return float(value)
        if isinstance(default, (tuple, list)):
            seq = value if isinstance(value, (list, tuple)) else [value]
            return type(default)(seq)
        if isinstance(default, str):
            return value if isinstance(value, str) else str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise OptionError(
        f"{entry.kind} {entry.name!r}: option {name}={value!r} should be a {type(default).__name__} "
        f"like its default {default!r}"
    )


def validate_options(entry: Entry, options: dict[str, Any]) -> dict[str, Any]:
    """Check option names against the plugin's signature and coerce values; raise OptionError on mistakes."""
    known = {o.name: o for o in entry.options}
    out: dict[str, Any] = {}
    for name, value in options.items():
        opt = known.get(name)
        if opt is None:
            if entry.accepts_any:
                out[name] = value
                continue
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(o.describe() for o in entry.options) or "none"
            raise OptionError(
                f"{entry.kind} {entry.name!r} has no option {name!r}.{hint} Its options: {listing}."
            )
        out[name] = _coerce(entry, name, value, opt.default)
    missing = [o.name for o in entry.options if o.required and o.name not in out]
    if missing:
        raise OptionError(
            f"{entry.kind} {entry.name!r} needs option(s): {', '.join(missing)} (set them in {entry.kind}_options)"
        )
    return out
