"""``vqkit prior train``, ``vqkit sample`` and ``vqkit interpolate``: thin shells over vqkit.generation.training and
vqkit.generation. torch is imported inside the commands only, so ``vqkit`` starts without it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vqkit.cli.options import as_flags, device_option, scale_option

MODEL = click.Path(path_type=Path)  # a model file, or a folder in the Hugging Face layout


@click.group("prior")
def prior_group() -> None:
    """Priors over a model's codes (autoregressive transformers), for `vqkit sample`."""


@prior_group.command("train")
@click.argument("model", type=MODEL)
@click.option(
    "--data",
    default="mnist5k",
    show_default=True,
    help="mnist5k, a folder of images, tar shards (a .tar, a pattern, a folder of shards) or a dataset name.",
)
@click.option(
    "-o",
    "--output",
    "--out",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the prior run.",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=1500, show_default=True, help="Optimizer steps in all."
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=128, show_default=True, help="Code maps per step."
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Peak learning rate.",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=1),
    default=250,
    show_default=True,
    help="Steps between held-out evaluations and checkpoints.",
)
@click.option("--width", type=click.IntRange(min=1), default=96, show_default=True, help="Transformer width.")
@click.option(
    "--layers", type=click.IntRange(min=1), default=3, show_default=True, help="Transformer blocks."
)
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True, help="Attention heads.")
@click.option(
    "--dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Dropout rate.",
)
@device_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights and batch order.")
@click.option("--resume", is_flag=True, help="Continue the run in --output (to --steps in all).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def prior_train(
    model: Path, out: Path, device: str, resume: bool, no_progress: bool, **options: object
) -> None:
    """Train a prior over MODEL's codes of --data; report held-out bits per image against the uniform prior.

    \b
    Example: vqkit prior train runs/a/model.safetensors --data mnist5k -o runs/a/prior
    Writes OUT/prior.safetensors, OUT/train_state.pt (for --resume) and OUT/metrics.jsonl. Ctrl-C or
    SIGTERM checkpoints and stops; --resume continues exactly.
    """
    from vqkit.errors import OptionError
    from vqkit.generation.training import PriorTrainConfig, train_prior

    cfg = PriorTrainConfig(**options)  # type: ignore[arg-type]
    flags = {name: f"--{name.replace('_', '-')}" for name in (*options, "resume", "device")}
    flags["out"] = "--output"
    try:
        result = train_prior(
            model, out, cfg, device=device, resume=resume, progress=not no_progress, log=click.echo
        )
    except OptionError as exc:
        raise as_flags(exc, flags) from None
    if result.interrupted:
        click.echo(f"stopped at step {result.step}; continue with --resume", err=True)
        sys.exit(143 if result.signal_name == "SIGTERM" else 130)


def _read_pictures(paths: tuple[Path, ...], model: object) -> object:
    from vqkit.images import read_images

    spec = model.spec  # type: ignore[attr-defined]
    return read_images(paths, spec.channels, spec.image_size)


