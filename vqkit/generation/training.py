"""Training a :class:`~vqkit.generation.prior.CodePrior` on the codes a VQ-VAE gives a dataset.

A run is a folder: ``prior.safetensors`` (the prior, rewritten at every evaluation), ``checkpoint.safetensors``
(weights, AdamW moments, step and the batch sampler's state, for ``resume``; no pickle) and ``metrics.jsonl``
(one JSON line per evaluation). The whole dataset's codes are computed once and held in memory (on the GPU
too): they are tiny (16 int64 per image for a 4x4 grid).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqkit.errors import ModelFileError, OptionError, VQKitError
from vqkit.fileio import atomic_path
from vqkit.generation.prior import PRIOR_FILE, CodePrior, PriorSpec, model_fingerprint, save_prior

CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FORMAT = "vqkit.prior-checkpoint"


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


@dataclass
class PriorTrainResult:
    path: Path
    step: int
    test_bits: float  # held-out negative log2-likelihood per image
    uniform_bits: float  # the uniform prior's: log2(K) x grid size (x codebooks)
    train_bits: float


def encode_images(
    model: Any, images: np.ndarray, device: torch.device, batch_size: int = 500
) -> torch.Tensor:
    """uint8 images ``[N, C, H, W]`` -> the model's codes, int64, on ``device``."""
    model = model.to(device).eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).to(device).float() / 127.5 - 1.0
        out.append(model.encode(x))
    return torch.cat(out)


