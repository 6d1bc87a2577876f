"""``vqkit train``: a thin shell over :func:`vqkit.training.train`. Its options are TrainConfig's fields."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from vqkit.cli.common import model_options
from vqkit.cli.options import as_flags, flag_of, given, training_options
from vqkit.errors import OptionError
from vqkit.training.config import TrainConfig

MODEL = ("encoder", "quantizer", "decoder", "latent_dim", "codebook_size", "preset")
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@click.command()
@model_options(channels_default=None, image_size_default=None)
@training_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read settings from a TOML or YAML file (e.g. a run folder's config.toml); options given here win.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train(
    ctx: click.Context, config_file: Path | None, quiet: bool, sets: tuple[str, ...], **options: Any
) -> None:
    """Train a VQ-VAE. With no options: the default model on the built-in mnist5k dataset, on whatever device
    is here (a few minutes on a laptop CPU).

    \b
    Examples:
      vqkit train
      vqkit train --encoder conv3 --quantizer vq --data ./my_images --image-size 64 --steps 20000 -o runs/a
      vqkit train --loss l1+lpips:0.1 --set loss.lpips.weights=lpips_vgg.safetensors
      vqkit train --config runs/a/config.toml -o runs/b
      vqkit train --model runs/a/model.safetensors --resume
      torchrun --nproc-per-node 4 -m vqkit train --data cifar10 --download
    """
    flags = {name: flag_of(name) for name in TrainConfig.__dataclass_fields__}
    flags.update({k: f"--{k.replace('_', '-')}" for k in (*MODEL, "channels", "image_size")})
    try:
        config = _config(ctx, config_file, sets, options)
        config.progress = not quiet
        config.validate()
    except OptionError as exc:
        raise as_flags(exc, flags) from None

    from vqkit.training import train as run

    try:
        result = run(config, log=lambda line: click.echo(line, err=True))
    except OptionError as exc:
        raise as_flags(exc, flags) from None
    if result.is_main:
        _summary(result, config)


def _config(
    ctx: click.Context, config_file: Path | None, sets: tuple[str, ...], options: dict[str, Any]
) -> TrainConfig:
    """Defaults < the resumed run's config or a config file < what was given on the command line."""
    from vqkit.options import parse_sets
    from vqkit.training.configfile import load_config

    resume, model_path = options.get("resume"), options.get("init_from")
    if resume and model_path:
        config = _resumed_config(model_path)
    elif config_file is not None:
        config = load_config(config_file)
    else:
        config = TrainConfig()
    names = [n for n in options if n not in MODEL and n not in ("channels", "image_size")]
    for name in names:
        if given(ctx, name):
            setattr(config, name, options[name])
    for name in ("channels", "image_size"):
        if given(ctx, name):
            setattr(config, name, options[name])
    loss_sets = tuple(s for s in sets if s.strip().startswith("loss."))
    part_sets = parse_sets(tuple(s for s in sets if s not in loss_sets))
    model = dict(config.model) if not (resume and model_path) else {}
    model.update({k: options[k] for k in MODEL if k in options and given(ctx, k)})
    for part, values in part_sets.items():
        if values:
            model[f"{part}_options"] = {**model.get(f"{part}_options", {}), **values}
    config.model = model
    config.loss_options = {**config.loss_options, **_loss_sets(loss_sets)}
    return config


def _resumed_config(model_path: str) -> TrainConfig:
    """A resumed run goes on as it was configured (options given now override, e.g. more --steps)."""
    from vqkit.fileio import shown_path
    from vqkit.modelfile import read_spec
    from vqkit.training.checkpoint import STATE_NAME, load_state, state_path_for
    from vqkit.training.configfile import in_source
    from vqkit.training.rundir import check_resumable

    check_resumable(Path(model_path), STATE_NAME)
    read_spec(model_path)  # a missing or broken model file is the clearer error
    state = state_path_for(model_path)
    try:
        config = TrainConfig.from_json(load_state(state)["config"])
    except OptionError as exc:
        raise in_source(exc, shown_path(state)) from None
    config.out = None
    return config


def _loss_sets(items: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``loss.NAME.KEY=VALUE`` -> ``{NAME: {KEY: VALUE}}``."""
    from vqkit.options import parse_value

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 3 or not all(parts):
            raise OptionError(
                f"--set {item!r}: expected loss.NAME.KEY=VALUE, e.g. loss.lpips.weights=vgg.safetensors"
            )
        out.setdefault(parts[1], {})[parts[2]] = parse_value(value)
    return out


def _summary(result: Any, config: TrainConfig) -> None:
    f = result.final
    click.echo(
        f"trained    {result.step - (result.resumed_from or 0)} steps in {result.seconds:.1f} s "
        f"({result.images_per_second:,.0f} images/s; {result.data_wait_share:.0%} of the time waiting for data)"
    )
    if f:
        click.echo(
            f"held-out   PSNR {f['psnr']:.2f} dB, MSE {f['mse']:.5f}, codes used {f['codes_used']}/{f['codebook_size']}, "
            f"perplexity {f['perplexity']:.1f} ({f['images']} {result.eval_split} images)"
        )
    for warning in result.warnings:
        click.echo(f"warning    {warning}", err=True)
    from vqkit.fileio import shown_path  # names that are not UTF-8 shown as \xNN: stdout may not take them

    model_path, run_dir = shown_path(result.model_path), shown_path(result.run_dir)
    click.echo(f"saved      {model_path}")
    click.echo(f"run folder {run_dir} (config.toml, metrics.jsonl, recon_*.png, train_state.pt)")
    if result.interrupted:
        why = f" by {result.signal_name}" if result.signal_name else ""
        click.echo(
            f"stopped{why} at step {result.step} of {result.steps}; continue with: "
            f"vqkit train --model {model_path} --resume",
            err=True,
        )
        sys.exit(EXIT_CODES.get(result.signal_name or "", 130))
    click.echo(f"next       vqkit eval {model_path} --data {shown_path(config.data)}")