@click.command()
@click.argument("model", type=MODEL)
@click.option(
    "--prior", "prior", required=True, help="A prior file or `vqkit prior train` folder, or `uniform`."
)
@click.option(
    "-n", "--num", "n", type=click.IntRange(min=1), default=64, show_default=True, help="Images to draw."
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Grid PNG."
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Below 1: likelier, plainer codes; above 1: more varied.",
)
@click.option(
    "--top-k", type=click.IntRange(min=1), default=None, help="Draw only among the k likeliest codes."
)
@click.option("--seed", type=int, default=None, help="Same seed, same images.")
@click.option(
    "--prefix",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="An image whose top code rows the prior completes; the sheet starts with it, the part kept bright.",
)
@click.option(
    "--prefix-rows",
    type=click.IntRange(min=1),
    default=None,
    help="How many code rows of --prefix to keep [default: 1]; must be fewer than the grid's rows.",
)
@click.option("--nrow", type=click.IntRange(min=1), default=None, help="Images per row [default: square].")
@scale_option
@device_option
def sample(
    model: Path,
    prior: str,
    n: int,
    output: Path,
    temperature: float,
    top_k: int | None,
    seed: int | None,
    prefix: Path | None,
    prefix_rows: int | None,
    nrow: int | None,
    scale: int | None,
    device: str,
) -> None:
    """Draw images from MODEL's codes: sampled from a trained --prior, or uniformly (--prior uniform).

    \b
    Example: vqkit sample runs/a/model.safetensors --prior runs/a/prior -n 64 -o samples.png --seed 0
    """
    import numpy as np
    import torch

    from vqkit.errors import OptionError
    from vqkit.generation.sampling import sample_images
    from vqkit.images import to_uint8, write_grid
    from vqkit.modelfile import load

    if prefix_rows is not None and prefix is None:
        raise OptionError("--prefix-rows needs --prefix: the image whose top code rows are kept")
    vq = load(model)
    codes_prefix, shown = None, None
    if prefix is not None:
        h = vq.grid[0]
        keep = prefix_rows or 1
        if not 1 <= keep < h:
            raise OptionError(f"--prefix-rows must lie in 1..{h - 1} for the model's {h}-row grid")
        picture = _read_pictures((prefix,), vq)
        x = torch.from_numpy(picture).float() / 127.5 - 1.0  # type: ignore[arg-type]
        rows = vq.encode(x)[:, :keep]
        codes_prefix = rows.expand(n, *rows.shape[1:])
        shown = _dim_below(picture, keep * (vq.spec.image_size // h))  # type: ignore[arg-type]
    flags = {"temperature": "--temperature", "top_k": "--top-k", "seed": "--seed", "n": "--num"}
    flags.update(device="--device", prior="--prior")
    try:
        images = sample_images(
            vq, prior, n, temperature=temperature, top_k=top_k, seed=seed, device=device, prefix=codes_prefix
        ).numpy()
    except OptionError as exc:
        raise as_flags(exc, flags) from None
    if shown is not None:  # the sheet starts with the prefix image, the rows that were kept bright
        images = np.concatenate([shown, to_uint8(images)])
    write_grid(images, output, nrow=nrow, scale=scale)
    first = " after the prefix image" if shown is not None else ""
    click.echo(f"wrote {n} samples{first} to {output}")


def _dim_below(picture: object, row: int) -> object:
    """The prefix image with everything below pixel row ``row`` dimmed to a quarter: what the prior was given."""
    import numpy as np

    shown = np.array(picture, copy=True)
    shown[..., row:, :] = shown[..., row:, :] // 4
    return shown


@click.command()
@click.argument("model", type=MODEL)
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--steps",
    type=click.IntRange(min=2),
    default=10,
    show_default=True,
    help="Images along the walk, ends included.",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Strip PNG."
)
@click.option("--with-inputs", is_flag=True, help="Put the two input images at the ends of the strip.")
@scale_option
@device_option
def interpolate(
    model: Path,
    image_a: Path,
    image_b: Path,
    steps: int,
    output: Path,
    with_inputs: bool,
    scale: int | None,
    device: str,
) -> None:
    """Walk from IMAGE_A to IMAGE_B in MODEL's latent space; write the decoded steps as one strip PNG.

    \b
    Example: vqkit interpolate runs/a/model.safetensors a.png b.png --steps 10 -o lerp.png
    """
    import numpy as np

    from vqkit.generation.sampling import interpolate as interpolate_latents
    from vqkit.generation.sampling import resolve_device
    from vqkit.images import to_float, write_grid
    from vqkit.modelfile import load

    vq = load(model, device=resolve_device(device))
    pictures = _read_pictures((image_a, image_b), vq)
    a, b = to_float(pictures)  # type: ignore[arg-type]
    images = interpolate_latents(vq, a, b, steps).numpy()
    if with_inputs:
        images = np.concatenate([a[None], images, b[None]])
    write_grid(images, output, nrow=len(images), scale=scale)
    click.echo(f"wrote {steps} steps from {image_a} to {image_b} to {output}")
