from __future__ import annotations

import torch
import torch.nn.functional as F

from vqkit.codebook import Codebook, cluster_sums
from vqkit.distributed import all_reduce_sum_
from vqkit.registry import quantizers


@quantizers.register("ema")
class EMA(Codebook):
    """VQ whose codebook follows exponential moving averages of its assigned latents (no codebook loss).

    Per code: ``N <- decay N + (1-decay) n`` and ``m <- decay m + (1-decay) sum(z)``, code = m / N with
    Laplace-smoothed N. Counts and sums are all-reduced over DDP ranks, so replicas stay identical.
    The loss is beta x commitment only. k-means init, restarts and the rotation estimator as in vq.
    """

    def __init__(
        self,
        dim: int | None = None,
        codebook_size: int | None = None,
        beta: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        init: str = "kmeans",
        restart_after: int = 10,
        estimator: str = "ste",
    ) -> None:
        super().__init__(dim, codebook_size, beta, init, restart_after, estimator)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.eps = float(eps)
        self.embedding.weight.requires_grad_(False)
        # cluster_size = 1 and embed_sum = codes keep code = embed_sum / cluster_size from the start, so an
        # unused code keeps its place instead of being divided by a near-zero count.
        self.register_buffer("cluster_size", torch.ones(self.codebook_size))
        self.register_buffer("embed_sum", self.embedding.weight.detach().clone())

    def _loss(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.beta * F.mse_loss(codes.detach().float(), flat.float())

    @torch.no_grad()
    def _set_rows(self, mask: torch.Tensor | None, rows: torch.Tensor) -> None:
        super()._set_rows(mask, rows)
        if mask is None:
            self.cluster_size.fill_(1.0)
            self.embed_sum.copy_(rows.float())
        else:
            self.cluster_size[mask] = 1.0
            self.embed_sum[mask] = rows.float()

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        _, sums = cluster_sums(flat, indices, self.codebook_size)
        all_reduce_sum_(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embedding.weight.data.copy_(self.embed_sum / smoothed.unsqueeze(1))
