"""``vqkit train``: a thin shell over :func:`vqkit.training.train`."""

from __future__ import annotations

import sys
from typing import Any

import click

from vqkit.cli.common import model_options
from vqkit.training.config import DEFAULTS

# CLI option -> TrainConfig field, for the options that map one to one.
DIRECT = {
    "data": "data",
    "data_root": "data_root",
    "download": "download",
    "skip_bad": "skip_bad",
    "out": "out",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "betas": "betas",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps",
    "schedule": "schedule",
    "min_lr_ratio": "min_lr_ratio",
    "grad_clip": "grad_clip",
    "eval_every": "eval_every",
    "eval_images": "eval_images",
    "checkpoint_every": "checkpoint_every",
    "log_every": "log_every",
    "device": "device",
    "precision": "precision",
    "compile": "compile",
    "channels_last": "channels_last",
    "seed": "seed",
    "channels": "channels",
    "image_size": "image_size",
}
MODEL = ("preset", "encoder", "quantizer", "decoder", "latent_dim", "codebook_size")


def _given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source != click.core.ParameterSource.DEFAULT


@click.command()
@model_options(channels_default=None, image_size_default=None, model_defaults=DEFAULTS["model"])
@click.option(
    "--data",
    default=DEFAULTS["data"],
    show_default=True,
    help="mnist5k, a folder of images, or a torchvision dataset name (mnist, cifar10, ...).",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Where torchvision datasets live [default: ~/.cache/vqkit or $VQKIT_DATA].",
)
@click.option("--download", is_flag=True, help="Download a torchvision dataset if it is not there yet.")
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Leave out unreadable images of a folder (and say how many) instead of stopping.",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Start from this model file (with --resume: continue its run).",
)
@click.option(
    "--resume", is_flag=True, help="Continue the run of --model exactly where its last checkpoint stopped."
)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder [default: runs/run-N, or the resumed run's].",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=DEFAULTS["steps"],
    show_default=True,
    help="Total optimizer steps.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULTS["batch_size"],
    show_default=True,
    help="Images per step, over all processes.",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS["lr"],
    show_default=True,
    help="Peak learning rate (Adam).",
)
@click.option("--betas", type=(float, float), default=(0.9, 0.999), show_default=True, help="Adam betas.")
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Decoupled weight decay (AdamW).",
)
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=DEFAULTS["warmup_steps"],
    show_default=True,
    help="Linear learning-rate warm-up.",
)
@click.option(
    "--schedule",
    type=click.Choice(["cosine", "constant"]),
    default="cosine",
    show_default=True,
    help="Learning rate after warm-up.",
)
@click.option(
    "--min-lr-ratio",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Cosine floor as a fraction of --lr.",
)
@click.option(
    "--grad-clip",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Clip the gradient norm to this.",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="Evaluate on held-out images and write recon_STEP.png every N steps (0: at the end only).",
)
@click.option(
    "--eval-images",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Held-out images per evaluation.",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="Write model + training state every N steps (0: at the end only).",
)
@click.option(
    "--log-every",
    type=click.IntRange(min=1),
    default=25,
    show_default=True,
    help="Read metrics back from the device every N steps.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="bf16: autocast (quantizer distances stay fp32).",
)
@click.option("--compile", is_flag=True, help="torch.compile the model.")
@click.option(
    "--channels-last/--no-channels-last",
    default=None,
    help="Channels-last memory format [default: on for CUDA and CPU].",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed for weights, data order and everything random.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train(
    ctx: click.Context,
    model_path: str | None,
    resume: bool,
    quiet: bool,
    sets: tuple[str, ...],
    **options: Any,
) -> None:
    """Train a VQ-VAE. With no options: the default model on the built-in mnist5k dataset, on whatever device
    is here (a few minutes on a laptop CPU).

    \b
    Examples:
      vqkit train
      vqkit train --encoder conv3 --quantizer vq --data ./my_images --image-size 64 --steps 20000 -o runs/a
      vqkit train --model runs/a/model.safetensors --resume
      torchrun --nproc-per-node 4 -m vqkit train --data cifar10 --download
    """
    from vqkit.modelfile import read_spec
    from vqkit.options import parse_sets
    from vqkit.training import TrainConfig
    from vqkit.training.checkpoint import load_state, state_path_for

    given = {name for name in [*DIRECT, *MODEL] if _given(ctx, name)}
    model_request: dict[str, Any] = {k: options[k] for k in MODEL if k in given}
    parsed = parse_sets(sets)
    for part in ("encoder", "quantizer", "decoder"):
        if parsed[part]:
            model_request[f"{part}_options"] = parsed[part]

    if resume and model_path:
        # The run goes on as it was configured; options given now override (e.g. more --steps).
        read_spec(model_path)  # a missing or broken model file is the clearer error
        config = TrainConfig.from_json(load_state(state_path_for(model_path))["config"])
        config.out = None
    else:
        config = TrainConfig()
        given |= set(DIRECT)
    for name, field_name in DIRECT.items():
        if name in given:
            setattr(config, field_name, options[name])
    config.model = model_request
    config.init_from = model_path
    config.resume = resume
    config.progress = not quiet

    from vqkit.training import train as run

    result = run(config, log=lambda line: click.echo(line, err=True))
    if not result.is_main:
        return
    f = result.final
    click.echo(
        f"trained    {result.step - (result.resumed_from or 0)} steps in {result.seconds:.1f} s "
        f"({result.images_per_second:,.0f} images/s)"
    )
    if f:
        click.echo(
            f"held-out   PSNR {f['psnr']:.2f} dB, MSE {f['mse']:.5f}, codes used {f['codes_used']}/{f['codebook_size']}, "
            f"perplexity {f['perplexity']:.1f} ({f['images']} {result.eval_split} images)"
        )
    click.echo(f"saved      {result.model_path}")
    click.echo(f"run folder {result.run_dir} (metrics.jsonl, recon_*.png, train_state.pt)")
    if result.interrupted:
        click.echo(
            f"stopped at step {result.step} of {result.steps}; continue with: "
            f"vqkit train --model {result.model_path} --resume",
            err=True,
        )
        sys.exit(130)
    click.echo(f"next       vqkit eval {result.model_path} --data {config.data}")
