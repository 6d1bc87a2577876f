"""Training a :class:`~vqkit.generation.prior.CodePrior` on the codes a VQ-VAE gives a dataset.

It runs on the same training core as the VQ-VAE trainer (:mod:`vqkit.training.engine`): the same learning-rate
schedule, training state and exact resume, metrics log, progress bar, run-folder lock and stop signals.
A run is a folder: ``prior.safetensors`` (the prior, rewritten at every evaluation), ``train_state.pt``
(weights, AdamW moments, step and the batch sampler's state, for ``resume``; loaded with weights_only) and
``metrics.jsonl`` (one JSON line per evaluation). The whole dataset's codes are computed once and held in
memory (on the GPU too): they are tiny (16 integers per image for a 4x4 grid).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqkit import checks
from vqkit.data.imageset import HeldImages, ImageSet
from vqkit.device import resolve_device
from vqkit.errors import OptionError, VQKitError
from vqkit.generation.prior import PRIOR_FILE, CodePrior, PriorSpec, model_fingerprint, save_prior
from vqkit.pixels import to_float
from vqkit.training.checkpoint import STATE_NAME, load_state, restore_rng, save_state
from vqkit.training.engine import Cadence, LoopEnd, Progress, Say, Window, run_steps
from vqkit.training.rundir import METRICS_NAME, MetricsLog, prepare_run_dir
from vqkit.training.schedule import lr_at

ARCHITECTURE = ("width", "layers", "heads", "dropout", "seed")


@dataclass
class PriorTrainConfig:
    data: str = "mnist5k"
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    eval_every: int = 250
    width: int = 96
    layers: int = 3
    heads: int = 4
    dropout: float = 0.1
    seed: int = 0

    def validate(self) -> PriorTrainConfig:
        for name in ("steps", "batch_size", "eval_every", "width", "layers", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{name} must be a positive integer, got {value!r}", param=name)
        for name, low, high in (
            ("lr", 0.0, math.inf),
            ("weight_decay", 0.0, math.inf),
            ("dropout", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value < high:
                raise OptionError(
                    f"{name} must be a finite number in [{low:g}, {high:g}), got {value!r}", param=name
                )
        if self.lr <= 0:
            raise OptionError(f"lr must be positive, got {self.lr!r}", param="lr")
        for name, high in (("steps", 10**12), ("batch_size", 2**24), ("eval_every", 10**12)):
            checks.integer(getattr(self, name), name, maximum=high)
        for name in ("width", "layers", "heads"):
            checks.integer(getattr(self, name), name, maximum=2**16)
        self.warmup = checks.integer(self.warmup, "warmup", minimum=0, maximum=10**12)
        self.seed = checks.seed(self.seed)
        self.data = str(checks.path(self.data, "data"))
        return self


@dataclass
class PriorTrainResult:
    path: Path
    step: int
    test_bits: float  # held-out negative log2-likelihood per image
    uniform_bits: float  # the uniform prior's: log2(K) x grid size (x codebooks)
    train_bits: float
    interrupted: bool = False
    signal_name: str | None = None


def encode_images(
    model: Any, images: np.ndarray | ImageSet, device: torch.device, batch_size: int = 500
) -> torch.Tensor:
    """uint8 images ``[N, C, H, W]`` (an array, or an :class:`~vqkit.data.imageset.ImageSet` read a batch
    at a time) -> the model's codes, int64, on ``device``."""
    model = model.to(device).eval()
    found = images if isinstance(images, ImageSet) else HeldImages(images, "images")
    return torch.cat(
        [model.encode(to_float(torch.from_numpy(x).to(device))) for x in found.batches(batch_size)]
    )


