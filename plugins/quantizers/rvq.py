from __future__ import annotations

import torch
from torch import nn

from vqkit.codebook import FlatQuantizer, check_estimator, code_stats, estimate, mean_stats
from vqkit.contracts import Quantized
from vqkit.distributed import broadcast_
from vqkit.plugins.quantizers._stages import codebook_kind, make_codebook
from vqkit.registry import quantizers


@quantizers.register("rvq")
class RVQ(FlatQuantizer):
    """Residual VQ: S codebooks, each quantizing what the previous stages left over; codes ``[B, h, w, S]``.

    ``stages`` codebooks of ``codebook_size`` codes each, of any codebook kind (``codebook=vq`` by default,
    or ``ema``, ``cosine``, ``simvq``, ...; ``ema=true`` is the older spelling of ``codebook=ema``); each takes
    the options below that it has (``decay`` only matters to ema). k-means init, restarts and the ste/rotation
    estimator applied to the summed codes. ``dropout=p``: in training, with probability p the decoder sees
    only the first n ~ U{1..S} stages (quantizer dropout, so coarse prefixes of the codes decode well); every
    stage still learns and every code is still reported.
    """

    def __init__(
        self,
        dim: int | None = None,
        codebook_size: int | None = None,
        stages: int = 4,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        init: str = "kmeans",
        restart_after: int = 10,
        estimator: str = "ste",
        dropout: float = 0.0,
        codebook: str = "vq",
    ) -> None:
        super().__init__()
        self.dim = int(dim or 64)
        self.codebook_size = int(codebook_size or 512)
        if stages < 1:
            raise ValueError(f"stages must be at least 1, got {stages}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must lie in [0, 1], got {dropout}")
        self.num_codebooks = int(stages)
        self.estimator = check_estimator(estimator)
        self.dropout = float(dropout)
        self.codebook_kind = codebook_kind(codebook, ema)
        shared = {"beta": beta, "decay": decay, "init": init, "restart_after": restart_after}
        self.stages = nn.ModuleList(
            make_codebook(self.dim, self.codebook_size, self.codebook_kind, **shared)
            for _ in range(self.num_codebooks)
        )

    def _active_stages(self, device: torch.device) -> int:
        """How many stages the decoder sees this step: all, or a prefix under quantizer dropout (rank 0's
        draw, broadcast, so DDP replicas agree)."""
        s = self.num_codebooks
        if not self.training or self.dropout == 0.0 or s == 1:
            return s
        n = torch.full((), s, dtype=torch.int64, device=device)
        if torch.rand(()) < self.dropout:
            n.fill_(int(torch.randint(1, s + 1, ())))
        return int(broadcast_(n))

    def forward_flat(self, rows: torch.Tensor) -> Quantized:
        flat = rows.float()
        active = self._active_stages(rows.device)
        residual = flat
        total = torch.zeros_like(flat)
        losses, indices, stats = [], [], []
        for i, stage in enumerate(self.stages):
            _, codes, idx, loss = stage.lookup_flat(residual)
            residual = residual - codes.detach()
            if i < active:
                total = total + codes
            losses.append(loss)
            indices.append(idx)
            stats.append(code_stats(idx, self.codebook_size))
        flat_q = estimate(flat, total, self.estimator)
        return Quantized(flat_q, torch.stack(indices, dim=-1), torch.stack(losses).sum(), mean_stats(stats))

    def quantize_flat(self, rows: torch.Tensor) -> torch.Tensor:
        residual = rows.float()
        indices = []
        for stage in self.stages:
            idx = stage.search(residual)
            residual = residual - stage.embed(idx)
            indices.append(idx)
        return torch.stack(indices, dim=-1)

    def dequantize_flat(self, indices: torch.Tensor) -> torch.Tensor:
        per_stage = indices.reshape(indices.shape[0], self.num_codebooks)
        return sum(stage.embed(per_stage[:, i]) for i, stage in enumerate(self.stages))
