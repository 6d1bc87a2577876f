"""What a training run is told: the default recipe (one constant) and the config the CLI fills."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vqkit.errors import OptionError

# The default model and recipe of `vqkit train` with no arguments, in ONE place: the CLI, the README and the
# quantizer family's recommendation read it from here. Sized so that on a 2-core CPU the whole run (data,
# training, evaluation) takes well under 3 minutes on mnist5k; see README "Training".
DEFAULTS: dict[str, Any] = {
    "model": {
        "encoder": "conv3",
        "quantizer": "vq",
        "decoder": None,  # the encoder's mirror
        "latent_dim": None,  # the quantizer's default
        "codebook_size": None,
        "encoder_options": {},
        # vq's own defaults are the seed's plain quantizer, which collapses to a few codes in training; k-means
        # init and dead-code restarts keep the codebook in use (the quantizer family's recommendation may
        # replace this whole entry).
        "quantizer_options": {"init": "kmeans", "restart_after": 50},
        "decoder_options": {},
    },
    "data": "mnist5k",
    "steps": 1500,
    "batch_size": 128,
    "lr": 2e-3,
    # A long warm-up matters: at 2e-3 from step 50 the seed architecture's decoder died in our runs (MSE stuck
    # at the all-background level), at 2e-3 after 200 warm-up steps it trained well.
    "warmup_steps": 200,
}

SCHEDULES = ("cosine", "constant")
PRECISIONS = ("fp32", "bf16")


def default_model() -> dict[str, Any]:
    """A fresh copy of the default model's ``build_model`` keyword arguments."""
    return json.loads(json.dumps(DEFAULTS["model"]))


@dataclass
class TrainConfig:
    """Everything a run needs. ``vqkit train`` fills it from its options; a Python user can fill it directly.

    model:        ``vqkit.build_model`` keyword arguments for a NEW model (channels/image_size left out follow
                  the data). Ignored when ``init_from`` names an existing model file.
    init_from:    an existing model file to start from (fine-tuning: new optimizer, step 0); with ``resume``,
                  the run whose training state lies beside it continues exactly where it stopped.
    out:          the run folder (model.safetensors, train_state.pt, metrics.jsonl, recon_*.png);
                  None: a new ``runs/run-N``.
    batch_size:   images per step over all processes (each of W DDP processes takes batch_size / W).
    eval_every:   evaluate on held-out images and write a reconstruction grid every N steps (0: only at
                  the end). checkpoint_every: write model + training state every N steps (0: only at the end).
    log_every:    read metrics back from the device every N steps (the step itself never waits on the host).
    """

    model: dict[str, Any] = field(default_factory=default_model)
    init_from: str | None = None
    resume: bool = False
    data: str = DEFAULTS["data"]
    data_root: str | None = None
    download: bool = False
    skip_bad: bool = False
    channels: int | None = None
    image_size: int | None = None
    out: str | None = None
    steps: int = DEFAULTS["steps"]
    batch_size: int = DEFAULTS["batch_size"]
    lr: float = DEFAULTS["lr"]
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = DEFAULTS["warmup_steps"]
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    eval_every: int = 500
    eval_images: int = 1000
    checkpoint_every: int = 500
    log_every: int = 25
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool | None = None
    seed: int = 0
    progress: bool = True

    def validate(self) -> TrainConfig:
        def positive(name: str, value: float, allow_zero: bool = False) -> None:
            if value < 0 or (value == 0 and not allow_zero):
                raise OptionError(
                    f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}"
                )

        positive("steps", self.steps)
        positive("batch size", self.batch_size)
        positive("learning rate", self.lr)
        positive("log interval", self.log_every)
        positive("eval interval", self.eval_every, allow_zero=True)
        positive("eval images", self.eval_images, allow_zero=True)
        positive("checkpoint interval", self.checkpoint_every, allow_zero=True)
        positive("warm-up steps", self.warmup_steps, allow_zero=True)
        positive("weight decay", self.weight_decay, allow_zero=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise OptionError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise OptionError(f"min lr ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.schedule not in SCHEDULES:
            raise OptionError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.grad_clip is not None:
            positive("gradient clip", self.grad_clip)
        if self.resume and not self.init_from:
            raise OptionError("--resume needs --model PATH: the model file of the run to continue")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in known})
        config.betas = tuple(config.betas)  # type: ignore[assignment]
        return config
