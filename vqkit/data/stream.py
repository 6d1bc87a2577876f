"""Training batches streamed from a folder of images or tar shards: bounded memory whatever the data's size.

The batch of global step ``s`` is :class:`vqkit.data.order.StepOrder`'s, the order the in-memory batches
use too, and every augmentation draw is seeded by (seed, epoch, sample) and made by the same function on the
same square image (:func:`vqkit.data.augment.augment_image`). So a run resumed at step ``s`` computes where it
is and decodes only what it trains on, and a folder streamed or held gives the same batches.

Batches are decoded ahead by worker processes (``vqkit.data.workers``): at most ``workers * prefetch``
batches are in flight, so memory does not grow with the dataset; only the list of samples does.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from vqkit.data.augment import NO_AUGMENT, Augment
from vqkit.data.common import DataError, DataWarning, warn_if_batch_exceeds
from vqkit.data.decode import DecodeSpec, Item, decode_batch
from vqkit.data.order import StepOrder
from vqkit.data.sources import StreamSource
from vqkit.data.workers import DecodePool
from vqkit.errors import OptionError, VQKitError

PREFETCH = 2  # batches queued per worker: enough to hide the jitter of decoding, little memory


def describe_stream(source: StreamSource, workers: int, augment: Augment, why: str = "") -> str:
    """One header line: what is streamed, why (``why``: the reason it is not held in memory), and by whom."""
    decoders = f"{workers} decoding worker processes" if workers else "decoded in the training process"
    return (
        f"{source.where}: {len(source)} training images streamed from the {source.kind}"
        + (f" ({why})" if why else "")
        + f", {decoders}"
        + (f", augmentation {augment.describe()}" if augment.active else "")
    )


class StreamingData:
    """The training-data interface over a :class:`~vqkit.data.sources.StreamSource`: ``get(step)`` returns
    float images in [-1, 1] ``[local_batch, C, H, W]`` on ``device``; ``wait_seconds`` is the time
    ``get`` spent waiting for decoded images; ``images_seen`` counts what it returned."""

    def __init__(
        self,
        source: StreamSource,
        *,
        channels: int,
        image_size: int,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        channels_last: bool = False,
        augment: Augment | None = None,
        workers: int = 2,
        skip_bad: bool = False,
    ) -> None:
        if batch_size % world:
            raise OptionError(
                f"batch size {batch_size} must be divisible by the number of processes ({world})"
            )
        if workers < 0:
            raise OptionError(f"workers must be non-negative, got {workers}")
        self.source = source
        self.local_batch = batch_size // world
        self.order = StepOrder(len(source), self.local_batch, seed=seed, rank=rank, world=world)
        warn_if_batch_exceeds(len(source), batch_size, source.where)
        self.spec = DecodeSpec(channels, image_size, augment or NO_AUGMENT, seed, skip_bad)
        self.channels, self.image_size = channels, image_size
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.workers = workers
        self.wait_seconds = 0.0
        self.images_seen = 0
        self.skipped: dict[str, str] = {}  # name -> why, of every file left out under skip_bad
        self.description = describe_stream(source, workers, self.spec.augment)
        self._pool: DecodePool | None = None
        self._reported = False  # the count of skipped files is said once, at close
        self._next = -1  # the step the queued batches continue from
        self._queued = 0  # batches submitted up to (excluding) this step
        self._base = 0  # the step the pool's round-robin started at

    def items(self, step: int) -> list[Item]:
        return [self.source.item(epoch, i) for epoch, i in self.order.samples(step)]

    def get(self, step: int) -> torch.Tensor:
        t0 = time.perf_counter()
        if self.workers == 0:
            reply = self._decode_here(step)
        else:
            if step != self._next:
                self._restart(step)
            self._fill(step)
            reply = self._pool.reply((step - self._base) % self.workers)  # type: ignore[union-attr]
            self._next = step + 1
        images = self._unpack(reply, step)
        self.wait_seconds += time.perf_counter() - t0
        self.images_seen += len(images)
        x = torch.from_numpy(images)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        x = x.float().div_(127.5).sub_(1.0)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _decode_here(self, step: int) -> tuple:
        try:
            images, skipped = decode_batch(self.items(step), self.spec)
            return ("ok", step, images, skipped)
        except VQKitError as exc:
            return ("error", step, str(exc), True)

    def _restart(self, step: int) -> None:
        """Start decoding from ``step`` (the first call, or a step out of sequence): batches queued for
        other steps are dropped with the old workers."""
        self._close_pool()
        self._pool = DecodePool(self.workers, self.spec)
        self._base = self._queued = self._next = step

    def _fill(self, step: int) -> None:
        assert self._pool is not None
        while self._queued < step + self.workers * PREFETCH:
            s = self._queued
            self._pool.submit((s - self._base) % self.workers, s, self.items(s))
            self._queued += 1

    def _unpack(self, reply: tuple, step: int) -> np.ndarray:
        status, got = reply[0], reply[1]
        if got != step:  # a worker answers in order; anything else is a bug here, not the user's
            raise RuntimeError(f"decoding worker answered step {got} when step {step} was asked")
        if status == "error":
            message, user_error = reply[2], reply[3]
            if not user_error:
                raise RuntimeError(f"a decoding worker failed:\n{message}")
            self.close()
            hint = "" if self.spec.skip_bad else " (skip_bad, --skip-bad, leaves such files out)"
            raise DataError(f"{message}{hint}")
        images, skipped = reply[2], reply[3]
        for name, why in skipped:
            if name not in self.skipped:
                if not self.skipped:
                    warnings.warn(
                        f"skipping unreadable images of {self.source.where}, first {why} "
                        "(each is replaced by another image of its batch; the count comes at the end)",
                        DataWarning,
                        stacklevel=3,
                    )
                self.skipped[name] = why
        return images

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._next = -1

    def close(self) -> None:
        self._close_pool()
        if self.skipped and not self._reported:
            self._reported = True
            warnings.warn(
                f"left out {len(self.skipped)} unreadable image(s) of {self.source.where} in all "
                f"(e.g. {next(iter(self.skipped.values()))})",
                DataWarning,
                stacklevel=2,
            )

    def __enter__(self) -> StreamingData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
