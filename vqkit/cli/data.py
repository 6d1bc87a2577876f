"""``vqkit data``: preparing image data for training (``vqkit data pack FOLDER -o shards/``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import click


@click.group("data")
def data_group() -> None:
    """Prepare image data for training."""


@data_group.command("pack")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option(
    "-o",
    "--output",
    "--out",
    "out",
    required=True,
    type=click.Path(),
    help="Folder for the shards: new, empty, or an earlier pack's (never a folder holding other files).",
)
@click.option(
    "--shard-size", type=click.IntRange(min=1), default=1000, show_default=True, help="Images per shard."
)
@click.option("--prefix", default="shard", show_default=True, help="Shard file names: PREFIX-000000.tar, ...")
@click.option("--skip-bad", is_flag=True, help="Leave out unreadable images (counted) instead of stopping.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def pack_command(folder: str, out: str, shard_size: int, prefix: str, skip_bad: bool, progress: bool) -> None:
    """Pack every image under FOLDER (recursive) into uncompressed tar shards for streaming.

    Images keep their bytes and folder-relative names, so training on the shards (--data OUT) sees the
    same images, the same held-out split and the same order as training on FOLDER, without listing or
    opening a million small files. Example: vqkit data pack photos/ -o shards/ && vqkit train --data shards/
    """
    from vqkit.data.pack import check_output, pack_folder
    from vqkit.images import find_image_names

    check_output(Path(out), prefix)  # before the bar: a refusal is one line
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len(find_image_names(folder)) if Path(folder).is_dir() else 0
        bar = tqdm(total=total, desc="pack", unit="img", dynamic_ncols=True)
    try:
        result = pack_folder(
            folder, out, shard_size=shard_size, prefix=prefix, skip_bad=skip_bad, progress=bar and bar.update
        )
    finally:
        if bar is not None:
            bar.close()
    if result.skipped:
        why = result.skipped[0][1]
        from vqkit.data import DataWarning

        warnings.warn(
            f"left out {len(result.skipped)} unreadable image(s), e.g. {why}", DataWarning, stacklevel=1
        )
    from vqkit.fileio import shown_path

    click.echo(
        f"packed {result.images} images into {len(result.shards)} shard(s) in {shown_path(result.out)}"
    )
