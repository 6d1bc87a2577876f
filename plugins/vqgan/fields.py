"""Reading the fields of a foreign config, each checked before use: a wrong one is one line naming the field
and the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqkit.errors import ModelFileError

MISSING = object()
MAX_SIZE = 1 << 20  # no published architecture parameter comes near this
MAX_LEVELS = 16
# The quantizer options of an imported (pretrained) codebook: kept as trained, never k-means fitted or re-seeded.
PRETRAINED = {"init": "uniform", "restart_after": 0}


def problem(where: Path, key: str, text: str) -> ModelFileError:
    return ModelFileError(f"{where}: field {key} {text}")


def get(cfg: dict[str, Any], key: str, where: Path, default: Any = MISSING) -> Any:
    if key in cfg:
        return cfg[key]
    if default is MISSING:
        raise problem(where, key, "is missing")
    return default


def integer(cfg: dict[str, Any], key: str, where: Path, low: int = 1, default: Any = MISSING) -> int:
    value = get(cfg, key, where, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_SIZE:
        raise problem(where, key, f"must be a whole number from {low} to {MAX_SIZE}, got {value!r}")
    return value


def integers(cfg: dict[str, Any], key: str, where: Path, low: int = 1, default: Any = MISSING) -> list[int]:
    value = get(cfg, key, where, default)
    ok = isinstance(value, (list, tuple)) and len(value) <= MAX_LEVELS
    ok = ok and all(not isinstance(v, bool) and isinstance(v, int) and low <= v <= MAX_SIZE for v in value)
    if not ok:
        raise problem(
            where, key, f"must be a list of at most {MAX_LEVELS} whole numbers >= {low}, got {value!r}"
        )
    return [int(v) for v in value]


def flag(cfg: dict[str, Any], key: str, where: Path, default: Any = MISSING) -> bool:
    value = get(cfg, key, where, default)
    if not isinstance(value, bool):
        raise problem(where, key, f"must be true or false, got {value!r}")
    return value


def table(cfg: dict[str, Any], key: str, where: Path) -> dict[str, Any]:
    value = get(cfg, key, where)
    if not isinstance(value, dict):
        raise problem(where, key, "must be a table of settings")
    return value


def require(
    cfg: dict[str, Any], key: str, where: Path, allowed: tuple[Any, ...], why: str, default: Any = MISSING
) -> Any:
    value = get(cfg, key, where, default)
    if value not in allowed:
        shown = " or ".join(repr(a) for a in allowed)
        raise problem(where, key, f"is {value!r}; vqkit imports only {shown} ({why})")
    return value


def vqgan_options(**values: Any) -> dict[str, Any]:
    """The options of the vqgan encoder and decoder (the two take the same ones)."""
    keys = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "resolution", "norm_groups")
    return {k: values[k] for k in (*keys, "mid_attention", "dropout")}
