"""``vqkit plot``: a thin shell over :func:`vqkit.plot.plot_run`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("plot")
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The PNG to write [default: curves.png in the run folder].",
)
def plot_command(run: Path, out: Path | None) -> None:
    """Draw a run's training curves to a PNG.

    Loss, PSNR and codes used (training means and held-out evaluations) and the learning rate, against the
    step. RUN is a run folder of `vqkit train` (or `vqkit prior train`) or its metrics.jsonl; a run can be
    plotted while it is still training.

    \b
    Example: vqkit plot runs/run-1 -o curves.png
    """
    from vqkit.plot import plot_run

    written = plot_run(run, out)  # unreadable lines: one "Warning: skipped N ..." line on stderr
    click.echo(f"wrote {written}")
