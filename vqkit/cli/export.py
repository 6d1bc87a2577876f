from __future__ import annotations

from pathlib import Path

import click

from vqkit.export.parity import DEFAULT_NUM_IMAGES
from vqkit.options import parse_value


@click.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Folder for the exported files."
)
@click.option("--format", "fmt", default="onnx", show_default=True, help="Registered exporter name.")
@click.option(
    "--opset",
    type=int,
    default=None,
    help="ONNX opset version [default: the exporter's, 18, the lowest it can write].",
)
@click.option(
    "--ir-version",
    type=int,
    default=None,
    help="ONNX IR version the files are stamped with [default: the lowest the opset allows, 8 for opset 18, "
    "which ONNX Runtime 1.16 loads].",
)
@click.option(
    "--codes-dtype",
    type=click.Choice(["int32", "int64"]),
    default=None,
    help="Integer type of the codes both graphs use [default: int32 where the codebook fits].",
)
@click.option(
    "--validate/--no-validate",
    default=True,
    show_default=True,
    help="Check the exported graphs against PyTorch on held-out images.",
)
@click.option(
    "--data",
    default=None,
    help="Images for the check: a folder, tar shards or a dataset name (its test split) [default: mnist5k].",
)
@click.option(
    "--num-images",
    type=click.IntRange(min=1),
    default=DEFAULT_NUM_IMAGES,
    show_default=True,
    help="Held-out images checked (at most; mnist5k has 500).",
)
@click.option(
    "--tolerance", type=float, default=1e-5, show_default=True, help="Decoder max abs difference allowed."
)
@click.option(
    "--tie-tolerance",
    type=click.FloatRange(min=0),
    default=1e-5,
    show_default=True,
    help="A code disagreement whose margin is below this fraction of |z|^2+|e|^2 is a float32 near-tie: "
    "listed, not a failure. 0: every disagreement fails except exact ties (both codes equally near), "
    "which are named and counted apart.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Exporter option, e.g. subpixel=true or uint8_encoder=true (also write encoder_uint8.onnx, which "
    "takes uint8 pixels [N, H, W, C]). Repeatable.",
)
def export_command(
    model: Path,
    output: Path,
    fmt: str,
    opset: int | None,
    ir_version: int | None,
    codes_dtype: str | None,
    validate: bool,
    data: str | None,
    num_images: int,
    tolerance: float,
    tie_tolerance: float,
    sets: tuple[str, ...],
) -> None:
    """Export MODEL (a .safetensors model file) as encoder/decoder graphs plus vqkit.json, and check parity.

    The encoder graph maps images [B, C, H, W] in [-1, 1] to integer codes, the decoder graph codes to
    images; vqkit.json and each graph's own metadata describe the preprocessing and the codes. The check runs
    PyTorch and ONNX Runtime on held-out images: codes must agree exactly (a disagreement that is a float32
    near-tie is listed with its margin, see --tie-tolerance), images within --tolerance. If it fails, the
    report is printed, nothing is written, and the exit code is 1.

    OUTPUT must be a new or empty folder, or an earlier export holding only the files it wrote; a folder
    with anything else in it is refused, never emptied.

    \b
    Example: vqkit export runs/a/model.safetensors -o tokenizer/
    """
    from vqkit.errors import OptionError
    from vqkit.export import ParityError, export

    options = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--set {item!r}: expected KEY=VALUE, e.g. subpixel=false")
        options[key.strip()] = parse_value(value)
    try:
        report = export(
            model,
            output,
            format=fmt,
            opset=opset,
            ir_version=ir_version,
            codes_dtype=codes_dtype,
            validate=validate,
            data=data,
            num_images=num_images,
            tolerance=tolerance,
            tie_tolerance=tie_tolerance,
            options=options,
        )
    except ParityError as exc:
        click.echo(exc.report.format())
        raise
    click.echo(report.format_text())
