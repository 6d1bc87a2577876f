from __future__ import annotations

import difflib
import json

import click

from vqkit.errors import UnknownComponentError


@click.command("plugins")
@click.argument("name", required=False)
@click.option("-v", "--verbose", is_flag=True, help="Show every option with its default.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(name: str | None, verbose: bool, as_json: bool) -> None:
    """List registered encoders, quantizers, decoders and exporters, with where each came from.

    With NAME, show that component (any kind) and its options.
    """
    from vqkit.discovery import broken, load_plugins
    from vqkit.registry import REGISTRIES

    load_plugins()
    entries = [e for reg in REGISTRIES.values() for e in reg.entries()]
    if name is not None:
        entries = [e for e in entries if e.name == name]
        if not entries:
            names = sorted({e.name for reg in REGISTRIES.values() for e in reg.entries()})
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownComponentError(
                f"no plugin component named {name!r}.{hint} Run `vqkit plugins` to list them."
            )
        verbose = True
    if as_json:
        data = {"components": [e.to_dict() for e in entries], "broken": [b.__dict__ for b in broken]}
        click.echo(json.dumps(data, indent=2))
        return
    for kind in REGISTRIES:
        chosen = [e for e in entries if e.kind == kind]
        if not chosen:
            continue
        click.echo(f"{kind}s:")
        for e in chosen:
            click.echo(f"  {e.name:<14} {e.origin:<28} {e.summary}")
            if verbose:
                for o in e.options:
                    click.echo(f"      {o.describe()}")
                if e.accepts_any:
                    click.echo("      (also takes any other keyword option)")
    if broken and name is None:
        click.echo("broken plugins:")
        for b in broken:
            click.echo(f"  {b.source}: {b.error}")
