"""``vqkit encode`` / ``vqkit decode``: run an exported tokenizer with ONNX Runtime. No torch is imported."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _providers(provider: tuple[str, ...]) -> list[str] | None:
    return list(provider) or None


_provider_option = click.option(
    "--provider",
    multiple=True,
    metavar="NAME",
    help="ONNX Runtime execution provider, in order of preference: cpu, cuda or a full name [default: cpu].",
)
_batch_option = click.option(
    "--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Images per run."
)


@click.command("encode")
@click.argument("tokenizer", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--data",
    default=None,
    help="Encode a data source instead of files: a folder, tar shards (a .tar, a pattern, a folder of shards), "
    "mnist5k or a torchvision dataset name; read a batch at a time.",
)
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="all", show_default=True)
@click.option("--skip-bad", is_flag=True, help="Leave out images of --data that cannot be read (counted).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Codes file (.npy). The image each row belongs to is listed in a .json file of the same name.",
)
@_provider_option
@_batch_option
def encode_command(
    tokenizer: Path,
    images: tuple[Path, ...],
    data: str | None,
    split: str,
    skip_bad: bool,
    output: Path,
    provider: tuple[str, ...],
    batch_size: int,
) -> None:
    """Turn IMAGES (files or folders) into int64 codes [N, h, w] with an exported TOKENIZER folder.

    Images are converted to the tokenizer's channels, resized (shorter side) and centre-cropped to its size;
    folders are read recursively in sorted order, and the codes keep the order of the images. Beside
    OUTPUT (codes.npy) goes codes.json: {"codes": "codes.npy", "images": [path of row 0, row 1, ...], ...};
    a codes.json there that an earlier encode did not write for the same codes file is refused, not replaced.

    \b
    Examples: vqkit encode tokenizer/ photos/*.png -o codes.npy
              vqkit encode tokenizer/ --data 'shards/*.tar' -o codes.npy
    """
    import numpy as np

    from vqkit.errors import VQKitError
    from vqkit.fileio import atomic_path
    from vqkit.images import find_images
    from vqkit.runtime import Tokenizer

    names_file = output.with_suffix(".json")
    if names_file == output:
        raise VQKitError(
            f"give the codes file a .npy name, not {output.name} (the image names go to a .json)"
        )
    _refuse_foreign_names_file(names_file, output)
    if bool(images) == bool(data):
        raise VQKitError("give IMAGES (files or folders) or --data SOURCE, one of the two")
    tok = Tokenizer(tokenizer, providers=_providers(provider))
    if data:
        from vqkit.data.imageset import encode_source

        codes, names = encode_source(tok, data, split=split, batch_size=batch_size, skip_bad=skip_bad)
    else:
        paths: list[Path] = []
        for item in images:
            if item.is_dir():
                found = find_images(item)
                if not found:
                    raise VQKitError(f"no image files in folder {item}")
                paths.extend(found)
            else:
                paths.append(item)
        codes, names = tok.encode_files(paths, batch_size=batch_size), [str(p) for p in paths]
    with atomic_path(output) as tmp, open(tmp, "wb") as f:
        np.save(f, codes, allow_pickle=False)
    rows = {
        "codes": output.name,
        "images": names,
        "shape": list(codes.shape),
        "dtype": str(codes.dtype),
        "tokenizer": str(tokenizer),
    }
    with atomic_path(names_file) as tmp:
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
    click.echo(
        f"encoded    {len(names)} images -> {output} (int64 {list(codes.shape)}, codes < {tok.codebook_size}); "
        f"image names -> {names_file.name}"
    )


@click.command("decode")
@click.argument("tokenizer", type=click.Path(path_type=Path))
@click.argument("codes", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for PNGs."
)
@click.option(
    "--grid", type=click.Path(dir_okay=False, path_type=Path), help="Also write all images as one PNG."
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace PNGs (and the --grid file) that already exist [default: refuse].",
)
@_provider_option
@_batch_option
def decode_command(
    tokenizer: Path,
    codes: Path,
    output: Path,
    grid: Path | None,
    overwrite: bool,
    provider: tuple[str, ...],
    batch_size: int,
) -> None:
    """Turn CODES (a .npy file of integer codes, [N, h, w] or one image's [h, w]) into images with TOKENIZER.

    Writes OUTPUT/000000.png, 000001.png, ... in the order of the codes; existing files are not replaced
    unless --overwrite is given.

    \b
    Example: vqkit decode tokenizer/ codes.npy -o decoded/
    """
    import numpy as np

    from vqkit.errors import VQKitError
    from vqkit.images import write_grid, write_images
    from vqkit.runtime import Tokenizer

    tok = Tokenizer(tokenizer, providers=_providers(provider))
    try:
        array = np.load(codes, allow_pickle=False)
    except FileNotFoundError:
        raise VQKitError(f"no such codes file: {codes}") from None
    except (OSError, ValueError) as exc:
        raise VQKitError(f"cannot read codes from {codes} (expected a .npy array): {exc}") from exc
    if not isinstance(array, np.ndarray):
        raise VQKitError(f"{codes} holds several arrays; give a .npy file with one codes array")
    count = 1 if array.ndim == len(tok.codes_shape) else (len(array) if array.ndim else 0)
    if not overwrite:
        _refuse_existing([output / f"{i:06d}.png" for i in range(count)] + ([grid] if grid else []))
    images = tok.decode(array, batch_size=batch_size)
    if images.ndim == 3:
        images = images[None]
    written = write_images(images, output)
    click.echo(f"decoded    {len(written)} images -> {output}/")
    if grid is not None:
        write_grid(images, grid)
        click.echo(f"grid       {grid}")


def _refuse_foreign_names_file(names_file: Path, output: Path) -> None:
    """The .json beside the codes is named by us, not by the user: replace it only when it is the image
    list an earlier encode wrote for the same codes file, never a file of the user's that happens to sit there."""
    from vqkit.errors import VQKitError

    if not names_file.exists() and not names_file.is_symlink():
        return
    try:
        rows = json.loads(names_file.read_text(encoding="utf-8"))
        ours = (
            not names_file.is_symlink()
            and isinstance(rows, dict)
            and rows.get("codes") == output.name
            and isinstance(rows.get("images"), list)
        )
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise VQKitError(
            f"{names_file} exists and is not an image list that vqkit encode wrote for {output.name}; "
            f"the image names would replace it: move it away or give the codes file another name"
        )


def _refuse_existing(paths: list[Path]) -> None:
    from vqkit.errors import VQKitError

    existing = [p for p in paths if p.exists()]
    if existing:
        what = (
            f"{existing[0]} and {len(existing) - 1} more exist"
            if len(existing) > 1
            else f"{existing[0]} exists"
        )
        raise VQKitError(f"{what} already; give another folder, or --overwrite to replace them")
