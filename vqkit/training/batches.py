"""Batches from an in-memory uint8 dataset, held on the training device when it fits: the held residency.

The order is :class:`vqkit.data.order.StepOrder`'s, the one a streamed run uses. Augmentation is
:func:`vqkit.data.augment.augment_images` on the stored squares, the function a decoding worker applies to
the square it decoded, so a held and a streamed run of the same data give the same pixels. An augmented run
keeps its images in host memory (the crops are made there, as the workers make them).

``bad``: samples that could not be read (``skip_bad``); in a batch each takes a copy of the next readable image
of the same batch, the rule of a streamed batch.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from vqkit.data.augment import NO_AUGMENT, Augment, augment_images
from vqkit.data.decode import stand_ins
from vqkit.data.order import StepOrder
from vqkit.errors import OptionError

# Keep the data on the GPU when it takes at most this fraction of the free memory.
RESIDENT_FRACTION = 0.25


class Batches:
    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        device: torch.device,
        *,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        channels_last: bool = False,
        augment: Augment = NO_AUGMENT,
        bad: np.ndarray | None = None,
    ) -> None:
        if batch_size % world:
            raise OptionError(
                f"batch size {batch_size} must be divisible by the number of processes ({world})"
            )
        self.order = StepOrder(len(images), batch_size // world, seed=seed, rank=rank, world=world)
        self.local_batch = self.order.local_batch
        self.seed, self.rank, self.world = seed, rank, world
        self.device = device
        self.channels_last = channels_last
        self.augment = augment
        self.bad = bad if bad is not None and bad.any() else None
        data = torch.from_numpy(np.ascontiguousarray(images))
        host = augment.active or self.bad is not None  # batches are made on the host
        self.resident = device.type == "cpu" or (not host and _fits(data, device))
        self.data = data.to(device) if self.resident else data
        if not self.resident and device.type == "cuda":
            self.data = self.data.pin_memory()
        self._perms: dict[int, torch.Tensor] = {}  # epoch -> permutation on the data's device
        # what the training loop reads of any residency (``vqkit.training.data.TrainingData``)
        self.count, self.channels, self.image_size = len(images), int(images.shape[1]), int(images.shape[-1])
        self.description = f"{self.count} images held in memory"
        self.wait_seconds = 0.0
        self.images_seen = 0

    def _epoch(self, epoch: int) -> torch.Tensor:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = torch.from_numpy(self.order.epoch(epoch)).to(self.data.device, non_blocking=True)
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def indices(self, step: int) -> torch.Tensor:
        """``step``'s dataset indices, on the data's device (no host sync when it is a GPU)."""
        parts = [self._epoch(e)[a:b] for e, a, b in self.order.spans(step)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def uint8(self, step: int) -> torch.Tensor:
        """``step``'s uint8 images ``[B, C, S, S]``, augmented, on the data's device."""
        if self.bad is None and not self.augment.active:
            return self.data[self.indices(step)]
        idx = self.order.indices(step)
        images = augment_images(self.data.numpy()[idx], self.order.samples(step), self.augment, self.seed)
        if self.bad is not None:
            images = images[stand_ins(self.bad[idx])]
        return torch.from_numpy(images)

    def get(self, step: int) -> torch.Tensor:
        """Float images in [-1, 1] for ``step``, on the training device. Never waits on the device."""
        start = time.perf_counter()
        batch = self.uint8(step)
        if batch.device != self.device:
            if self.device.type == "cuda":
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True)
        x = batch.float().div_(127.5).sub_(1.0)
        self.wait_seconds += time.perf_counter() - start
        self.images_seen += len(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def close(self) -> None:
        pass


def _fits(data: torch.Tensor, device: torch.device) -> bool:
    if device.type != "cuda":
        return True  # MPS shares memory with the host
    free, _ = torch.cuda.mem_get_info(device)
    return data.numel() * data.element_size() <= RESIDENT_FRACTION * free
