"""Checking a caller's arguments before anything is built: each check returns the value (coerced where that is
lossless, e.g. an int given for a float) or raises :class:`OptionError` naming the parameter.

Public functions call these first, so a wrong type, NaN or an absurd size ends in one message that names the
parameter rather than in a TypeError or OverflowError from deep inside torch. No torch here: the torch-free
runtime side may use it too.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vqkit.errors import OptionError

# Seeds feed torch generators after being mixed with a step or epoch (seed * 1_000_003 + n must stay inside a
# 64-bit integer); 32 bits is also what numpy and most tools accept as a seed.
MAX_SEED = 2**32 - 1
try:  # numpy's bool is no bool subclass, but no more a number than True is
    from numpy import bool_ as np_bool
except ImportError:  # pragma: no cover - numpy is a dependency; the guard keeps this module import-light
    np_bool = bool  # type: ignore[assignment,misc]
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,4})?)$")


def shown(value: Any, limit: int = 60) -> str:
    """A value as a message shows it: repr, cut to ``limit`` characters (a hostile value may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(name: str, what: str, value: Any) -> OptionError:
    return OptionError(f"{name} must be {what}, got {shown(value)}", param=name)


def integer(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (not a bool; numpy's ints too; a float only when it is a whole number) within
    ``minimum..maximum``."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        if math.isfinite(value) and float(value).is_integer():
            value = int(value)
    if isinstance(value, (bool, np_bool)) or not isinstance(value, numbers.Integral):
        raise _fail(name, "an integer", value)
    value = int(value)
    if minimum is not None and value < minimum:
        raise _fail(name, f"at least {minimum}", value)
    if maximum is not None and value > maximum:
        raise _fail(name, f"at most {maximum}", value)
    return value


def optional_integer(value: Any, name: str, **bounds: Any) -> int | None:
    return None if value is None else integer(value, name, **bounds)


def number(
    value: Any,
    name: str,
    *,
    minimum: float = -math.inf,
    maximum: float = math.inf,
    open_min: bool = False,
) -> float:
    """A finite int or float (not a bool) above (``open_min``) or at least ``minimum``, at most ``maximum``."""
    if isinstance(value, (bool, np_bool)) or not isinstance(value, numbers.Real):
        raise _fail(name, "a number", value)
    try:
        value = float(value)
    except OverflowError:  # an int too big for a float
        raise _fail(name, "a number", value) from None
    if not math.isfinite(value):
        raise _fail(name, "a number", value)
    too_low = value <= minimum if open_min else value < minimum
    if too_low or value > maximum:
        low, high = _num(minimum), _num(maximum)
        bound = f"above {low}" if open_min else f"at least {low}"
        if maximum != math.inf:
            bound = f"between {low} and {high}" if minimum != -math.inf else f"at most {high}"
        raise _fail(name, bound, value)
    return value


def _num(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else f"{x:g}"


def boolean(value: Any, name: str) -> bool:
    """True or False only: the text ``"no"`` is not taken as true."""
    if not isinstance(value, bool):
        raise _fail(name, "true or false", value)
    return value


def text(value: Any, name: str, *, choices: tuple[str, ...] | None = None, empty: bool = False) -> str:
    if choices is not None:
        if not isinstance(value, str) or value not in choices:
            raise _fail(name, f"one of {', '.join(choices)}", value)
        return value
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise _fail(name, "text" if empty else "non-empty text", value)
    return value


def seed(value: Any, name: str = "seed") -> int:
    return integer(value, name, minimum=0, maximum=MAX_SEED)


def optional_seed(value: Any, name: str = "seed") -> int | None:
    return None if value is None else seed(value, name)


def path(value: Any, name: str) -> Path:
    """A file or folder name: text, bytes (as the OS gives a name that is not UTF-8) or ``os.PathLike``."""
    if isinstance(value, (str, bytes, os.PathLike)) and not isinstance(value, bool):
        try:
            result = os.fsdecode(value)
        except TypeError:  # a PathLike whose __fspath__ returns something else
            result = None
        if result:
            if "\0" in result:
                raise _fail(name, "a path without NUL characters", value)
            return Path(result)
    raise _fail(name, "a file or folder path (str or os.PathLike)", value)


def mapping(value: Any, name: str) -> dict[str, Any]:
    """A dict with text keys (a copy; None gives an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _fail(name, "a dict of option names to values", value)
    return dict(value)


def callable_or_none(value: Any, name: str) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise _fail(name, "a function or None", value)
    return value


def device_name(value: Any, name: str = "device") -> str:
    """The form of a device (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``), not
    whether it is there: :func:`vqkit.device.resolve_device` says that."""
    text_value = str(value) if type(value).__name__ == "device" else value
    if not isinstance(text_value, str) or not _DEVICE.match(text_value.strip().lower()):
        raise OptionError(
            f"{name} must be auto, cpu, cuda, cuda:N or mps (unknown device {shown(value)})", param=name
        )
    return text_value.strip().lower()
