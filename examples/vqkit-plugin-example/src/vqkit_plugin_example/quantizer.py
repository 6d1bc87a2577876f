from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqkit.contracts import Quantized, Quantizer
from vqkit.registry import quantizers


@quantizers.register("example-vq")
class ExampleVQ(Quantizer):
    """Nearest-code VQ that keeps every code in use by moving unused codes onto the encoder's latents.

    ``beta`` weighs the commitment loss. On the first training batch every code is set to a latent drawn
    from it; on later batches (with ``restart=True``) each code no latent picked is moved onto one. Plain VQ
    with a N(0, 1) codebook uses a handful of codes on MNIST; this uses most of them.
    """

    def __init__(
        self,
        dim: int | None = None,
        codebook_size: int | None = None,
        beta: float = 0.25,
        restart: bool = True,
    ) -> None:
        super().__init__()
        # None means "the user did not say": pick a default (the builder gives encoder/decoder this dim).
        self.dim = int(dim or 16)
        self.codebook_size = int(codebook_size or 128)
        if self.codebook_size < 2 or beta < 0:
            raise ValueError(f"need codebook_size >= 2 and beta >= 0, got {self.codebook_size} and {beta}")
        self.beta = float(beta)
        self.restart = bool(restart)
        self.codebook = nn.Parameter(torch.randn(self.codebook_size, self.dim))
        # State that is not a gradient lives in a buffer, so the model file stores it.
        self.register_buffer("initialised", torch.tensor(False))

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, D, h, w]`` -> ``[B*h*w, D]``."""
        return z.permute(0, 2, 3, 1).reshape(-1, self.dim)

    def _search(self, flat: torch.Tensor) -> torch.Tensor:
        # |z|^2 - 2 z.e + |e|^2, then argmin: exports to ONNX (torch.cdist does not, for small inputs).
        # In fp32 even under bf16 autocast (training with --precision bf16): bf16 distances would pick
        # other codes than the fp32 search the exported model runs.
        with torch.autocast(device_type=flat.device.type, enabled=False):
            flat, e = flat.float(), self.codebook.float()
            d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1).unsqueeze(0)
        return d.argmin(dim=1)

    def forward(self, z: torch.Tensor) -> Quantized:
        b, _, h, w = z.shape
        flat = self._flat(z)
        if self.training:  # only in training: evaluating a model must never change it
            self._reseed(flat.detach())
        indices = self._search(flat.detach())
        z_q = self.dequantize(indices.reshape(b, h, w))
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        stats = {"perplexity": perplexity.detach(), "codes_used": (counts > 0).sum().float()}
        # Straight-through: the decoder's gradient reaches the encoder as if quantization were the identity.
        return Quantized(z + (z_q - z).detach(), indices.reshape(b, h, w), loss, stats)

    @torch.no_grad()
    def _reseed(self, flat: torch.Tensor) -> None:
        # Before the search, so no tensor autograd saved for the backward pass is modified afterwards.
        if not bool(self.initialised):
            dead = torch.ones(self.codebook_size, dtype=torch.bool, device=flat.device)
            self.initialised.fill_(True)
        elif self.restart:
            dead = torch.bincount(self._search(flat), minlength=self.codebook_size) == 0
        else:
            return
        picks = torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)
        self.codebook[dead] = flat[picks]

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        return self._search(self._flat(z)).reshape(b, h, w)

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        b, h, w = indices.shape
        return self.codebook[indices.reshape(-1)].reshape(b, h, w, self.dim).permute(0, 3, 1, 2)
