"""``vqkit encode`` / ``vqkit decode``: run an exported tokenizer with ONNX Runtime. No torch is imported."""

from __future__ import annotations

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
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Codes file (.npy).",
)
@_provider_option
@_batch_option
def encode_command(
    tokenizer: Path, images: tuple[Path, ...], output: Path, provider: tuple[str, ...], batch_size: int
) -> None:
    """Turn IMAGES (files or folders) into int64 codes [N, h, w] with an exported TOKENIZER folder.

    Images are converted to the tokenizer's channels, resized (shorter side) and centre-cropped to its size;
    folders are read recursively in sorted order, and the codes keep the order of the images.

    \b
    Example: vqkit encode tokenizer/ photos/*.png -o codes.npy
    """
    import numpy as np

    from vqkit.errors import VQKitError
    from vqkit.fileio import atomic_path
    from vqkit.images import find_images
    from vqkit.runtime import Tokenizer

    tok = Tokenizer(tokenizer, providers=_providers(provider))
    paths: list[Path] = []
    for item in images:
        if item.is_dir():
            found = find_images(item)
            if not found:
                raise VQKitError(f"no image files in folder {item}")
            paths.extend(found)
        else:
            paths.append(item)
    codes = tok.encode_files(paths, batch_size=batch_size)
    with atomic_path(output) as tmp, open(tmp, "wb") as f:
        np.save(f, codes, allow_pickle=False)
    click.echo(
        f"encoded    {len(paths)} images -> {output} (int64 {list(codes.shape)}, codes < {tok.codebook_size})"
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
@_provider_option
@_batch_option
def decode_command(
    tokenizer: Path, codes: Path, output: Path, grid: Path | None, provider: tuple[str, ...], batch_size: int
) -> None:
    """Turn CODES (a .npy file of integer codes, [N, h, w] or one image's [h, w]) into images with TOKENIZER.

    Writes OUTPUT/000000.png, 000001.png, ... in the order of the codes.

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
    images = tok.decode(array, batch_size=batch_size)
    if images.ndim == 3:
        images = images[None]
    written = write_images(images, output)
    click.echo(f"decoded    {len(written)} images -> {output}/")
    if grid is not None:
        write_grid(images, grid)
        click.echo(f"grid       {grid}")
