"""``vqkit eval`` and ``vqkit reconstruct``: thin shells over :mod:`vqkit.evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vqkit.cli.options import config_option, data_options, device_option, output_option, scale_option


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
@click.argument("images", nargs=-1, type=click.Path())
@click.option(
    "--data",
    default=None,
    help="Reconstruct the first --limit images of a data source's --split instead of files: a folder, tar "
    "shards (a .tar, a pattern, a folder of shards), mnist5k or a torchvision dataset name.",
)
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="test", show_default=True)
@click.option(
    "--limit", type=click.IntRange(min=1), default=16, show_default=True, help="Images from --data."
)
@config_option("data_root", type=click.Path(file_okay=False))
@config_option("download")
@config_option("skip_bad")
@output_option("The grid PNG to write.", required=True, dir_okay=False)
@scale_option
@device_option
def reconstruct(
    model_path: str,
    images: tuple[str, ...],
    data: str | None,
    split: str,
    limit: int,
    data_root: str | None,
    download: bool,
    skip_bad: bool,
    output: Path,
    scale: int | None,
    device: str,
) -> None:
    """Encode and decode IMAGES (files, or folders searched recursively) or the images of --data with MODEL;
    write one grid, originals above their reconstructions.

    \b
    Examples:
      vqkit reconstruct runs/run-1/model.safetensors a.png b.png photos/ -o grid.png
      vqkit reconstruct runs/run-1/model.safetensors --data 'shards/train-{000..009}.tar' -o grid.png
    """
    from vqkit.errors import OptionError
    from vqkit.evaluate import reconstruct_files, reconstruct_source

    if bool(images) == bool(data):
        raise OptionError("give IMAGES (files or folders) or --data SOURCE, one of the two")
    if data:
        report = reconstruct_source(
            model_path,
            data,
            output,
            split=split,
            limit=limit,
            data_root=data_root,
            download=download,
            skip_bad=skip_bad,
            device=device,
            scale=scale,
        )
    else:
        report = reconstruct_files(model_path, list(images), output, device=device, scale=scale)
    click.echo(f"PSNR {report['psnr']:.2f} dB over {report['images']} image(s)")
    click.echo(f"saved      {output}")
