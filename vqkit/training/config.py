"""What a training run is told, in ONE place: :class:`TrainConfig`'s fields, their defaults and help texts.

``vqkit train`` derives its options from these fields (a field's ``metadata`` gives its help and, where the
flag is not simply ``--field-name``, its flag), so a default changed here changes the CLI too. A run's resolved
config is written as ``config.toml`` in its folder and can be given back with ``vqkit train --config FILE``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from vqkit import checks
from vqkit.errors import OptionError
from vqkit.spec import MAX_CHANNELS, MAX_IMAGE_SIZE

SCHEDULES = ("cosine", "constant")
PRECISIONS = ("fp32", "bf16")
# Fields that say where a run goes or where it starts from, not what it trains: left out of config files.
RUN_CONTROL = ("init_from", "resume", "out", "progress")
PATH_FIELDS = ("init_from", "data", "data_root", "out")
# A name that is not UTF-8 is written to a config file as {path_bytes_hex = "..."} (TOML holds only Unicode).
PATH_BYTES_KEY = "path_bytes_hex"
MODEL_KEYS = (
    "encoder",
    "quantizer",
    "decoder",
    "preset",
    "latent_dim",
    "codebook_size",
    "encoder_options",
    "quantizer_options",
    "decoder_options",
)
# Bounds beyond any real run, so that an absurd value is refused here rather than overflowing later.
_MANY = 10**12
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "steps": (1, _MANY),
    "batch_size": (1, 2**24),
    "log_every": (1, _MANY),
    "eval_every": (0, _MANY),
    # every run evaluates at its end: with no images that failed after all the training
    "eval_images": (1, 10**9),
    "checkpoint_every": (0, _MANY),
    "warmup_steps": (0, _MANY),
    "data_workers": (0, 1024),
    "channels": (1, MAX_CHANNELS),
    "image_size": (1, MAX_IMAGE_SIZE),
    "seed": (0, checks.MAX_SEED),
}
FLOAT_BOUNDS: dict[str, tuple[float, float, bool]] = {  # (minimum, maximum, whether the minimum is excluded)
    "lr": (0, math.inf, True),
    "augment_scale": (0, 1, True),
    "data_memory_gb": (0, 2**20, False),  # a PiB
    "weight_decay": (0, math.inf, False),
    "min_lr_ratio": (0, 1, False),
    "grad_clip": (0, math.inf, True),
}
# The peak lr of a model whose encoder and decoder recommend none (conv3's); see ``recommended_lr``.
DEFAULT_LR = 2e-3
CHOICES = {"schedule": SCHEDULES, "precision": PRECISIONS}


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
        "mnist5k",
        "mnist5k, a folder of images, tar shards (a .tar, a brace or glob pattern, a folder of shards), or a "
        "torchvision dataset name (mnist, cifar10, ...).",
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
    lr: float | None = _f(
        None,
        f"Peak learning rate (Adam) [default: the model's recommended lr, else {DEFAULT_LR:g}; resnet: 1e-3].",
    )
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> TrainConfig:
        """Check and normalise every field, whatever filled it (flags, a config file, a resumed run, Python):
        a mistake raises :class:`OptionError` naming the field (``param``)."""
        for f in fields(self):
            setattr(self, f.name, check_field(f.name, str(f.type), getattr(self, f.name)))
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
        return cls(**merged)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """A config as :meth:`to_json` wrote it (settings this vqkit does not know are left out)."""
        from vqkit.textformats import TextFormatError, load_json

        try:
            data = load_json(text, "the run's recorded config") if isinstance(text, str) else None
        except TextFormatError as exc:
            raise OptionError(str(exc)) from None
        if not isinstance(data, dict):
            raise OptionError("the run's recorded config is not a table of settings")
        known = {f.name for f in fields(cls)}
        return cls.from_dict({k: v for k, v in data.items() if k in known})


def check_field(name: str, kind: str, value: Any) -> Any:
    """One field's value checked against its declared type (``kind``, as the dataclass spells it) and its
    bounds; returned normalised (an int for a float, a path as text)."""
    if value is None and kind.endswith("| None"):
        return None
    if name in PATH_FIELDS:
        return _path_field(name, value)
    if name in INT_BOUNDS:
        low, high = INT_BOUNDS[name]
        return checks.integer(value, name, minimum=low, maximum=high)
    if name in FLOAT_BOUNDS:
        low, high, open_min = FLOAT_BOUNDS[name]
        return checks.number(value, name, minimum=low, maximum=high, open_min=open_min)
    if name in CHOICES:
        return checks.text(value, name, choices=CHOICES[name])
    if kind.startswith("bool"):
        return checks.boolean(value, name)
    checker = _SPECIAL.get(name)
    if checker is not None:
        return checker(value)
    return checks.text(value, name)


def _path_field(name: str, value: Any) -> str:
    """A path (or data source) as text, kept as written: a pattern or a name is not a Path to normalise."""
    checks.path(value, name)
    return value if isinstance(value, str) else os.fsdecode(value)


def _betas(value: Any) -> tuple[float, float]:
    what = f"betas must be two numbers in [0, 1), got {checks.shown(value)}"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise OptionError(what, param="betas")
    try:
        pair = tuple(checks.number(b, "betas", minimum=0, maximum=1) for b in value)
    except OptionError:
        raise OptionError(what, param="betas") from None
    if not all(b < 1 for b in pair):
        raise OptionError(what, param="betas")
    return pair  # type: ignore[return-value]


def _model(value: Any) -> dict[str, Any]:
    """The ``model`` table: build_model's keyword arguments, each of its type (values are checked again,
    against the components, when the model is built)."""
    if not isinstance(value, dict):
        raise OptionError(
            f"model must be a table of build_model arguments, got {checks.shown(value)}", param="model"
        )
    out: dict[str, Any] = {}
    for key, item in value.items():
        where = f"model.{key}"
        if key in ("encoder", "quantizer", "decoder", "preset"):
            out[key] = None if item is None else checks.text(item, where)
        elif key in ("latent_dim", "codebook_size"):
            out[key] = checks.optional_integer(item, where, minimum=1)
        elif key in ("encoder_options", "quantizer_options", "decoder_options"):
            out[key] = _table(item, where)
        else:
            raise OptionError(
                f"model has no setting {key!r}; it takes {', '.join(MODEL_KEYS)}", param="model"
            )
    return out


def _table(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise OptionError(
            f"{name} must be a table of option names to values, got {checks.shown(value)}", param=name
        )
    return dict(value)


def _loss_options(value: Any) -> dict[str, Any]:
    """``{objective name: {option: value}}``."""
    table = _table(value, "loss_options")
    return {k: _table(v, f"loss_options.{k}") for k, v in table.items()}


_SPECIAL = {
    "betas": _betas,
    "model": _model,
    "loss_options": _loss_options,
    "device": lambda v: checks.device_name(v, "device"),
    "loss": lambda v: checks.text(v, "loss"),
}


def field_defaults() -> dict[str, Any]:
    """Each field's default (what ``TrainConfig()`` holds)."""
    out = {}
    for f in fields(TrainConfig):
        out[f.name] = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return out
