"""Training a VQ-VAE: ``train(config) -> TrainResult``.

Reading order: :func:`train` picks the device and process group; :class:`VQVAETrainer` sets up the model, the
data, the objective and the run folder, and says what one step, a read-back, an evaluation and a checkpoint
do; :func:`vqkit.training.engine.run_steps` (shared with the prior trainer) runs the steps.

Speed rules: the data sit on the device; the step never waits on the host (metrics accumulate in a device
tensor, read back every ``log_every`` steps); fused Adam on CUDA; bf16 autocast with fp32 quantizer distances;
channels-last; optional torch.compile.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vqkit import distributed as D
from vqkit.device import autocast, check_precision, device_note, resolve_device, use_channels_last
from vqkit.errors import VQKitError
from vqkit.evaluate import evaluate, reconstruct
from vqkit.images import write_grid
from vqkit.metrics_sinks import METRICS_CSV, TENSORBOARD_DIR, require_tensorboard
from vqkit.model import VQVAE, resolve_names
from vqkit.objectives import build_loss, check_loss, decoder_last_layer
from vqkit.pixels import psnr, to_uint8
from vqkit.training.checkpoint import MODEL_NAME, STATE_NAME, restore_rng, save_checkpoint
from vqkit.training.config import TrainConfig
from vqkit.training.configfile import CONFIG_NAME, write_config_toml
from vqkit.training.data import open_training_data
from vqkit.training.engine import Cadence, LoopEnd, Progress, Say, Window, run_steps
from vqkit.training.health import collapse_warning
from vqkit.training.rundir import METRICS_NAME, MetricsLog, RunLock, next_run_dir, prepare_run_dir
from vqkit.training.schedule import lr_at
from vqkit.training.setup import describe_model, model_and_state, model_lr

GRID_IMAGES = 8
RUN_FILES = (MODEL_NAME, STATE_NAME, METRICS_NAME, METRICS_CSV, TENSORBOARD_DIR)


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
    signal_name: str | None = None  # "SIGINT"/"SIGTERM" when a signal stopped the run
    resumed_from: int | None = None
    is_main: bool = True  # rank 0 (the process that wrote the files and should print)
    model: VQVAE | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. a collapsed codebook, with what to try
    data_wait_share: float = 0.0  # share of the loop's time spent waiting for data


def train(
    config: TrainConfig,
    *,
    callback: Callable[[int, VQVAE], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a VQ-VAE as ``config`` says and return where everything went. ``callback(step, model)`` runs
    after every step; ``log`` receives the run's header, one line per evaluation and warnings (rank 0 only)."""
    config.validate()
    device = D.device_for_this_process(resolve_device(config.device))
    check_precision(config.precision, device)
    created_group = D.init_from_env(device)
    try:
        torch.manual_seed(config.seed)
        trainer = VQVAETrainer(config, device, log if D.rank() == 0 else None)
        try:
            end = trainer.run(callback)
        finally:
            trainer.close()
        return trainer.result(end)
    finally:
        if created_group:
            D.destroy()


