from __future__ import annotations

import torch
from torch import nn
from vqkit.plugins.quantizers._stages import make_codebook

from vqkit.codebook import check_estimator, code_stats, estimate, mean_stats
from vqkit.contracts import Quantized, Quantizer, channels_last_flat, unflatten_channels_first
from vqkit.registry import quantizers


@quantizers.register("gvq")
class GVQ(Quantizer):
    """Grouped (product) VQ: the latent's channels split into G groups, each quantized by its own codebook;
    codes ``[B, h, w, G]``.

    ``groups`` must divide the latent dim. Each group codebook has ``codebook_size`` codes (vq-style, or EMA
    with ``ema=true``), k-means init, restarts and the ste/rotation estimator, as in vq.
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
        restart_after: int = 50,
        estimator: str = "ste",
    ) -> None:
        super().__init__()
        self.dim = int(dim or 64)
        self.codebook_size = int(codebook_size or 512)
        if groups < 1 or self.dim % groups:
            raise ValueError(f"groups must be a positive divisor of the latent dim {self.dim}, got {groups}")
        self.num_codebooks = int(groups)
        self.group_dim = self.dim // self.num_codebooks
        self.estimator = check_estimator(estimator)
        self.groups = nn.ModuleList(
            make_codebook(
                self.group_dim,
                self.codebook_size,
                ema=ema,
                beta=beta,
                decay=decay,
                init=init,
                restart_after=restart_after,
            )
            for _ in range(self.num_codebooks)
        )

    def forward(self, z: torch.Tensor) -> Quantized:
        b, _, h, w = z.shape
        parts = channels_last_flat(z).split(self.group_dim, dim=-1)
        outs, losses, indices, stats = [], [], [], []
        for part, group in zip(parts, self.groups):
            flat, codes, idx, loss = group.lookup_flat(part)
            outs.append(estimate(flat, codes.to(flat.dtype), self.estimator))
            losses.append(loss)
            indices.append(idx)
            stats.append(code_stats(idx, self.codebook_size))
        z_q = unflatten_channels_first(torch.cat(outs, dim=-1), b, h, w).to(z.dtype)
        codes_out = torch.stack(indices, dim=-1).reshape(b, h, w, self.num_codebooks)
        return Quantized(z_q, codes_out, torch.stack(losses).sum(), mean_stats(stats))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        parts = channels_last_flat(z).split(self.group_dim, dim=-1)
        indices = [group.search(part) for part, group in zip(parts, self.groups)]
        return torch.stack(indices, dim=-1).reshape(b, h, w, self.num_codebooks)

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = indices.shape
        flat = indices.reshape(b * h * w, self.num_codebooks)
        parts = [group.embed(flat[:, i]) for i, group in enumerate(self.groups)]
        return unflatten_channels_first(torch.cat(parts, dim=-1), b, h, w)
