"""Where a run's images come from: the one seam between the training loop and the data sources.

The loop asks :func:`open_training_data` for an object with ``get(step)`` (the batch of global step ``step``,
float in [-1, 1] on the device, a pure function of the seed and the step so that resuming needs no loader
state), ``local_batch``, ``wait_seconds`` (time spent waiting for data) and ``description`` (one header line),
plus the held-out images it evaluates on.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from vqkit.data import DataError, load_images
from vqkit.training.batches import Batches
from vqkit.training.config import TrainConfig


class TrainingData(Protocol):
    local_batch: int
    description: str
    wait_seconds: float
    channels: int
    image_size: int

    def get(self, step: int) -> torch.Tensor: ...

    def close(self) -> None: ...


@dataclass
class HeldOut:
    images: np.ndarray  # uint8 [N, C, H, W]
    split: str  # "test", or "train" when the source holds nothing out


class InMemoryData:
    """The whole decoded dataset as one uint8 array (on the training device when it fits)."""

    def __init__(self, images: np.ndarray, batches: Batches, name: str) -> None:
        self.batches = batches
        self.local_batch = batches.local_batch
        self.channels, self.image_size = int(images.shape[1]), int(images.shape[-1])
        self.count = len(images)
        where = "on the device" if batches.resident and batches.device.type != "cpu" else "in memory"
        self.description = f"{name}: {self.count} training images, held {where}"
        self.wait_seconds = 0.0

    def get(self, step: int) -> torch.Tensor:
        t = time.perf_counter()
        x = self.batches.get(step)
        self.wait_seconds += time.perf_counter() - t
        return x

    def close(self) -> None:
        pass


def open_training_data(
    config: TrainConfig,
    channels: int | None,
    image_size: int | None,
    device: torch.device,
    *,
    rank: int = 0,
    world: int = 1,
    channels_last: bool = False,
) -> tuple[InMemoryData, HeldOut]:
    """The training images of ``config.data`` and the held-out images for evaluation (the ``test`` split; a
    folder too small to hold any out is evaluated on its first training images, and the metrics say so)."""
    kw = dict(
        channels=channels,
        image_size=image_size,
        download=config.download,
        skip_bad=config.skip_bad,
        data_root=config.data_root,
    )
    train = load_images(config.data, split="train", **kw)  # type: ignore[arg-type]
    # After the training split, size and channels are known: the held-out images must match them.
    kw.update(channels=train.shape[1], image_size=train.shape[-1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped files were already reported for the training split
            held = load_images(config.data, split="test", **kw)  # type: ignore[arg-type]
        split = "test"
    except DataError:
        held, split = train, "train"
    if config.batch_size > len(train):
        warnings.warn(
            f"batch_size {config.batch_size} is larger than the {len(train)} training images: every step "
            "repeats images within its batch",
            DataWarning,
            stacklevel=2,
        )
    batches = Batches(
        train,
        config.batch_size,
        device,
        seed=config.seed,
        rank=rank,
        world=world,
        channels_last=channels_last,
    )
    return InMemoryData(train, batches, config.data), HeldOut(held[: config.eval_images], split)


class DataWarning(UserWarning):
    pass
