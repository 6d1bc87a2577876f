"""Where a run's images come from: the one seam between the training loop and the data sources.

The loop asks :func:`open_training_data` for an object with ``get(step)`` (the batch of global step ``step``,
float in [-1, 1] on the device, a pure function of the seed and the step so that resuming needs no loader
state), ``local_batch``, ``wait_seconds`` (time spent waiting for data), ``images_seen`` and ``description``
(one header line), plus the held-out images it evaluates on.

One pipeline, two residencies: a folder's or shards' decoded training images are held in memory when they
fit the memory budget (``data_memory_gb``), else streamed from disk by decoding worker processes. Both decode
the same squares with the same code, in the same order (:class:`vqkit.data.order.StepOrder`), augment them
with the same function, and evaluate on the same held-out images (read through
:func:`vqkit.data.imageset.open_images`): the residency changes speed only, so a resumed run may take the
other one. A dataset by name (mnist5k, torchvision sets) is an array and is held.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from vqkit.data import DataError, load_images
from vqkit.data.augment import Augment
from vqkit.data.budget import default_workers, describe_bytes, memory_budget
from vqkit.data.common import EmptySplitError, warn_if_batch_exceeds
from vqkit.data.imageset import StreamedImages, decode_in_place, open_images, streamable
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
    source too small to hold any out is evaluated on its first training images, and the metrics say so).
    A folder or shards whose decoded training images exceed the memory budget are streamed."""
    run = _Run(config, device, rank, world, channels_last, _augment(config))
    if not streamable(config.data):
        return _named_dataset(run, channels, image_size)
    from vqkit.data.sources import open_source, probe

    source = open_source(config.data, "train")
    ch, size = probe(source, channels, image_size, config.skip_bad)
    held_out = _held_out(config, ch, size)
    need = len(source) * ch * size * size
    budget, how = memory_budget(config.data_memory_gb)
    if need > budget:
        return _stream(run, source, ch, size, f"{describe_bytes(need)} decoded, more than {how}"), held_out
    images, bad = decode_in_place(StreamedImages(source, ch, size, config.skip_bad))
    return _hold(run, images, f" ({describe_bytes(need)} decoded, within {how})", bad), held_out


def _stream(run: _Run, source: StreamSource, channels: int, size: int, why: str) -> TrainingData:
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
    return data


def _held_out(config: TrainConfig, channels: int, image_size: int) -> HeldOut:
    """Up to ``eval_images`` held-out images, decoded now (the rest of the split is never read)."""
    kw = dict(channels=channels, image_size=image_size, skip_bad=config.skip_bad)
    try:
        found, split = open_images(config.data, split="test", **kw), "test"  # type: ignore[arg-type]
    except EmptySplitError:
        found, split = open_images(config.data, split="train", **kw), "train"  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped files are reported by the training images
        return HeldOut(found.read(config.eval_images), split)


def _hold(run: _Run, images: np.ndarray, why: str, bad: np.ndarray | None = None) -> Batches:
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
        augment=run.augment,
        bad=bad,
    )
    where = "on the device" if batches.resident and batches.device.type != "cpu" else "in memory"
    augment = f", augmentation {run.augment.describe()}" if run.augment.active else ""
    batches.description = f"{config.data}: {batches.count} training images, held {where}{why}{augment}"
    return batches


def _named_dataset(run: _Run, channels: int | None, image_size: int | None) -> tuple[TrainingData, HeldOut]:
    """mnist5k or a torchvision set: arrays already, held in memory."""
    config = run.config
    kw = dict(channels=channels, image_size=image_size, download=config.download, data_root=config.data_root)
    train = load_images(config.data, split="train", **kw)  # type: ignore[arg-type]
    kw.update(channels=train.shape[1], image_size=train.shape[-1])
    try:
        held, split = load_images(config.data, split="test", **kw), "test"  # type: ignore[arg-type]
    except EmptySplitError:
        held, split = train, "train"
    return _hold(run, train, ""), HeldOut(held[: config.eval_images], split)
