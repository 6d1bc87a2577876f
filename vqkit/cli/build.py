from __future__ import annotations

import os

import click

from vqkit.cli.common import model_kwargs, model_options


@click.command()
@model_options()
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    help="Write the model here: a .safetensors file, or with a trailing / (or an existing folder) a folder in "
    "the Hugging Face layout (config.json + model.safetensors).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the initial weights.")
def build(output: str | None, seed: int, **options: object) -> None:
    """Build a VQ-VAE from registered components, check that they fit together (one blank image through
    encoder, quantizer and decoder) and print its summary with every option each component resolved to.

    \b
    Examples:
      vqkit build -o model.safetensors
      vqkit build --quantizer rvq --set quantizer.codebook=ema -o model/
      vqkit build --preset original -o original.safetensors
    """
    from vqkit.model import build_model
    from vqkit.modelfile import HF_CONFIG, HF_WEIGHTS, save

    model = build_model(**model_kwargs(**options), seed=seed)  # type: ignore[arg-type]
    click.echo(model.describe())
    if output is not None:
        path = save(model, output)
        where = f"{path}{os.sep} ({HF_CONFIG} + {HF_WEIGHTS})" if path.is_dir() else str(path)
        click.echo(f"saved      {where}")
