from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from vqkit.registry import Entry


@click.command("plugins")
@click.argument("name", required=False)
@click.option("-v", "--verbose", is_flag=True, help="Show each option on its own line, with its type.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(name: str | None, verbose: bool, as_json: bool) -> None:
    """List registered encoders, quantizers, decoders and exporters: where each came from (built-in, a
    package and its version, or a file), what it is, and its options with their defaults. Plugins that
    failed to load are listed last, with their error.

    With NAME, show that component (any kind) in full.
    """
    from vqkit.discovery import components, find_components

    # A broken plugin (even one named with --plugin) must not hide the others: list it as broken instead.
    entries, broken = components(strict=False)
    if name is not None:
        entries = find_components(name, entries)
        verbose = True
    if as_json:
        data = {"components": [e.to_dict() for e in entries], "broken": [b.__dict__ for b in broken]}
        click.echo(json.dumps(data, indent=2))
        return
    for kind in ("encoder", "quantizer", "decoder", "exporter"):
        chosen = [e for e in entries if e.kind == kind]
        if chosen:
            click.echo(f"{kind}s:")
            for e in chosen:
                click.echo(_describe(e, verbose))
    if broken and name is None:
        click.echo("broken plugins (skipped):")
        for b in broken:
            click.echo(f"  {b.source}: {b.error}")


def _describe(e: Entry, verbose: bool) -> str:
    lines = [f"  {e.name:<14} {e.origin:<30} {e.summary}".rstrip()]
    if verbose:
        lines += [
            f"      {o.describe()}" + (f"  ({o.annotation})" if o.annotation else "") for o in e.options
        ]
        if e.details:
            lines += [f"      {line}" for line in textwrap.wrap(e.details, 100)]
    elif e.options:
        lines.append("      options: " + ", ".join(o.describe() for o in e.options))
    if e.accepts_any:
        lines.append("      (also takes any other keyword option)")
    return "\n".join(lines)