def train_prior(
    model: Any,
    out: str | os.PathLike[str],
    config: PriorTrainConfig | None = None,
    *,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    callback: Callable[[int], None] | None = None,
) -> PriorTrainResult:
    """Train a prior over ``model``'s codes of ``config.data`` (train split); evaluate on its test split.

    ``model`` is a :class:`~vqkit.VQVAE` or the path of a model file. ``resume`` continues the run in ``out``
    (its architecture and sampler state; ``config.steps`` may extend it). ``callback(step)`` runs after every
    step. Returns the held-out bits per image.
    """
    if config is not None and not isinstance(config, PriorTrainConfig):
        raise OptionError(f"config must be a PriorTrainConfig, got {type(config).__name__}", param="config")
    cfg = (config or PriorTrainConfig()).validate()
    out = checks.path(out, "out")
    if not isinstance(model, (str, bytes, os.PathLike, torch.nn.Module)):
        raise OptionError(
            f"model must be a VQVAE or a model file path, got {type(model).__name__}", param="model"
        )
    if isinstance(model, (str, bytes, os.PathLike)):
        from vqkit.modelfile import load

        model = load(model)
    trainer = PriorTrainer(model, Path(out), cfg, resolve_device(device), resume, log or (lambda _m: None))
    bar = Progress(progress, cfg.steps, trainer.start, "prior", fallback=trainer.say)
    trainer.say = bar.say
    try:
        end = run_steps(
            trainer,
            start=trainer.start,
            cadence=Cadence(cfg.steps, cfg.eval_every, cfg.eval_every, cfg.eval_every),
            device=trainer.device,
            items_per_step=cfg.batch_size,
            progress=bar,
            callback=callback,
        )
    finally:
        bar.close()
        trainer.lock.release()
    return trainer.result(end)


