"""The training loop: ``train(config) -> TrainResult``.

Speed rules (issue 6): the data sit on the device (``Batches``); the step never waits on the host (metrics
accumulate in a device tensor and are read back every ``log_every`` steps, a NaN is caught there too); fused
Adam on CUDA; bf16 autocast with fp32 quantizer distances; channels-last on CUDA; optional torch.compile.
"""

from __future__ import annotations

import inspect
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vqkit import distributed as D
from vqkit.device import autocast, check_precision, resolve_device, use_channels_last
from vqkit.errors import VQKitError
from vqkit.evaluate import evaluate, reconstruct
from vqkit.images import write_grid
from vqkit.model import VQVAE
from vqkit.modelfile import load
from vqkit.training.batches import Batches
from vqkit.training.checkpoint import MODEL_NAME, load_state, restore_rng, save_checkpoint, state_path_for
from vqkit.training.config import TrainConfig
from vqkit.training.rundir import METRICS_NAME, MetricsLog, next_run_dir, prepare_run_dir
from vqkit.training.schedule import lr_at
from vqkit.training.setup import existing_model, load_training_images, new_model

STAT_KEYS = ("loss", "mse", "perplexity", "codes_used")
GRID_IMAGES = 8


class TrainingDiverged(VQKitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    step: int
    steps: int
    seconds: float
    images_per_second: float
    final: dict[str, Any] = field(default_factory=dict)  # held-out evaluation at the last step
    eval_split: str = "test"
    interrupted: bool = False
    resumed_from: int | None = None
    is_main: bool = True  # rank 0 (the process that wrote the files and should print)
    model: VQVAE | None = None


def train(
    config: TrainConfig,
    *,
    callback: Callable[[int, VQVAE], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a VQ-VAE as ``config`` says and return where everything went. ``callback(step, model)`` runs
    after every step (tests use it; a Python user can watch a run with it); ``log`` receives a few lines
    saying what is being trained, on what, and where it goes (rank 0 only)."""
    config.validate()
    device = resolve_device(config.device)
    if D.launched_by_torchrun() and device.type == "cuda":
        device = torch.device("cuda", D.local_rank())  # one process a GPU
    check_precision(config.precision, device)
    created_group = D.init_from_env(device)
    try:
        return _train(config, device, callback, log)
    finally:
        if created_group:
            D.destroy()


def _train(
    config: TrainConfig,
    device: torch.device,
    callback: Callable[[int, VQVAE], None] | None,
    log: Callable[[str], None] | None,
) -> TrainResult:
    rank, world = D.rank(), D.world_size()
    is_main = rank == 0
    torch.manual_seed(config.seed)

    # --- the model and the images --------------------------------------------------------------------------
    state = None
    if config.init_from:
        spec, model_path = existing_model(config)
        if config.resume:
            state = load_state(state_path_for(model_path))
            if state["spec"] != spec.to_json():
                raise VQKitError(
                    f"the training state beside {model_path} belongs to a different model than the file; "
                    "it cannot be resumed (was one of them copied from another run?)"
                )
        train_images, held_out, split = load_training_images(config, spec.channels, spec.image_size)
        model = load(model_path).train()
    else:
        train_images, held_out, split = load_training_images(config, config.channels, config.image_size)
        model = new_model(config, channels=train_images.shape[1], image_size=train_images.shape[-1])

    run_dir = _run_dir(config, is_main)
    if state is not None:
        model.load_state_dict(state["model"])
        restore_rng(state)
        start = int(state["step"])
    else:
        start = 0
    if start >= config.steps:
        raise VQKitError(
            f"the run in {run_dir} already trained {start} steps (asked: {config.steps}); "
            f"give --steps more than {start} to train further"
        )

    channels_last = use_channels_last(config.channels_last, device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, config, device)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    net: nn.Module = model
    if world > 1:
        net = _wrap_ddp(model, device)
    forward = torch.compile(net) if config.compile else net

    batches = Batches(
        train_images,
        config.batch_size,
        device,
        seed=config.seed,
        rank=rank,
        world=world,
        channels_last=channels_last,
    )
    metrics = MetricsLog(run_dir / METRICS_NAME, enabled=is_main, resume_step=start if state else None)
    config_json = config.to_json()
    if is_main:
        metrics.write(
            {
                "step": start,
                "event": "resume" if state else "start",
                "images": len(train_images),
                "world": world,
                "device": str(device),
                "config": config.to_json(),
            }
        )

    if log is not None and is_main:
        sp = model.spec
        h, w = model.grid
        log(
            f"model      {sp.encoder} + {sp.quantizer} + {sp.decoder}: {sp.channels}x{sp.image_size}x{sp.image_size} "
            f"images -> {h}x{w} codes of {model.quantizer.codebook_size}"
        )
        log(
            f"data       {config.data}: {len(train_images)} training images, {len(held_out)} for evaluation "
            f"({split} split)"
        )
        what = f"resuming at step {start} of {config.steps}" if state else f"{config.steps} steps"
        log(
            f"training   {what}, batch {config.batch_size}, on {device}"
            + (f" x {world}" if world > 1 else "")
        )
        log(f"run folder {run_dir}")

    # --- the loop -----------------------------------------------------------------------------------------
    acc = torch.zeros(len(STAT_KEYS) + 1, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    one = torch.ones(1, device=device)
    zero = torch.zeros((), device=device)
    last_good = start if state else None
    final: dict[str, Any] = {}
    t0 = time.perf_counter()
    t_window, window_images = t0, 0
    step = start
    interrupted = False
    bar = _progress(config, start, is_main)
    with _stop_on_sigint() as stop:
        try:
            for step in range(start, config.steps):
                lr = lr_at(
                    step,
                    lr=config.lr,
                    steps=config.steps,
                    warmup=config.warmup_steps,
                    schedule=config.schedule,
                    min_lr_ratio=config.min_lr_ratio,
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = batches.get(step)
                with autocast(config.precision, device):
                    out = (
                        forward(x) if not (config.compile and step == start) else _first_compiled(forward, x)
                    )
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()

                loss = out.loss.detach().float()
                stats = out.quantized.stats
                row = [
                    loss,
                    out.recon_loss.detach().float(),
                    *(
                        torch.as_tensor(stats.get(k, zero), dtype=torch.float32, device=device)
                        for k in STAT_KEYS[2:]
                    ),
                ]
                acc += torch.cat([torch.stack(row), one])
                first_bad.masked_fill_((first_bad < 0) & ~torch.isfinite(loss), step + 1)
                done = step + 1
                window_images += batches.local_batch * world
                if bar is not None:
                    bar.update(1)
                if callback is not None:
                    callback(done, model)

                want_eval = done == config.steps or (config.eval_every and done % config.eval_every == 0)
                want_ckpt = done == config.steps or (
                    config.checkpoint_every and done % config.checkpoint_every == 0
                )
                # Under DDP every rank must stop at the same step: the flag is agreed on at a read-back.
                stop_now = stop.requested if world == 1 else done % config.log_every == 0
                if not (want_eval or want_ckpt or stop_now or done % config.log_every == 0):
                    continue

                # --- read back (the only host sync) -------------------------------------------------------
                if world > 1:
                    flags = torch.tensor([float(stop.requested)], device=device)
                    D.all_reduce_max_(flags)
                    stop_now = bool(flags.item())
                D.all_reduce_sum_(acc)
                D.all_reduce_max_(first_bad)
                values = acc.tolist()
                bad_step = int(first_bad)
                if bad_step >= 0 or not all(math.isfinite(v) for v in values):
                    where = f"at step {bad_step}" if bad_step >= 0 else f"before step {done}"
                    if is_main:
                        metrics.write({"step": done, "event": "diverged", "first_bad_step": bad_step})
                    raise _diverged(f"the loss became NaN or infinite {where}", last_good, run_dir, config)
                n = max(values[-1], 1.0)
                means = dict(zip(STAT_KEYS, (v / n for v in values[:-1])))
                acc.zero_()
                now = time.perf_counter()
                speed = window_images / max(now - t_window, 1e-9)
                t_window, window_images = now, 0
                record = {
                    "step": done,
                    "lr": lr,
                    **means,
                    "psnr": _psnr(means["mse"]),
                    "images_per_s": speed,
                    "elapsed_s": now - t0,
                }
                if is_main:
                    metrics.write(record)
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{means['loss']:.4f}",
                            mse=f"{means['mse']:.4f}",
                            ppl=f"{means['perplexity']:.1f}",
                            codes=f"{means['codes_used']:.0f}",
                            refresh=False,
                        )
                if want_eval and is_main:
                    final = _evaluate(model, held_out, split, done, run_dir, metrics)
                if (want_ckpt or stop_now) and is_main:
                    if not _weights_finite(model):
                        raise _diverged(
                            f"a weight became NaN or infinite by step {done}", last_good, run_dir, config
                        )
                    save_checkpoint(run_dir, model, optimizer, done, config_json)
                    last_good = done
                if stop_now:
                    interrupted = done < config.steps
                    break
        finally:
            if bar is not None:
                bar.close()
    D.barrier()
    seconds = time.perf_counter() - t0
    done = step + 1 if config.steps > start else start
    if is_main:
        metrics.write(
            {"step": done, "event": "interrupted" if interrupted else "end", "seconds": seconds, **final}
        )
    trained = (done - start) * config.batch_size
    return TrainResult(
        run_dir=run_dir,
        model_path=run_dir / MODEL_NAME,
        step=done,
        steps=config.steps,
        seconds=seconds,
        images_per_second=trained / max(seconds, 1e-9),
        final=final,
        eval_split=split,
        interrupted=interrupted,
        resumed_from=start if state else None,
        is_main=is_main,
        model=model,
    )


def _first_compiled(forward: Any, x: torch.Tensor) -> Any:
    """The first call of a torch.compile'd model compiles it; a failure there (no C++ compiler, an op the
    compiler cannot handle) is the user's choice of --compile, so it gets one clear line."""
    try:
        return forward(x)
    except VQKitError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VQKitError(
            f"--compile failed while compiling the model ({first}); run without --compile"
        ) from exc


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    # Buffers (EMA statistics, ...) are reduced by the quantizers themselves (vqkit.distributed), so DDP need
    # not overwrite them with rank 0's every step (newer torch spells that forward_sync_buffers=False).
    ddp = nn.parallel.DistributedDataParallel
    sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp).parameters
        else {"broadcast_buffers": False}
    )
    # A 1-channel first conv gets gradients whose (size-1) channel stride differs from the bucket's: harmless.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return ddp(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,  # grads live in the all-reduce buckets: no extra copy
        **sync,
    )


