"""Options shared by the commands that build a model (``build``, ``train``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from vqkit import presets
from vqkit.options import parse_sets
from vqkit.spec import DEFAULT_CHANNELS, DEFAULT_ENCODER, DEFAULT_IMAGE_SIZE, DEFAULT_QUANTIZER


def _part_help(kind: str, name: str, options: dict[str, Any] | None) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in (options or {}).items())
    return f"Registered {kind} name [default: {name}{f' with {shown}' if shown else ''}, or the preset's]."


def _preset_help() -> str:
    listing = " or ".join(f"{name} ({text})" for name, text in presets.DESCRIPTIONS.items())
    return f"Named model configuration: {listing}. Components and --set options given too override it."


def model_options(
    channels_default: int | None = DEFAULT_CHANNELS,
    image_size_default: int | None = DEFAULT_IMAGE_SIZE,
    model_defaults: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """Decorator adding --preset/--encoder/--quantizer/--decoder/--channels/--image-size/--latent-dim/
    --codebook-size/--set.

    Component options default to None (not given), so that a ``--preset`` can name them; ``model_defaults``
    names what is built when neither is given, for the help text."""
    d = model_defaults or {"encoder": DEFAULT_ENCODER, "quantizer": DEFAULT_QUANTIZER}

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        opts = [
            click.option("--preset", type=click.Choice(presets.names()), default=None, help=_preset_help()),
            click.option(
                "--encoder",
                default=None,
                help=_part_help("encoder", d["encoder"] or DEFAULT_ENCODER, d.get("encoder_options")),
            ),
            click.option(
                "--quantizer",
                default=None,
                help=_part_help("quantizer", d["quantizer"] or DEFAULT_QUANTIZER, d.get("quantizer_options")),
            ),
            click.option(
                "--decoder",
                default=None,
                help="Registered decoder name [default: the preset's, or the one named like the encoder].",
            ),
            click.option(
                "--channels",
                type=click.IntRange(min=1),
                default=channels_default,
                show_default=channels_default is not None,
                help="Image channels" + ("" if channels_default else " [default: from the data]") + ".",
            ),
            click.option(
                "--image-size",
                type=click.IntRange(min=1),
                default=image_size_default,
                show_default=image_size_default is not None,
                help="Image height and width"
                + ("" if image_size_default else " [default: from the data]")
                + ".",
            ),
            click.option(
                "--latent-dim",
                type=click.IntRange(min=1),
                default=None,
                help="Latent/code dim [default: quantizer's].",
            ),
            click.option(
                "--codebook-size",
                type=click.IntRange(min=2),
                default=None,
                help="Codes per codebook [default: quantizer's].",
            ),
            click.option(
                "--set",
                "sets",
                multiple=True,
                metavar="PART.KEY=VALUE",
                help="Any plugin option, e.g. quantizer.beta=0.5 or encoder.widths=32,64,128. Repeatable.",
            ),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


def model_kwargs(
    encoder: str | None,
    quantizer: str | None,
    decoder: str | None,
    channels: int | None,
    image_size: int | None,
    latent_dim: int | None,
    codebook_size: int | None,
    sets: tuple[str, ...],
    preset: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for :func:`vqkit.build_model` from the shared options (None: leave to defaults)."""
    parsed = parse_sets(sets)
    kwargs: dict[str, Any] = {
        "preset": preset,
        "encoder": encoder,
        "quantizer": quantizer,
        "decoder": decoder,
        "latent_dim": latent_dim,
        "codebook_size": codebook_size,
        "encoder_options": parsed["encoder"],
        "quantizer_options": parsed["quantizer"],
        "decoder_options": parsed["decoder"],
    }
    if channels is not None:
        kwargs["channels"] = channels
    if image_size is not None:
        kwargs["image_size"] = image_size
    return kwargs
