"""Where a run's images come from: the one seam between the training loop and the data sources.

The loop asks :func:`open_training_data` for an object with ``get(step)`` (the batch of global step ``step``,
float in [-1, 1] on the device, a pure function of the seed and the step so that resuming needs no loader
state), ``local_batch``, ``wait_seconds`` (time spent waiting for data), ``images_seen`` and ``description``
(one header line), plus the held-out images it evaluates on.

Two paths: the decoded dataset held in memory (on the device when it fits there), or, for a folder or tar
shards whose decoded images exceed the memory budget (``data_memory_gb``), batches streamed from disk by
decoding worker processes (``vqkit.data.stream``). Both give the same batches for the same data and seed;
augmentation is drawn from (seed, epoch, sample) on both.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vqkit.data import BUILTIN, DataError, load_images
from vqkit.data.augment import Augment
from vqkit.data.budget import GIB, default_workers, describe_bytes, memory_budget
from vqkit.data.common import EmptySplitError, warn_if_batch_exceeds
from vqkit.data.shards import looks_like_shards
from vqkit.data.sources import StreamSource
from vqkit.training.batches import Batches
from vqkit.training.config import TrainConfig


class TrainingData(Protocol):
    local_batch: int
    description: str
    wait_seconds: float
    images_seen: int
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

    def __init__(
        self, images: np.ndarray, batches: Batches, name: str, augment: Augment | None = None, why: str = ""
    ) -> None:
        from vqkit.data.stream import StepOrder

        self.batches = batches
        self.local_batch = batches.local_batch
        self.channels, self.image_size = int(images.shape[1]), int(images.shape[-1])
        self.count = len(images)
        self.augment = augment if augment is not None and augment.active else None
        # the (epoch, sample) of each image of a step, for the augmentation draws: Batches' own order
        self.order = StepOrder(
            self.count, self.local_batch, seed=batches.seed, rank=batches.rank, world=batches.world
        )
        where = "on the device" if batches.resident and batches.device.type != "cpu" else "in memory"
        self.description = f"{name}: {self.count} training images, held {where}{why}" + (
            f", augmentation {self.augment.describe()}" if self.augment else ""
        )
        self.wait_seconds = 0.0
        self.images_seen = 0

    def get(self, step: int) -> torch.Tensor:
        t = time.perf_counter()
        x = self.batches.get(step)
        self.wait_seconds += time.perf_counter() - t
        self.images_seen += len(x)
        if self.augment is not None:
            from vqkit.data.augment_batch import augment_batch

            x = augment_batch(x, self.order.samples(step), self.augment, self.batches.seed)
        return x

    def close(self) -> None:
        pass


def _streamable(data: str) -> bool:
    """A folder of images or tar shards (the sources that can be streamed); datasets by name are arrays."""
    if data.lower() in BUILTIN:
        return False
    return Path(data).expanduser().is_dir() or looks_like_shards(data) or any(c in data for c in "*?[")


def _augment(config: TrainConfig) -> Augment:
    try:
        return Augment(scale=(config.augment_scale, 1.0), flip=bool(config.augment_flip))
    except DataError as exc:
        from vqkit.errors import OptionError

        raise OptionError(
            f"augment_scale must lie in (0, 1], got {config.augment_scale!r}", param="augment_scale"
        ) from exc


@dataclass
class _Run:
    """What every path needs to know about the run."""

    config: TrainConfig
    device: torch.device
    rank: int
    world: int
    channels_last: bool
    augment: Augment


def open_training_data(
    config: TrainConfig,
    channels: int | None,
    image_size: int | None,
    device: torch.device,
    *,
    rank: int = 0,
    world: int = 1,
    channels_last: bool = False,
) -> tuple[TrainingData, HeldOut]:
    """The training images of ``config.data`` and the held-out images for evaluation (the ``test`` split; a
    folder too small to hold any out is evaluated on its first training images, and the metrics say so).
    A folder or shards whose decoded training images exceed the memory budget are streamed."""
    run = _Run(config, device, rank, world, channels_last, _augment(config))
    if not _streamable(config.data):
        return _in_memory(run, channels, image_size, "")
    from vqkit.data.sources import open_source, probe

    source = open_source(config.data, "train")
    ch, size = probe(source, channels, image_size, config.skip_bad)
    need = len(source) * ch * size * size
    budget, how = memory_budget(config.data_memory_gb)
    if config.data_memory_gb is None:
        # Recorded in the run's config (and its checkpoints): a resumed run makes the same choice whatever memory
        # is free then, and so sees the same augmented pixels (the two paths crop from different images).
        config.data_memory_gb = round(budget / GIB, 3)
    if need <= budget:
        why = f" ({describe_bytes(need)} decoded, within {how})"
        if source.kind == "folder":
            return _in_memory(run, channels, image_size, why, held_as_streamed=True)
        from vqkit.data.stream import decode_first

        images = decode_first(source, ch, size, skip_bad=config.skip_bad)
        return _hold(run, images, why), _held_out(config, ch, size)
    return _stream(run, source, ch, size, f"{describe_bytes(need)} decoded, more than {how}")


def _stream(
    run: _Run, source: StreamSource, channels: int, size: int, why: str
) -> tuple[TrainingData, HeldOut]:
    from vqkit.data.stream import StreamingData, describe_stream

    config = run.config
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", run.world))
    workers = config.data_workers if config.data_workers is not None else default_workers(local_world)
    data = StreamingData(
        source,
        channels=channels,
        image_size=size,
        batch_size=config.batch_size,
        device=run.device,
        seed=config.seed,
        rank=run.rank,
        world=run.world,
        channels_last=run.channels_last,
        augment=run.augment,
        workers=workers,
        skip_bad=config.skip_bad,
    )
    data.description = describe_stream(source, workers, run.augment, why)
    try:
        return data, _held_out(config, channels, size)
    except BaseException:
        data.close()
        raise


def _held_out(config: TrainConfig, channels: int, image_size: int) -> HeldOut:
    """Up to ``eval_images`` held-out images of a streamed source, decoded now (the rest is never read)."""
    from vqkit.data.sources import open_source
    from vqkit.data.stream import decode_first

    try:
        source, split = open_source(config.data, "test"), "test"
    except EmptySplitError:
        source, split = open_source(config.data, "train"), "train"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped files are reported by the training stream
        images = decode_first(source, channels, image_size, config.eval_images, skip_bad=config.skip_bad)
    return HeldOut(images, split)


def _hold(run: _Run, images: np.ndarray, why: str) -> InMemoryData:
    config = run.config
    warn_if_batch_exceeds(len(images), config.batch_size, config.data)
    batches = Batches(
        images,
        config.batch_size,
        run.device,
        seed=config.seed,
        rank=run.rank,
        world=run.world,
        channels_last=run.channels_last,
    )
    return InMemoryData(images, batches, config.data, run.augment, why)


def _in_memory(
    run: _Run, channels: int | None, image_size: int | None, why: str, held_as_streamed: bool = False
) -> tuple[TrainingData, HeldOut]:
    """The training images in memory. ``held_as_streamed``: a folder that could have streamed reads its
    held-out images as the streamed path does, so both paths evaluate on the same images, and an unreadable
    one is the same error (or, with skip_bad, the same skip) on both."""
    config = run.config
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
    if held_as_streamed:
        return _hold(run, train, why), _held_out(config, train.shape[1], train.shape[-1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped files were already reported for the training split
            held = load_images(config.data, split="test", **kw)  # type: ignore[arg-type]
        split = "test"
    except EmptySplitError:  # only a source with nothing held out falls back, and the header says so
        held, split = train, "train"
    return _hold(run, train, why), HeldOut(held[: config.eval_images], split)
