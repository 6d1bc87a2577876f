"""What a training run is told, in ONE place: :class:`TrainConfig`'s fields, their defaults and help texts.

``vqkit train`` derives its options from these fields (a field's ``metadata`` gives its help and, where the
flag is not simply ``--field-name``, its flag), so a default changed here changes the CLI too. A run's resolved
config is written as ``config.toml`` in its folder and can be given back with ``vqkit train --config FILE``.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from vqkit.errors import OptionError

SCHEDULES = ("cosine", "constant")
PRECISIONS = ("fp32", "bf16")
# Fields that say where a run goes or where it starts from, not what it trains: left out of config files.
RUN_CONTROL = ("init_from", "resume", "out", "progress")


def _f(default: Any, help: str, **meta: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    """Everything a run needs. ``vqkit train`` fills it from its options; a Python user can fill it directly.

    ``model`` holds :func:`vqkit.build_model` keyword arguments for a NEW model (``encoder``, ``quantizer``,
    ``decoder``, ``latent_dim``, ``codebook_size``, ``preset``, ``PART_options``); what is left out is the
    components' own defaults, exactly as ``vqkit build`` gives them. ``channels`` and ``image_size`` left None
    follow the data. ``init_from`` names an existing model file to start from (fine-tuning: new optimizer,
    step 0); with ``resume`` the run whose training state lies beside it continues exactly where it stopped.
    """

    model: dict[str, Any] = _f({}, "build_model keyword arguments of a new model", cli=False)
    init_from: str | None = _f(
        None, "Start from this model file (with --resume: continue its run).", flag="--model"
    )
    resume: bool = _f(False, "Continue the run of --model exactly where its last checkpoint stopped.")
    data: str = _f(
        "mnist5k", "mnist5k, a folder of images, or a torchvision dataset name (mnist, cifar10, ...)."
    )
    data_root: str | None = _f(
        None, "Where torchvision datasets live [default: ~/.cache/vqkit or $VQKIT_DATA]."
    )
    download: bool = _f(False, "Download a torchvision dataset if it is not there yet.")
    skip_bad: bool = _f(
        False, "Leave out unreadable images of a folder (and say how many) instead of stopping."
    )
    data_memory_gb: float | None = _f(
        None,
        "Hold a folder's or shards' decoded training images in memory up to this many GiB, else stream them "
        "from disk [default: a quarter of the available memory].",
    )
    data_workers: int | None = _f(
        None,
        "Processes decoding streamed images, per training process [default: its share of the cores, at most 8].",
    )
    augment_scale: float = _f(
        1.0, "Random resized crop: the smallest crop area, as a fraction of the image (1: no cropping)."
    )
    augment_flip: bool = _f(False, "Flip training images left-right at random.")
    channels: int | None = _f(None, "Image channels of a new model [default: from the data].", cli=False)
    image_size: int | None = _f(None, "Image size of a new model [default: from the data].", cli=False)
    out: str | None = _f(
        None, "Run folder [default: runs/run-N, or the resumed run's].", flag="-o/--output/--out"
    )
    steps: int = _f(1500, "Total optimizer steps.")
    batch_size: int = _f(128, "Images per step, over all processes.")
    lr: float = _f(2e-3, "Peak learning rate (Adam).")
    betas: tuple[float, float] = _f((0.9, 0.999), "Adam betas.")
    weight_decay: float = _f(0.0, "Decoupled weight decay (AdamW).")
    # A long warm-up matters: at lr 2e-3 from step 50 the conv3 decoder died in our runs (MSE stuck at the
    # all-background level); after 200 warm-up steps it trained well. Short runs get a fifth of their length.
    warmup_steps: int = _f(200, "Linear learning-rate warm-up, capped at a fifth of the run's steps.")
    schedule: str = _f("cosine", "Learning rate after warm-up.", choices=SCHEDULES)
    min_lr_ratio: float = _f(0.0, "Cosine floor as a fraction of the peak learning rate.")
    grad_clip: float | None = _f(None, "Clip the gradient norm to this.")
    loss: str = _f("mse", "Reconstruction objective: registered objectives with weights, e.g. l1+lpips:0.1.")
    loss_options: dict[str, Any] = _f({}, "Options of each objective (--set loss.NAME.KEY=VALUE).", cli=False)
    eval_every: int = _f(
        500, "Evaluate on held-out images and write recon_STEP.png every N steps (0: at the end)."
    )
    eval_images: int = _f(1000, "Held-out images per evaluation.")
    checkpoint_every: int = _f(500, "Write model + training state every N steps (0: at the end only).")
    log_every: int = _f(25, "Read metrics back from the device every N steps (the only host sync).")
    csv: bool = _f(False, "Also log metrics to metrics.csv in the run folder.")
    tensorboard: bool = _f(False, "Also log metrics for TensorBoard (needs the tensorboard package).")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N or mps.")
    precision: str = _f("fp32", "bf16: autocast (quantizer distances stay fp32).", choices=PRECISIONS)
    compile: bool = _f(False, "torch.compile the model.")
    channels_last: bool | None = _f(None, "Channels-last memory format [default: on for CUDA and CPU].")
    seed: int = _f(0, "Seed for weights, data order and everything random.")
    progress: bool = _f(True, "Show a progress bar.", cli=False)

    def validate(self) -> TrainConfig:
        """Check every field; a mistake raises :class:`OptionError` naming the field (``param``)."""
        # eval_images too: every run evaluates at its end, and with no images that came after all the training
        for name in ("steps", "batch_size", "log_every", "eval_images"):
            _number(self, name, minimum=1, integer=True)
        for name in ("eval_every", "checkpoint_every", "warmup_steps"):
            _number(self, name, minimum=0, integer=True)
        _number(self, "lr", minimum=0, open_min=True)
        _number(self, "augment_scale", minimum=0, maximum=1, open_min=True)
        if self.data_memory_gb is not None:
            _number(self, "data_memory_gb", minimum=0)
        if self.data_workers is not None:
            _number(self, "data_workers", minimum=0, integer=True)
        _number(self, "weight_decay", minimum=0)
        _number(self, "min_lr_ratio", minimum=0, maximum=1)
        if self.grad_clip is not None:
            _number(self, "grad_clip", minimum=0, open_min=True)
        betas = self.betas
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise OptionError(f"betas must be two numbers in [0, 1), got {betas!r}", param="betas")
        if not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise OptionError(f"betas must be two numbers in [0, 1), got {betas!r}", param="betas")
        self.betas = (float(betas[0]), float(betas[1]))
        for name, allowed in (("schedule", SCHEDULES), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise OptionError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}", param=name
                )
        if not isinstance(self.model, dict):
            raise OptionError(
                f"model must be a table of build_model arguments, got {self.model!r}", param="model"
            )
        if self.resume and not self.init_from:
            raise OptionError("resume needs init_from: the model file of the run to continue", param="resume")
        return self

    def warmup(self) -> int:
        """The warm-up actually used: ``warmup_steps``, but at most a fifth of the run."""
        return min(self.warmup_steps, self.steps // 5)

    def to_dict(self, *, run_control: bool = True) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data if run_control else {k: v for k, v in data.items() if k not in RUN_CONTROL}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: TrainConfig | None = None) -> TrainConfig:
        """``base`` (or the defaults) with ``data`` on top; an unknown key is an error naming it."""
        if not isinstance(data, dict):
            raise OptionError(f"a training config must be a table of settings, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionError(
                f"unknown training setting(s) {', '.join(map(repr, unknown))}", param=unknown[0]
            )
        merged = {**(base or cls()).to_dict(), **data}
        config = cls(**merged)
        if isinstance(config.betas, list):
            config.betas = tuple(config.betas)  # type: ignore[assignment]
        return config

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls.from_dict({k: v for k, v in data.items() if k in known})


def _number(
    config: TrainConfig,
    name: str,
    *,
    minimum: float,
    maximum: float = math.inf,
    open_min: bool = False,
    integer: bool = False,
) -> None:
    value = getattr(config, name)
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise OptionError(f"{name} must be {kind}, got {value!r}", param=name)
    low = value <= minimum if open_min else value < minimum
    if low or value > maximum:
        bound = f"above {minimum:g}" if open_min else f"at least {minimum:g}"
        if maximum != math.inf:
            bound = f"between {minimum:g} and {maximum:g}"
        raise OptionError(f"{name} must be {bound}, got {value!r}", param=name)


def field_defaults() -> dict[str, Any]:
    """Each field's default (what ``TrainConfig()`` holds)."""
    out = {}
    for f in fields(TrainConfig):
        out[f.name] = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return out