class VQVAETrainer:
    """One VQ-VAE run: set up in the constructor, driven by :func:`run_steps`."""

    stat_names: tuple[str, ...]

    def __init__(self, config: TrainConfig, device: torch.device, log: Say | None) -> None:
        self.config, self.device, self.say = config, device, log or (lambda _line: None)
        self.rank, self.world = D.rank(), D.world_size()
        self.is_main = self.rank == 0
        if config.tensorboard:
            require_tensorboard()  # before anything slow: a missing package is one line at once
        model, state = model_and_state(config)
        # Every name and option is checked before the data are read: a typo costs milliseconds, not a decode.
        check_loss(config.loss, config.loss_options)
        if model is None:
            resolve_names(**config.model)
        self.state = state
        self.start = int(state["step"]) if state else 0
        self.channels_last = use_channels_last(config.channels_last, device)
        spec = model.spec if model is not None else None
        self.data, self.held_out = open_training_data(
            config,
            spec.channels if spec else config.channels,
            spec.image_size if spec else config.image_size,
            device,
            rank=self.rank,
            world=self.world,
            channels_last=self.channels_last,
        )
        if model is None:
            from vqkit.training.setup import new_model

            model = new_model(config, self.data.channels, self.data.image_size)
        self.model = model
        if config.lr is None:  # the architecture's own lr; config.toml and the header show the value used
            self.config = config = replace(config, lr=model_lr(model))
        self.run_dir, self.lock = self._run_dir()
        if state is not None:
            model.load_state_dict(state["model"])
            restore_rng(state)
        else:  # a new model and one read from a file start training from the same random state
            torch.manual_seed(config.seed)
        if self.start >= config.steps:
            raise VQKitError(
                f"the run in {self.run_dir} already trained {self.start} steps (asked: {config.steps}); "
                f"give more than {self.start} steps to train further"
            )
        self._build_step()
        self.metrics = self._open_metrics()
        self.final: dict[str, Any] = {}
        self.warnings: list[str] = []
        self._header()

    # --- set-up --------------------------------------------------------------------------------------------
    def _build_step(self) -> None:
        config, model, device = self.config, self.model, self.device
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.optimizer = _optimizer(model, config, device)
        self.loss_fn = build_loss(config.loss, config.loss_options, device)
        self.objective_stats: dict[str, torch.Tensor] = {}
        if self.state is not None:
            self.optimizer.load_state_dict(self.state["optimizer"])
            self.loss_fn.load_training_state(self.state.get("objectives") or {})
        net: nn.Module = _wrap_ddp(model, device) if self.world > 1 else model
        self.forward = torch.compile(net) if config.compile else net
        self.last_layer = decoder_last_layer(model.decoder)
        self.terms = tuple(getattr(self.loss_fn, "weights", {"mse": 1.0}))
        extra = () if self.terms == ("mse",) else tuple(f"loss_{t}" for t in self.terms)
        self.stat_names = ("loss", "mse", "perplexity", "codes_used", *extra)
        self._zero = torch.zeros((), device=device)

    def _run_dir(self) -> tuple[Path, RunLock | None]:
        config = self.config
        if config.out:
            path = Path(config.out)
        elif config.resume:
            path = Path(config.init_from or "").parent
        else:
            path = next_run_dir() if self.is_main else Path()
            if D.is_distributed():  # every rank must name the same folder
                names = [str(path)]
                torch.distributed.broadcast_object_list(names, src=0)
                path = Path(names[0])
        lock = None
        if self.is_main:
            resuming = config.resume and path == Path(config.init_from or "").parent
            hint = f"continue it with `init_from` {path / MODEL_NAME} and `resume`, or choose another `out`"
            lock = prepare_run_dir(
                path, resuming=resuming, owned=RUN_FILES, hint=hint, checkpoint=(MODEL_NAME, STATE_NAME)
            )
        D.barrier()
        return path, lock

    def _open_metrics(self) -> MetricsLog:
        config, resumed = self.config, self.state is not None
        sinks = []
        if self.is_main and (config.csv or config.tensorboard):
            from vqkit.metrics_sinks import open_sinks

            sinks = open_sinks(
                self.run_dir,
                csv=config.csv,
                tensorboard=config.tensorboard,
                resume_step=self.start if resumed else None,
            )
        metrics = MetricsLog(
            self.run_dir / METRICS_NAME,
            enabled=self.is_main,
            resume_step=self.start if resumed else None,
            sinks=sinks,
        )
        if self.is_main:
            write_config_toml(self.run_dir / CONFIG_NAME, config.to_dict(run_control=False))
            metrics.write(
                {
                    "step": self.start,
                    "event": "resume" if resumed else "start",
                    "images": getattr(self.data, "count", None),
                    "world": self.world,
                    "device": str(self.device),
                    "config": config.to_dict(),
                }
            )
        return metrics

    def _header(self) -> None:
        config, model = self.config, self.model
        for line in describe_model(model):
            self.say(line)
        self.say(
            f"data       {self.data.description}; {len(self.held_out.images)} held out ({self.held_out.split} split)"
        )
        warm = config.warmup()
        capped = (
            f" (asked {config.warmup_steps}, capped at a fifth of the run)"
            if warm < config.warmup_steps
            else ""
        )
        what = f"resuming at step {self.start} of {config.steps}" if self.start else f"{config.steps} steps"
        self.say(
            f"training   {what}, batch {config.batch_size}, lr {config.lr:g} ({config.schedule}, warm-up {warm} "
            f"steps{capped}), loss {self.loss_fn.spec}, on {self.device}"
            + (f" x {self.world}" if self.world > 1 else "")
            + (f", {config.precision}" if config.precision != "fp32" else "")
        )
        note = device_note(self.device) if config.device in ("auto", "", None) else None
        if note:
            self.say(f"device     {note}")
        self.say(f"run folder {self.run_dir}")

    # --- what the engine calls -----------------------------------------------------------------------------
    def run(self, callback: Callable[[int, VQVAE], None] | None) -> LoopEnd:
        config = self.config
        progress = Progress(
            config.progress and self.is_main, config.steps, self.start, "train", fallback=self.say
        )
        self.say, self.progress = progress.say, progress
        try:
            return run_steps(
                self,
                start=self.start,
                cadence=Cadence(config.steps, config.log_every, config.eval_every, config.checkpoint_every),
                device=self.device,
                items_per_step=self.data.local_batch * self.world,
                progress=progress,
                callback=(lambda done: callback(done, self.model)) if callback else None,
            )
        finally:
            progress.close()

    def step(self, step: int) -> torch.Tensor:
        config = self.config
        self.lr = lr_at(
            step,
            lr=config.lr,
            steps=config.steps,
            warmup=config.warmup(),
            schedule=config.schedule,
            min_lr_ratio=config.min_lr_ratio,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        x = self.data.get(step)
        with autocast(config.precision, self.device):
            out = self._forward(x, step)
            rec, terms = self.loss_fn(x, out.reconstruction, step=step, last_layer=self.last_layer)
        loss = rec + out.quantized.loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.objective_stats = self.loss_fn.update(x, out.reconstruction.detach(), step=step)
        stats = out.quantized.stats
        mse = terms.get("mse")
        if mse is None:
            mse = F.mse_loss(out.reconstruction.detach().float(), x.float())
        row = [loss.detach(), mse, stats.get("perplexity", self._zero), stats.get("codes_used", self._zero)]
        if len(self.stat_names) > 4:
            row += [terms[t] for t in self.terms]
        return torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in row])

    def _forward(self, x: torch.Tensor, step: int) -> Any:
        if not (self.config.compile and step == self.start):
            return self.forward(x)
        # The first call of a torch.compile'd model compiles it; a failure there (no C++ compiler, an op the
        # compiler cannot handle) is the user's choice of compile, so it gets one clear line.
        try:
            return self.forward(x)
        except VQKitError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VQKitError(
                f"compile failed while compiling the model ({first}); train without compile"
            ) from exc

    def log(self, done: int, means: dict[str, float], window: Window) -> None:
        record = {
            "step": done,
            "lr": self.lr,
            **means,
            "psnr": psnr(means["mse"]),
            "images_per_s": window.per_second,
            "data_wait_s": self.data.wait_seconds,
            "elapsed_s": window.elapsed,
            # a trainable objective's latest stats (the discriminator's loss, ...), read at this read-back only
            **{k: float(v) for k, v in self.objective_stats.items()},
        }
        self.metrics.write(record)
        self.progress.show(
            loss=f"{means['loss']:.4f}",
            mse=f"{means['mse']:.4f}",
            ppl=f"{means['perplexity']:.1f}",
            codes=f"{means['codes_used']:.0f}",
        )

    def evaluate(self, done: int, say: Say) -> None:
        if not self.is_main:
            return
        model, images = self.model, self.held_out.images
        result = evaluate(model, images)
        _, recon = reconstruct(model, images[:GRID_IMAGES])
        grid_recon = to_uint8(recon).cpu().numpy()
        write_grid(
            np.concatenate([images[:GRID_IMAGES], grid_recon]),
            self.run_dir / f"recon_{done:06d}.png",
            nrow=min(GRID_IMAGES, len(images)),
        )
        self.metrics.write({"step": done, "event": "eval", "split": self.held_out.split, **result})
        self.final = result
        say(
            f"eval {done:>7}  held-out PSNR {result['psnr']:.2f} dB  MSE {result['mse']:.5f}  "
            f"codes {result['codes_used']}/{result['codebook_size']}  perplexity {result['perplexity']:.1f}"
        )
        warning = collapse_warning(result, images[: len(grid_recon)], grid_recon)
        if warning:
            say(f"warning    {warning}")
            if done == self.config.steps:
                self.warnings.append(warning)

    def checkpoint(self, done: int) -> None:
        if self.is_main:
            save_checkpoint(
                self.run_dir,
                self.model,
                done,
                optimizer=self.optimizer.state_dict(),
                objectives=self.loss_fn.training_state(),
                config=self.config.to_json(),
            )

    def weights_finite(self) -> bool:
        values = self.model.state_dict().values()
        return all(bool(torch.isfinite(p).all()) for p in values if p.is_floating_point())

    def diverged(self, what: str, last_good: int | None) -> Exception:
        self.metrics.write({"step": last_good or 0, "event": "diverged", "what": what})
        kept = (
            f"the last good checkpoint (step {last_good}) is {self.run_dir / MODEL_NAME}"
            if last_good is not None
            else "no checkpoint had been written yet"
        )
        return TrainingDiverged(
            f"training stopped: {what}; {kept}. Try a lower lr (now {self.config.lr:g}), grad_clip, "
            "or fp32 precision"
        )

    # --- the end -------------------------------------------------------------------------------------------
    def result(self, end: LoopEnd) -> TrainResult:
        if self.is_main:
            record = {"step": end.step, "event": "interrupted" if end.interrupted else "end"}
            self.metrics.write({**record, "seconds": end.seconds, **self.final})
        trained = (end.step - self.start) * self.config.batch_size
        return TrainResult(
            run_dir=self.run_dir,
            model_path=self.run_dir / MODEL_NAME,
            step=end.step,
            steps=self.config.steps,
            seconds=end.seconds,
            images_per_second=trained / max(end.seconds, 1e-9),
            final=self.final,
            eval_split=self.held_out.split,
            interrupted=end.interrupted,
            signal_name=end.signal_name,
            resumed_from=self.start if self.state is not None else None,
            is_main=self.is_main,
            model=self.model,
            warnings=self.warnings,
            data_wait_share=self.data.wait_seconds / max(end.seconds, 1e-9),
        )

    def close(self) -> None:
        self.data.close()
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
        if getattr(self, "lock", None) is not None:
            self.lock.release()


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


def _optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # AdamW with weight_decay=0 is Adam; decoupled decay is the form that behaves with Adam when asked for.
    # fused=True on CUDA runs the whole update in one kernel per dtype group.
    kwargs: dict[str, Any] = {"lr": config.lr, "betas": config.betas, "weight_decay": config.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **kwargs)
