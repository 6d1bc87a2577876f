from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqkit.codebook import code_stats, nearest_code
from vqkit.contracts import Quantized, Quantizer, channels_last_flat, unflatten_channels_first
from vqkit.registry import quantizers

INITS = ("normal", "uniform")


@quantizers.register("vq")
class VQ(Quantizer):
    """The standard VQ-VAE quantizer (the seed's VQEmbedding): nearest code, codebook + beta x commitment loss.

    ``init="uniform"`` is the seed's U(-1/K, 1/K) codebook, which collapses to a few codes in training;
    ``init="normal"`` (default) draws N(0, 1) like ``nn.Embedding``.
    """

    def __init__(
        self,
        dim: int | None = None,
        codebook_size: int | None = None,
        beta: float = 0.25,
        init: str = "normal",
    ) -> None:
        super().__init__()
        self.dim = int(dim or 64)
        self.codebook_size = int(codebook_size or 512)
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.beta = float(beta)
        self.embedding = nn.Embedding(self.codebook_size, self.dim)
        if init == "uniform":
            self.embedding.weight.data.uniform_(-1 / self.codebook_size, 1 / self.codebook_size)

    def forward(self, z: torch.Tensor) -> Quantized:
        b, _, h, w = z.shape
        indices = nearest_code(channels_last_flat(z.detach()), self.embedding.weight)
        z_q = unflatten_channels_first(self.embedding(indices), b, h, w).to(z.dtype)
        loss = F.mse_loss(z_q.float(), z.detach().float()) + self.beta * F.mse_loss(
            z_q.detach().float(), z.float()
        )
        z_q = z + (z_q - z).detach()
        indices = indices.reshape(b, h, w)
        return Quantized(z_q, indices, loss, code_stats(indices, self.codebook_size))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        return nearest_code(channels_last_flat(z), self.embedding.weight).reshape(b, h, w)

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        b, h, w = indices.shape
        return unflatten_channels_first(self.embedding(indices.reshape(-1)), b, h, w)
