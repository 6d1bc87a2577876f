from __future__ import annotations

import torch
from torch import nn

from vqkit.codebook import FlatQuantizer, check_estimator, code_stats, estimate, mean_stats
from vqkit.contracts import Quantized
from vqkit.plugins.quantizers._stages import codebook_kind, make_codebook
from vqkit.registry import quantizers


@quantizers.register("gvq")
class GVQ(FlatQuantizer):
    """Grouped (product) VQ: the latent's channels split into G groups, each quantized by its own codebook;
    codes ``[B, h, w, G]``.

    ``groups`` must divide the latent dim. Each group codebook has ``codebook_size`` codes, of any codebook
    kind (``codebook=vq`` by default, or ``ema``, ``cosine``, ``simvq``, ...; ``ema=true`` is the older
    spelling of ``codebook=ema``), with k-means init, restarts and the ste/rotation estimator, as in vq.
    """

    def __init__(
        self,
        dim: int | None = None,
        codebook_size: int | None = None,
        groups: int = 2,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        init: str = "kmeans",
        restart_after: int = 10,
        estimator: str = "ste",
        codebook: str = "vq",
    ) -> None:
        super().__init__()
        self.dim = int(dim or 64)
        self.codebook_size = int(codebook_size or 512)
        if groups < 1 or self.dim % groups:
            raise ValueError(f"groups must be a positive divisor of the latent dim {self.dim}, got {groups}")
        self.num_codebooks = int(groups)
        self.group_dim = self.dim // self.num_codebooks
        self.estimator = check_estimator(estimator)
        self.codebook_kind = codebook_kind(codebook, ema)
        shared = {"beta": beta, "decay": decay, "init": init, "restart_after": restart_after}
        self.groups = nn.ModuleList(
            make_codebook(self.group_dim, self.codebook_size, self.codebook_kind, **shared)
            for _ in range(self.num_codebooks)
        )

    def forward_flat(self, rows: torch.Tensor) -> Quantized:
        outs, losses, indices, stats = [], [], [], []
        for part, group in zip(rows.split(self.group_dim, dim=-1), self.groups):
            flat, codes, idx, loss = group.lookup_flat(part)
            outs.append(estimate(flat, codes.to(flat.dtype), self.estimator))
            losses.append(loss)
            indices.append(idx)
            stats.append(code_stats(idx, self.codebook_size))
        return Quantized(
            torch.cat(outs, dim=-1),
            torch.stack(indices, dim=-1),
            torch.stack(losses).sum(),
            mean_stats(stats),
        )

    def quantize_flat(self, rows: torch.Tensor) -> torch.Tensor:
        parts = rows.split(self.group_dim, dim=-1)
        return torch.stack([group.search(part) for part, group in zip(parts, self.groups)], dim=-1)

    def dequantize_flat(self, indices: torch.Tensor) -> torch.Tensor:
        per_group = indices.reshape(indices.shape[0], self.num_codebooks)
        return torch.cat([group.embed(per_group[:, i]) for i, group in enumerate(self.groups)], dim=-1)
