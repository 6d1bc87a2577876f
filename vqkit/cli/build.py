from __future__ import annotations

from pathlib import Path

import click

from vqkit.cli.common import model_kwargs, model_options


@click.command()
@model_options()
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the model file here."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the initial weights.")
def build(output: Path | None, seed: int, **options: object) -> None:
    """Build a VQ-VAE from registered components and print its summary.

    \b
    Example: vqkit build --encoder conv3 --quantizer vq -o model.safetensors
    """
    from vqkit.model import build_model
    from vqkit.modelfile import save

    model = build_model(**model_kwargs(**options), seed=seed)  # type: ignore[arg-type]
    click.echo(model.describe())
    if output is not None:
        save(model, output)
        click.echo(f"saved      {output}")
