from __future__ import annotations

import json
import shlex
import shutil
import textwrap
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from vqkit.discovery import BrokenPlugin
    from vqkit.registry import Entry

KINDS = ("encoder", "quantizer", "decoder", "objective", "exporter")
INDENT = " " * 6  # options and details, under the component's name
MIN_COLUMN = 30  # narrower than this, a summary goes under its name instead of beside it


@click.command("plugins")
@click.argument("name", required=False)
@click.option("-v", "--verbose", is_flag=True, help="Show each option on its own line, with its type.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(name: str | None, verbose: bool, as_json: bool) -> None:
    """List registered encoders, quantizers, decoders, objectives (losses) and exporters: where each came
    from (built-in, a package and its version, or a file), what it is, and its options with their defaults.
    Plugins that failed to load are listed last, with their error.

    With NAME, show that component (any kind) in full. Lines fit the terminal's width (COLUMNS).
    """
    from vqkit.discovery import components, find_components

    # A broken plugin (even one named with --plugin) must not hide the others: list it as broken instead.
    entries, broken = components(strict=False)
    if name is not None:
        entries = find_components(name, entries)
        verbose = True
    if as_json:
        data = {
            "components": [e.to_dict() for e in entries],
            "broken": [{"source": b.source, "error": b.error} for b in broken],
        }
        click.echo(json.dumps(data, indent=2))
        return
    width = max(40, shutil.get_terminal_size().columns)
    name_width = min(16, max((len(e.name) for e in entries), default=0))
    origin_width = min(30, max((len(e.origin) for e in entries), default=0))
    for kind in KINDS:
        chosen = [e for e in entries if e.kind == kind]
        if chosen:
            click.echo(f"{kind}s:")
            for e in chosen:
                click.echo(_describe(e, verbose, width, name_width, origin_width))
    if broken:
        # With NAME too: the component asked for may be the one a broken plugin would have provided.
        click.echo("broken plugins (skipped):" if name is None else "plugins that failed to load:")
        click.echo(_broken(broken, width))


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    lines = textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False)
    return lines or [first.rstrip()]


def _describe(e: Entry, verbose: bool, width: int, name_width: int, origin_width: int) -> str:
    """``  name  origin  summary`` with the summary wrapped in its column, or under the name when the
    column would be too narrow (a narrow terminal, a long origin)."""
    head = f"  {e.name:<{name_width}}  {e.origin:<{origin_width}}  "
    if width - len(head) >= MIN_COLUMN:
        lines = _wrap(e.summary, width, head, " " * len(head))
    else:
        lines = _wrap(f"{e.name}  {e.origin}", width, "  ", INDENT)
        lines += _wrap(e.summary, width, INDENT, INDENT) if e.summary else []
    if verbose:
        for o in e.options:
            option = o.describe() + (f"  ({o.annotation})" if o.annotation else "")
            lines += _wrap(option, width, INDENT, INDENT + "  ")
        if e.details:
            lines += _wrap(e.details, width, INDENT, INDENT)
    elif e.options:
        options = ", ".join(o.describe() for o in e.options)
        lines += _wrap(f"options: {options}", width, INDENT, INDENT + " " * len("options: "))
    if e.accepts_any:
        lines.append(f"{INDENT}(also takes any other keyword option)")
    return "\n".join(lines)


def _broken(broken: list[BrokenPlugin], width: int) -> str:
    lines = []
    for b in broken:
        lines += _wrap(f"{b.source}: {b.error}", width, "  ", INDENT)
        if b.clash and b.spec:  # named with --plugin: say how to let it replace the other one
            hint = f"to use it instead, load it with --plugin-override {shlex.quote(b.spec)}"
            lines += _wrap(hint, width, INDENT, INDENT)
    return "\n".join(lines)