class PriorTrainer:
    """One prior run, driven by :func:`vqkit.training.engine.run_steps`."""

    stat_names = ("loss",)

    def __init__(
        self, model: Any, out: Path, cfg: PriorTrainConfig, device: torch.device, resume: bool, say: Say
    ) -> None:
        self.cfg, self.out, self.device, self.say = cfg, out, device, say
        if out.exists() and not out.is_dir():
            raise OptionError(f"out {out} is a file; give a folder for the prior run", param="out")
        if resume and not (out / STATE_NAME).exists():
            raise OptionError(f"nothing to resume: {out / STATE_NAME} does not exist", param="resume")
        self.lock = prepare_run_dir(
            out,
            resuming=resume,
            owned=(PRIOR_FILE, STATE_NAME),
            what="a prior run",
            hint="pass `resume` to continue it, or choose another `out`",
        )
        try:
            self._codes(model)
            self._prior(model, resume)
        except BaseException:
            self.lock.release()
            raise
        self.metrics = MetricsLog(
            out / METRICS_NAME, enabled=True, resume_step=self.start if resume else None
        )
        self.uniform = self.prior.spec.uniform_bits
        self.train_bits = self.test_bits = math.nan
        self._header()

    def _codes(self, model: Any) -> None:
        """Both splits' codes, the images read a batch at a time (a folder or shards never sits in memory)."""
        from vqkit.data.imageset import open_images

        cfg, spec = self.cfg, model.spec
        kw = dict(channels=spec.channels, image_size=spec.image_size)
        train_images = open_images(cfg.data, split="train", **kw)
        test_images = open_images(cfg.data, split="test", **kw)
        if len(train_images) == 0 or len(test_images) == 0:
            raise OptionError(f"data {cfg.data!r} has an empty train or test split", param="data")
        self.train_codes = encode_images(model, train_images, self.device)
        self.test_codes = encode_images(model, test_images, self.device)
        model.to("cpu")

    def _prior(self, model: Any, resume: bool) -> None:
        cfg = self.cfg
        fingerprint = model_fingerprint(model)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        state = load_state(self.out / STATE_NAME, "prior") if resume else None
        if state is not None:
            spec = PriorSpec.from_json(state["spec"])
            if spec.model_fingerprint != fingerprint:
                raise OptionError(
                    f"{self.out} was trained on another model's codes (its weights differ); cannot resume"
                )
            saved = state["config"]
            for key in ARCHITECTURE:
                setattr(cfg, key, saved[key])
        else:
            torch.manual_seed(cfg.seed)
            spec = PriorSpec(
                width=cfg.width,
                layers=cfg.layers,
                heads=cfg.heads,
                dropout=cfg.dropout,
                grid=tuple(model.grid),
                num_codebooks=int(model.num_codebooks),
                codebook_size=int(model.quantizer.codebook_size),
                model_fingerprint=fingerprint,
            )
        self.prior = CodePrior(spec).to(self.device)
        self.opt = torch.optim.AdamW(
            self.prior.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98)
        )
        self.start = 0
        if state is not None:
            try:
                self.prior.load_state_dict(state["model"])
                self.opt.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise VQKitError(f"cannot resume from {self.out / STATE_NAME}: {exc}") from exc
            self.gen.set_state(state["sampler"])
            restore_rng(state)
            self.start = int(state["step"])
        self.prior.train()

    def _header(self) -> None:
        cfg, spec = self.cfg, self.prior.spec
        n_params = sum(p.numel() for p in self.prior.parameters())
        self.say(
            f"prior      transformer, {cfg.layers} layers x {cfg.width} wide, {n_params:,} params, "
            f"{spec.seq_len} codes per image"
        )
        self.say(
            f"data       {cfg.data}: {len(self.train_codes)} train / {len(self.test_codes)} held-out images, "
            f"device {self.device}"
        )
        self.say(f"uniform    {self.uniform:.1f} bits per image (log2 {spec.codebook_size} x {spec.seq_len})")
        if self.start >= cfg.steps:
            self.say(f"resume     the run is already at step {self.start} of {cfg.steps}")

    def _lr(self, step: int) -> float:
        cfg = self.cfg
        # Cosine to a tenth of the peak: a prior keeps learning slowly at the end.
        return lr_at(step, lr=cfg.lr, steps=cfg.steps, warmup=cfg.warmup, schedule="cosine", min_lr_ratio=0.1)

    def step(self, step: int) -> torch.Tensor:
        cfg = self.cfg
        # Seed dropout per step, so a resumed run continues exactly as an uninterrupted one would.
        torch.manual_seed(cfg.seed * 1_000_003 + step + 1)
        for group in self.opt.param_groups:
            group["lr"] = self._lr(step)
        idx = torch.randint(len(self.train_codes), (cfg.batch_size,), generator=self.gen).to(self.device)
        loss = self.prior(self.train_codes[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.prior.parameters(), 1.0)
        self.opt.step()
        return loss.detach().float().reshape(1)

    def log(self, done: int, means: dict[str, float], window: Window) -> None:
        self.train_bits = means["loss"] * self.prior.spec.seq_len / math.log(2)
        self.elapsed = window.elapsed

    def evaluate(self, done: int, say: Say) -> None:
        self.test_bits = self._test_bits()
        self.metrics.write(
            {
                "step": done,
                "train_bits_per_image": round(self.train_bits, 4),
                "test_bits_per_image": round(self.test_bits, 4),
                "uniform_bits_per_image": round(self.uniform, 4),
                "lr": self._lr(done - 1),
                "elapsed_s": round(self.elapsed, 2),
            }
        )
        meta = {"step": str(done), "test_bits_per_image": f"{self.test_bits:.4f}"}
        save_prior(self.prior, self.out / PRIOR_FILE, meta)
        say(f"step {done:>6}  train {self.train_bits:7.2f}  held-out {self.test_bits:7.2f}  bits/image")

    def _test_bits(self) -> float:
        self.prior.eval()
        bits = float(self.prior.bits_per_image(self.test_codes).mean())
        self.prior.train()
        return bits

    def checkpoint(self, done: int) -> None:
        save_state(
            self.out / STATE_NAME,
            "prior",
            done,
            spec=self.prior.spec.to_json(),
            model=self.prior.state_dict(),
            optimizer=self.opt.state_dict(),
            sampler=self.gen.get_state(),
            config=asdict(self.cfg),
        )

    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.prior.parameters())

    def diverged(self, what: str, last_good: int | None) -> Exception:
        return VQKitError(f"prior training stopped: {what}; try a lower lr (now {self.cfg.lr:g})")

    def result(self, end: LoopEnd) -> PriorTrainResult:
        if math.isnan(self.test_bits):  # resumed a finished run: report what the saved prior scores
            self.test_bits = self._test_bits()
        self.say(
            f"held-out   {self.test_bits:.2f} bits per image vs {self.uniform:.1f} uniform "
            f"({self.test_bits / self.uniform:.1%} of uniform); prior in {self.out / PRIOR_FILE}"
        )
        return PriorTrainResult(
            self.out / PRIOR_FILE,
            end.step,
            self.test_bits,
            self.uniform,
            self.train_bits,
            end.interrupted,
            end.signal_name,
        )
