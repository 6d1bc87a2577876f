"""Batches from an in-memory uint8 dataset, held on the training device when it fits.

The order is a pure function of (seed, step, rank): the stream of sample indices is the concatenation of
per-epoch permutations (epoch e shuffled by ``seed`` and ``e``), and step ``s`` takes positions
``[s*B, (s+1)*B)`` of it. So resuming at any step needs no saved loader state, datasets smaller than a batch
work, and under DDP each rank reads a disjoint shard (a DistributedSampler without the padding).
"""

from __future__ import annotations

import numpy as np
import torch

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
    ) -> None:
        if batch_size % world:
            raise OptionError(
                f"batch size {batch_size} must be divisible by the number of processes ({world})"
            )
        n = len(images)
        if n < world:
            raise OptionError(f"{n} image(s) cannot be shared among {world} processes")
        self.local_batch = batch_size // world
        self.seed, self.rank, self.world = seed, rank, world
        self.shard_size = n // world  # every rank gets the same number, as the step count must agree
        self.n = n
        self.device = device
        self.channels_last = channels_last
        data = torch.from_numpy(np.ascontiguousarray(images))
        self.resident = device.type == "cpu" or _fits(data, device)
        self.data = data.to(device) if self.resident else data.pin_memory()
        self._perms: dict[int, torch.Tensor] = {}

    def _epoch(self, epoch: int) -> torch.Tensor:
        """This rank's shard of epoch ``epoch``'s permutation (on the data's device)."""
        perm = self._perms.get(epoch)
        if perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            full = torch.randperm(self.n, generator=g)[: self.shard_size * self.world]
            perm = full[self.rank :: self.world].to(self.data.device, non_blocking=True)
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def indices(self, step: int) -> torch.Tensor:
        start = step * self.local_batch
        stop = start + self.local_batch
        first, last = start // self.shard_size, (stop - 1) // self.shard_size
        stream = (
            torch.cat([self._epoch(e) for e in range(first, last + 1)])
            if last > first
            else self._epoch(first)
        )
        offset = start - first * self.shard_size
        return stream[offset : offset + self.local_batch]

    def get(self, step: int) -> torch.Tensor:
        """Float images in [-1, 1] for ``step``, on the training device. Never waits on the device."""
        batch = self.data[self.indices(step)]
        if not self.resident:
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        x = batch.float().div_(127.5).sub_(1.0)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _fits(data: torch.Tensor, device: torch.device) -> bool:
    if device.type != "cuda":
        return True  # MPS shares memory with the host
    free, _ = torch.cuda.mem_get_info(device)
    return data.numel() * data.element_size() <= RESIDENT_FRACTION * free
