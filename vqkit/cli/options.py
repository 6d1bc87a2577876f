"""Options several commands share, declared once: ``--device``, the data options, ``-o/--output``; and the
options of ``vqkit train``, derived from :class:`vqkit.training.TrainConfig`'s fields (their defaults and help
come from there, so a default changed in the config changes the CLI too)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from vqkit.errors import OptionError
from vqkit.training.config import TrainConfig

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
DATA_FIELDS = ("data", "data_root", "download", "skip_bad")
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _apply(f: Callable[..., Any], opts: list[Decorator]) -> Callable[..., Any]:
    for opt in reversed(opts):
        f = opt(f)
    return f


def flag_of(name: str) -> str:
    """The CLI flag of a TrainConfig field (``init_from`` -> ``--model``, ``lr`` -> ``--lr``)."""
    field = _FIELDS.get(name)
    flag = field.metadata.get("flag") if field is not None else None
    flags = (flag or f"--{name.replace('_', '-')}").split("/")
    return next(f for f in flags if f.startswith("--"))


def _help(name: str) -> str:
    return str(_FIELDS[name].metadata["help"])


def _default(name: str) -> Any:
    return TrainConfig().to_dict()[name]


def config_option(name: str, **overrides: Any) -> Decorator:
    """A click option for TrainConfig field ``name``: type, default (shown in the help) and help from the field."""
    field = _FIELDS[name]
    default = _default(name)
    flag = field.metadata.get("flag") or f"--{name.replace('_', '-')}"
    decls = flag.split("/")
    kind = str(field.type)
    kw: dict[str, Any] = {
        "help": _help(name),
        "default": default,
        "show_default": default is not None and default is not False,  # 0 and 0.0 are shown
    }
    if kind.startswith("bool | None"):
        decls = [f"{flag}/--no-{flag[2:]}"]
        kw["default"] = None
    elif kind.startswith("bool"):
        kw["is_flag"] = True
    elif kind.startswith("tuple"):
        kw["type"] = (float, float)
        kw["default"] = tuple(default)
    elif "choices" in field.metadata:
        kw["type"] = click.Choice(list(field.metadata["choices"]))
    elif kind.startswith("int"):
        kw["type"] = int
    elif kind.startswith("float"):
        kw["type"] = float
    kw.update(overrides)
    return click.option(*decls, name, **kw)


def training_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Every TrainConfig field that is a plain setting, as ``--field-name`` (data options and --device
    included); model options come from :func:`vqkit.cli.common.model_options`."""
    names = [
        n for n, fld in _FIELDS.items() if fld.metadata.get("cli", True) and n not in ("device", *DATA_FIELDS)
    ]
    return _apply(f, [*data_options_list(), *(config_option(n) for n in names), device_option_decl()])


def data_options_list(default: str | None = None) -> list[Decorator]:
    return [
        config_option("data", **({"default": default} if default else {})),
        config_option("data_root", type=click.Path(file_okay=False)),
        config_option("download"),
        config_option("skip_bad"),
    ]


def data_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--data``, ``--data-root``, ``--download``, ``--skip-bad``: where images come from."""
    return _apply(f, data_options_list())


def device_option_decl() -> Decorator:
    return click.option("--device", default="auto", show_default=True, help=_help("device"))


def device_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--device auto|cpu|cuda|cuda:N|mps``."""
    return device_option_decl()(f)


def output_option(help: str, *, required: bool = False, path_type: Any = None, **kw: Any) -> Decorator:
    """``-o/--output PATH``: how every command names what it writes."""
    from pathlib import Path

    return click.option(
        "-o",
        "--output",
        "output",
        required=required,
        type=click.Path(path_type=path_type or Path, **kw),
        default=None,
        help=help,
    )


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user gave option ``name`` (on the command line or through the environment)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source != click.core.ParameterSource.DEFAULT


def as_flags(exc: OptionError, flags: dict[str, str]) -> click.ClickException:
    """A library error that names parameters, said with the CLI's flags: the parameter it is about, and any
    other parameter written in backticks or as an identifier (```resume```, ``init_from``)."""
    import re

    message = str(exc)
    if getattr(exc, "source", None):  # about a file: its fields are named as the file spells them
        return click.ClickException(message)
    param = getattr(exc, "param", None)
    if param and param in flags and message.startswith(param):
        message = flags[param] + message[len(param) :]
    elif param and param in flags:
        message = f"{message} ({flags[param]})"

    def swap(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return flags.get(name, m.group(0).strip("`"))

    # `name` in backticks, or a bare identifier with an underscore, is a parameter.
    return click.ClickException(re.sub(r"`([a-z_]+)`|\b([a-z]+(?:_[a-z]+)+)\b", swap, message))


def scale_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--scale N``: enlarge an image sheet N times (nearest neighbour)."""
    return click.option(
        "--scale",
        type=click.IntRange(min=1, max=16),
        default=None,
        help="Enlarge the sheet this many times [default: tiles about 96 pixels tall].",
    )(f)
