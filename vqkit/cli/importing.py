from __future__ import annotations

import os
from pathlib import Path

import click


@click.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Write the vqkit model here: a .safetensors file, or with a trailing / a folder (config.json + "
    "model.safetensors).",
)
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    default=None,
    help="The YAML config of a taming-transformers / latent-diffusion checkpoint.",
)
@click.option(
    "--format",
    "fmt",
    default=None,
    help="The importer: diffusers or taming [default: recognised from SOURCE].",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=1),
    default=None,
    help="The image size the model is used at [default: the original training resolution].",
)
def import_command(
    source: Path, output: Path, config: Path | None, fmt: str | None, image_size: int | None
) -> None:
    """Import a published VQGAN tokenizer as a vqkit model file: a diffusers VQModel folder (config.json +
    weights) or a taming-transformers / latent-diffusion checkpoint with its YAML config. Pickled
    checkpoints are read without running any of their code; every config field and weight shape is checked
    before the model is built. The model file records where it came from.

    \b
    Examples:
      vqkit import ./vqgan-diffusers/ -o vqgan.safetensors
      vqkit import last.ckpt --config model.yaml -o vqgan.safetensors
    """
    from vqkit.importing import import_model
    from vqkit.modelfile import HF_CONFIG, HF_WEIGHTS

    model = import_model(source, output, config=config, format=fmt, image_size=image_size)
    click.echo(model.describe())
    where = f"{output}{os.sep} ({HF_CONFIG} + {HF_WEIGHTS})" if Path(output).is_dir() else str(output)
    click.echo(f"saved      {where}")
