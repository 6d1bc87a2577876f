"""The one batch order of a run, whatever holds the images (memory or a stream from disk).

The samples form a stream of per-epoch permutations: epoch ``e`` is shuffled by ``seed`` and ``e``, each DDP
rank takes every ``world``-th sample of it (equal counts: the step count must agree on every rank), and step
``s`` takes positions ``[s*B, (s+1)*B)`` of the rank's stream. A pure function of (seed, step, data, rank,
world): a run resumed at any step computes where it is, with no saved loader state, and a dataset smaller
than a batch works. Imports torch (the permutation is ``torch.randperm``'s, as runs have always used).
"""

from __future__ import annotations

import numpy as np

from vqkit.errors import OptionError


class StepOrder:
    """Which samples ``(epoch, index)`` global step ``s`` gives to ``rank``."""

    def __init__(self, n: int, local_batch: int, *, seed: int, rank: int = 0, world: int = 1) -> None:
        if n < world:
            raise OptionError(f"{n} image(s) cannot be shared among {world} processes")
        self.n, self.local_batch = n, local_batch
        self.seed, self.rank, self.world = seed, rank, world
        self.shard_size = n // world
        self._perms: dict[int, np.ndarray] = {}

    def epoch(self, epoch: int) -> np.ndarray:
        """This rank's share of epoch ``epoch``'s permutation (int64 sample indices)."""
        perm = self._perms.get(epoch)
        if perm is None:
            import torch

            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            full = torch.randperm(self.n, generator=g)[: self.shard_size * self.world]
            perm = full[self.rank :: self.world].numpy()
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def spans(self, step: int) -> list[tuple[int, int, int]]:
        """``(epoch, start, stop)`` slices of the epochs' permutations that make up ``step``'s batch."""
        out = []
        pos, end = step * self.local_batch, (step + 1) * self.local_batch
        while pos < end:
            epoch, offset = divmod(pos, self.shard_size)
            take = min(end - pos, self.shard_size - offset)
            out.append((epoch, offset, offset + take))
            pos += take
        return out

    def indices(self, step: int) -> np.ndarray:
        """The dataset indices of ``step``'s local batch."""
        return np.concatenate([self.epoch(e)[a:b] for e, a, b in self.spans(step)])

    def samples(self, step: int) -> list[tuple[int, int]]:
        """``(epoch, dataset index)`` of each image of ``step``'s local batch (what augmentation is drawn by)."""
        return [(e, int(i)) for e, a, b in self.spans(step) for i in self.epoch(e)[a:b]]