def _run_dir(config: TrainConfig, is_main: bool) -> Path:
    if config.out:
        path = Path(config.out)
    elif config.resume:
        path = Path(config.init_from or "").parent
    else:
        path = next_run_dir() if is_main else Path()
        if D.is_distributed():  # every rank must name the same folder
            names = [str(path)]
            torch.distributed.broadcast_object_list(names, src=0)
            path = Path(names[0])
    if is_main:
        prepare_run_dir(path, resuming=config.resume and path == Path(config.init_from or "").parent)
    D.barrier()
    return path


def _optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # AdamW with weight_decay=0 is Adam; decoupled decay is the form that behaves with Adam when asked for.
    # fused=True on CUDA runs the whole update in one kernel per dtype group.
    kwargs: dict[str, Any] = {"lr": config.lr, "betas": config.betas, "weight_decay": config.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **kwargs)


def _psnr(mse: float) -> float:
    return 10 * math.log10(4.0 / mse) if mse > 0 and math.isfinite(mse) else math.inf


def _weights_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.state_dict().values() if p.is_floating_point())


def _diverged(what: str, last_good: int | None, run_dir: Path, config: TrainConfig) -> TrainingDiverged:
    kept = (
        f"the last good checkpoint (step {last_good}) is {run_dir / MODEL_NAME}"
        if last_good is not None
        else "no checkpoint had been written yet"
    )
    return TrainingDiverged(
        f"training stopped: {what}; {kept}. "
        f"Try a lower --lr (now {config.lr:g}), --grad-clip, or --precision fp32"
    )


def _evaluate(
    model: VQVAE, images: np.ndarray, split: str, step: int, run_dir: Path, metrics: MetricsLog
) -> dict[str, Any]:
    result = evaluate(model, images)
    _, recon = reconstruct(model, images[:GRID_IMAGES])
    grid = np.concatenate([images[:GRID_IMAGES], _uint8(recon)])
    write_grid(grid, run_dir / f"recon_{step:06d}.png", nrow=min(GRID_IMAGES, len(images)))
    metrics.write({"step": step, "event": "eval", "split": split, **result})
    return result


def _uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def _progress(config: TrainConfig, start: int, is_main: bool) -> Any:
    if not (config.progress and is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=start, desc="train", unit="step", dynamic_ncols=True, leave=True)


class _StopFlag:
    requested = False


@contextmanager
def _stop_on_sigint() -> Iterator[_StopFlag]:
    """The first Ctrl-C asks the loop to checkpoint and stop at the end of the step (under DDP at the next
    read-back, so every rank stops at the same step); a second one interrupts at once."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