def _lr_at(step: int, cfg: PriorTrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth (a function of the step, so resuming needs no state)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _save_checkpoint(
    path: Path,
    prior: CodePrior,
    opt: torch.optim.Optimizer,
    step: int,
    gen: torch.Generator,
    cfg: PriorTrainConfig,
) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().to("cpu").contiguous().clone() for k, v in prior.state_dict().items()}
    names = {id(p): n for n, p in prior.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                tensors[f"optim.{names[id(p)]}.{key}"] = value.detach().to("cpu").reshape(value.shape).clone()
    tensors["sampler_state"] = gen.get_state().clone()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "vqkit.prior_spec": prior.spec.to_json(),
        "step": str(step),
        "config": json.dumps(asdict(cfg)),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _load_checkpoint(
    path: Path, prior_for: Callable[[PriorSpec], CodePrior], device: torch.device
) -> tuple[CodePrior, dict[str, torch.Tensor], int, torch.Tensor, dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a vqkit prior checkpoint")
        spec = PriorSpec.from_json(meta["vqkit.prior_spec"])
        step, config = int(meta["step"]), json.loads(meta["config"])
        prior = prior_for(spec)
        prior.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    except VQKitError:
        raise
    except Exception as exc:
        raise ModelFileError(f"cannot resume from {path}: {exc}") from exc
    optim = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
    return prior.to(device), optim, step, tensors["sampler_state"], config


def _restore_optimizer(opt: torch.optim.Optimizer, prior: CodePrior, saved: dict[str, torch.Tensor]) -> None:
    for name, p in prior.named_parameters():
        state = {key.rsplit(".", 1)[1]: v for key, v in saved.items() if key.rsplit(".", 1)[0] == name}
        if state:
            # AdamW keeps its step count as a CPU scalar, its moments beside the parameter.
            opt.state[p] = {k: (v if k == "step" else v.to(p.device)) for k, v in state.items()}


def train_prior(
    model: Any,
    out: str | os.PathLike[str],
    config: PriorTrainConfig | None = None,
    *,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> PriorTrainResult:
    """Train a prior over ``model``'s codes of ``config.data`` (train split); evaluate on its test split.

    ``model`` is a :class:`~vqkit.VQVAE` or the path of a model file. ``resume`` continues the run in ``out``
    (its architecture and sampler state; ``config.steps`` may extend it). Returns the held-out bits per image.
    """
    from vqkit.data import load_images
    from vqkit.generation.sampling import resolve_device

    cfg = config or PriorTrainConfig()
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.eval_every < 1 or cfg.lr <= 0:
        raise OptionError(
            "steps, batch size and eval interval must be positive, and so must the learning rate"
        )
    dev = resolve_device(device)
    if isinstance(model, (str, os.PathLike)):
        from vqkit.modelfile import load

        model = load(model)
    say = log or (lambda _m: None)
    out = Path(out)
    ckpt_path = out / CHECKPOINT_FILE
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file; give a folder for the prior run")
    if not resume and (ckpt_path.exists() or (out / PRIOR_FILE).exists()):
        raise OptionError(
            f"{out} already holds a prior run; pass --resume to continue it, or choose another --out"
        )
    if resume and not ckpt_path.exists():
        raise OptionError(f"nothing to resume: {ckpt_path} does not exist")

    fingerprint = model_fingerprint(model)
    spec_kw = dict(
        grid=tuple(model.grid),
        num_codebooks=int(model.num_codebooks),
        codebook_size=int(model.quantizer.codebook_size),
        model_fingerprint=fingerprint,
    )
    train_images = load_images(
        cfg.data, split="train", channels=model.spec.channels, image_size=model.spec.image_size
    )
    test_images = load_images(
        cfg.data, split="test", channels=model.spec.channels, image_size=model.spec.image_size
    )
    if len(train_images) == 0 or len(test_images) == 0:
        raise OptionError(f"data {cfg.data!r} has an empty train or test split")
    train_codes = encode_images(model, train_images, dev)
    test_codes = encode_images(model, test_images, dev)
    model.to("cpu")

    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    if resume:
        prior, saved_optim, start, sampler_state, saved_cfg = _load_checkpoint(ckpt_path, CodePrior, dev)
        if prior.spec.model_fingerprint != fingerprint:
            raise OptionError(
                f"{out} was trained on another model's codes (its weights differ); cannot resume"
            )
        for key in ("width", "layers", "heads", "dropout", "seed"):
            setattr(cfg, key, saved_cfg[key])
        gen.set_state(sampler_state)
    else:
        torch.manual_seed(cfg.seed)
        spec = PriorSpec(width=cfg.width, layers=cfg.layers, heads=cfg.heads, dropout=cfg.dropout, **spec_kw)
        prior = CodePrior(spec).to(dev)
        saved_optim = {}
    opt = torch.optim.AdamW(prior.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    _restore_optimizer(opt, prior, saved_optim)

    uniform = prior.spec.uniform_bits
    n_params = sum(p.numel() for p in prior.parameters())
    say(
        f"prior      transformer, {cfg.layers} layers x {cfg.width} wide, {n_params:,} params, "
        f"{prior.spec.seq_len} codes per image"
    )
    say(f"data       {cfg.data}: {len(train_codes)} train / {len(test_codes)} held-out images, device {dev}")
    say(f"uniform    {uniform:.1f} bits per image (log2 {prior.spec.codebook_size} x {prior.spec.seq_len})")
    if start >= cfg.steps:
        say(f"resume     the run is already at step {start} of {cfg.steps}")

    def evaluate(step: int, train_bits: float, elapsed: float) -> float:
        prior.eval()
        test_bits = float(prior.bits_per_image(test_codes).mean())
        prior.train()
        record = {
            "step": step,
            "train_bits_per_image": round(train_bits, 4),
            "test_bits_per_image": round(test_bits, 4),
            "uniform_bits_per_image": round(uniform, 4),
            "lr": _lr_at(step - 1, cfg),
            "elapsed_s": round(elapsed, 2),
        }
        out.mkdir(parents=True, exist_ok=True)
        with open(out / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        save_prior(prior, out / PRIOR_FILE, {"step": str(step), "test_bits_per_image": f"{test_bits:.4f}"})
        _save_checkpoint(ckpt_path, prior, opt, step, gen, cfg)
        return test_bits

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True)
    prior.train()
    t0 = time.perf_counter()
    running, test_bits = float("nan"), float("nan")
    step = start
    ln2 = math.log(2)
    for step in range(start + 1, cfg.steps + 1):
        # Seed dropout per step, so a resumed run continues exactly as an uninterrupted one would.
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step - 1, cfg)
        idx = torch.randint(len(train_codes), (cfg.batch_size,), generator=gen).to(dev)
        loss = prior(train_codes[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        opt.step()
        bits = float(loss.detach()) * prior.spec.seq_len / ln2
        running = bits if math.isnan(running) else 0.95 * running + 0.05 * bits
        bar.update(1)
        bar.set_postfix(train_bits=f"{running:.1f}", test_bits=f"{test_bits:.1f}", refresh=False)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            test_bits = evaluate(step, running, time.perf_counter() - t0)
            bar.write(f"step {step:>6}  train {running:7.2f}  held-out {test_bits:7.2f}  bits/image")
    bar.close()
    if math.isnan(test_bits):  # resumed a finished run: report what the saved prior scores
        prior.eval()
        test_bits = float(prior.bits_per_image(test_codes).mean())
    say(
        f"held-out   {test_bits:.2f} bits per image vs {uniform:.1f} uniform "
        f"({test_bits / uniform:.1%} of uniform); prior in {out / PRIOR_FILE}"
    )
    return PriorTrainResult(out / PRIOR_FILE, step, test_bits, uniform, running)
