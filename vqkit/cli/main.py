"""The top-level ``vqkit`` group. Each command lives in its own module and is added below."""

from __future__ import annotations

import shlex
import warnings
from typing import Any

import click

from vqkit._version import __version__
from vqkit.errors import DuplicateComponentError, OptionError, PluginLoadError, VQKitError


class VQKitGroup(click.Group):
    """Turns a user's mistake (a :class:`VQKitError`) into one ``Error: ...`` line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VQKitError as exc:
            raise click.ClickException(_cli_message(exc, ctx)) from None


def _flags(ctx: click.Context) -> dict[str, str]:
    """Parameter name -> long flag, for the command being run (and, for a group, its subcommands)."""
    name = ctx.invoked_subcommand
    command = ctx.command.get_command(ctx, name) if name and isinstance(ctx.command, click.Group) else None
    commands = [command] if command is not None else []
    if isinstance(command, click.Group):
        commands += [command.get_command(ctx, n) for n in command.list_commands(ctx)]
    flags: dict[str, str] = {}
    for cmd in commands:
        for param in getattr(cmd, "params", []):
            longs = [o for o in param.opts if o.startswith("--")] if isinstance(param, click.Option) else []
            if longs and param.name:
                flags.setdefault(param.name, longs[0])
    return flags


def _cli_message(exc: VQKitError, ctx: click.Context | None = None) -> str:
    """The library's message, with what to do said in flags where the library names a Python parameter."""
    clash = exc.cause if isinstance(exc, PluginLoadError) else None
    if isinstance(exc, OptionError) and ctx is not None and exc.param and not exc.source:
        from vqkit.cli.options import as_flags

        return as_flags(exc, _flags(ctx)).message
    if not isinstance(clash, DuplicateComponentError):
        return str(exc)
    text = f"plugin {exc.source} failed to load: {clash.clash}"
    if clash.first == clash.second:
        return f"{text} (two of its components share the name: rename one)"
    return (
        f"{text}. To use this plugin's {clash.kind} instead, load it with "
        f"--plugin-override {shlex.quote(exc.source)}; to keep the one from {clash.first}, leave --plugin out"
    )


def _one_line_warnings() -> None:
    """Show vqkit's own warnings (plugins, data, prior) as one ``Warning: ...`` line on stderr.

    Installed once per process and idempotent; other libraries' warnings keep Python's usual format.
    """
    from vqkit.discovery import PluginWarning

    warnings.simplefilter("always", PluginWarning)
    if getattr(warnings.showwarning, "_vqkit", False):
        return
    original = warnings.showwarning

    def show(
        message: Any, category: Any, filename: Any, lineno: Any, file: Any = None, line: Any = None
    ) -> None:
        if getattr(category, "__module__", "").startswith("vqkit."):
            click.echo(f"Warning: {message}", err=True)
        else:
            original(message, category, filename, lineno, file, line)

    show._vqkit = True  # type: ignore[attr-defined]
    warnings.showwarning = show


@click.group(
    cls=VQKitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.version_option(__version__, prog_name="vqkit")
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE_OR_PATH",
    help="Load a plugin: a module (my_pkg.plugin), a file (./my_quantizer.py) or a package folder "
    "(./my_plugin/). Repeatable.",
)
@click.option(
    "--plugin-override",
    "overrides",
    multiple=True,
    metavar="MODULE_OR_PATH",
    help="Like --plugin, but its components replace registered ones of the same name (to try an edited "
    "copy of an installed plugin). Repeatable.",
)
def cli(plugins: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """vqkit: build, train, evaluate and export vector-quantized autoencoders (VQ-VAE)."""
    from vqkit.discovery import request

    _one_line_warnings()
    # Plugins load when a command first needs the registries (build_model, load, `vqkit plugins`).
    request(plugins)
    request(overrides, override=True)


def _add_commands() -> None:
    from vqkit.cli.build import build
    from vqkit.cli.codes import decode_command, encode_command
    from vqkit.cli.data import data_group
    from vqkit.cli.evaluate import eval_command, reconstruct
    from vqkit.cli.export import export_command
    from vqkit.cli.generate import interpolate, prior_group, sample
    from vqkit.cli.importing import import_command
    from vqkit.cli.plot import plot_command
    from vqkit.cli.plugins import plugins_command
    from vqkit.cli.train import train

    cli.add_command(build)
    cli.add_command(plugins_command)
    cli.add_command(train)
    cli.add_command(eval_command)
    cli.add_command(reconstruct)
    cli.add_command(prior_group)
    cli.add_command(sample)
    cli.add_command(interpolate)
    cli.add_command(export_command)
    cli.add_command(encode_command)
    cli.add_command(decode_command)
    cli.add_command(plot_command)
    cli.add_command(data_group)
    cli.add_command(import_command)


_add_commands()


def main() -> None:
    cli(prog_name="vqkit")
