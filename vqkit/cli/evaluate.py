"""``vqkit eval`` and ``vqkit reconstruct``: thin shells over :mod:`vqkit.evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vqkit.cli.options import data_options, device_option, output_option, scale_option


@click.command("eval")
@click.argument("model_path", metavar="MODEL", type=click.Path())
@data_options
@click.option(
    "--split",
    type=click.Choice(["train", "test", "all"]),
    default="test",
    show_default=True,
    help="Which images (test: held out).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N images.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Images per forward pass.",
)
@device_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the JSON here.",
)
def eval_command(
    model_path: str,
    data: str,
    split: str,
    limit: int | None,
    data_root: str | None,
    download: bool,
    skip_bad: bool,
    batch_size: int,
    device: str,
    output: Path | None,
) -> None:
    """Reconstruction quality of MODEL on a dataset, as JSON: MSE, PSNR (dB), SSIM (and LPIPS when its weight
    file is in place), codes used, perplexity, bits per image, number of images.

    \b
    Example: vqkit eval runs/run-1/model.safetensors --data mnist5k -o eval.json
    """
    from vqkit.evaluate import evaluate_source

    report = evaluate_source(
        model_path,
        data,
        split=split,
        limit=limit,
        data_root=data_root,
        download=download,
        skip_bad=skip_bad,
        batch_size=batch_size,
        device=device,
    )
    text = json.dumps(report, indent=2)
    click.echo(text)
    if output is not None:
        from vqkit.fileio import atomic_path

        with atomic_path(output) as tmp:
            tmp.write_text(text + "\n")


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@output_option("The grid PNG to write.", required=True, dir_okay=False)
@scale_option
@device_option
def reconstruct(
    model_path: str, images: tuple[str, ...], output: Path, scale: int | None, device: str
) -> None:
    """Encode and decode IMAGES (files, or folders searched recursively) with MODEL; write one grid,
    originals above their reconstructions.

    \b
    Example: vqkit reconstruct runs/run-1/model.safetensors a.png b.png photos/ -o grid.png
    """
    from vqkit.evaluate import reconstruct_files

    report = reconstruct_files(model_path, list(images), output, device=device, scale=scale)
    click.echo(f"PSNR {report['psnr']:.2f} dB over {report['images']} image(s)")
    click.echo(f"saved      {output}")
