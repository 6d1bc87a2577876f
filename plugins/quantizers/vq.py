from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqkit.codebook import CodebookUpkeep, check_estimator, code_stats, estimate, kmeans, nearest_code
from vqkit.contracts import Quantized, Quantizer, channels_last_flat, unflatten_channels_first
from vqkit.registry import quantizers

INITS = ("normal", "uniform", "kmeans")


@quantizers.register("vq")
class VQ(Quantizer):
    """The standard VQ-VAE quantizer (the seed's VQEmbedding): nearest code, codebook + beta x commitment loss.

    ``init="uniform"`` is the seed's U(-1/K, 1/K) codebook, which collapses to a few codes in training;
    ``init="normal"`` (default) draws N(0, 1) like ``nn.Embedding``; ``init="kmeans"`` runs k-means++ on the
    first training batch's latents. ``restart_after=N`` re-seeds codes unused for N training steps from
    poorly quantized latents of the batch (0, the default: never). ``estimator="rotation"`` passes
    gradients by the rotation trick instead of straight-through. With init=uniform it is exactly the seed's
    quantizer. (ema, cosine, rvq, gvq, simvq default to k-means init; see README "Quantizers".)
    """

    # Subclasses (ema, cosine, simvq) change only the hooks below: codebook, _normalise, _loss, _update,
    # _seed_rows, _set_rows; the search, upkeep and estimator stay here.

    def __init__(
        self,
        dim: int | None = None,
        codebook_size: int | None = None,
        beta: float = 0.25,
        init: str = "normal",
        restart_after: int = 0,
        estimator: str = "ste",
    ) -> None:
        super().__init__()
        self.dim = int(dim or 64)
        self.codebook_size = int(codebook_size or 512)
        if self.dim < 1 or self.codebook_size < 2:
            raise ValueError(f"need dim >= 1 and codebook_size >= 2, got {self.dim} and {self.codebook_size}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.beta = float(beta)
        self.init = init
        self.estimator = check_estimator(estimator)
        self.embedding = nn.Embedding(self.codebook_size, self.dim)
        if init == "uniform":
            self.embedding.weight.data.uniform_(-1 / self.codebook_size, 1 / self.codebook_size)
        self.upkeep = CodebookUpkeep(self.codebook_size, init == "kmeans", restart_after)

    # --- hooks for subclasses ---------------------------------------------------------------------------
    def codebook(self) -> torch.Tensor:
        """The codes the search runs against, ``[K, D]`` (with gradients where they are learnt)."""
        return self.embedding.weight

    def _normalise(self, flat: torch.Tensor) -> torch.Tensor:
        return flat

    def _loss(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Codebook loss + beta x commitment loss (fp32)."""
        return F.mse_loss(codes.float(), flat.detach().float()) + self.beta * F.mse_loss(
            codes.detach().float(), flat.float()
        )

    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """Buffer updates after the search (EMA); gradient-trained codebooks do nothing."""

    def _seed_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Raw codebook rows that make ``codebook()`` equal ``flat`` (identity unless re-parameterised)."""
        return flat

    @torch.no_grad()
    def _set_rows(self, mask: torch.Tensor | None, rows: torch.Tensor) -> None:
        """Overwrite codebook rows (all rows when ``mask`` is None) after k-means or a restart."""
        w = self.embedding.weight.data
        if mask is None:
            w.copy_(rows.to(w.dtype))
        else:
            w[mask] = rows.to(w.dtype)

    # --- training path ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _keep_healthy(self, flat: torch.Tensor) -> None:
        """k-means on the first batch, then re-seed dead codes from this batch (before the search, so they
        compete at once and no tensor saved for backward is modified)."""
        up = self.upkeep
        if up.needs_init():
            self._set_rows(None, self._seed_rows(kmeans(flat, self.codebook_size, up.kmeans_iters)))
            up.mark_initialised()
        if not up.restart_check_due():
            return
        dead = up.dead_codes()
        if bool(dead.any()):  # a device sync, but only every check_every steps
            codebook = self.codebook().detach().float()
            error = ((flat.float() - codebook[nearest_code(flat, codebook)]) ** 2).sum(-1)
            self._set_rows(dead, self._seed_rows(up.replacements(flat, dead, error)))

    def lookup_flat(
        self, flat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training search on rows ``[N, D]``: (normalised rows, their codes, int64 indices ``[N]``, loss).

        Runs the upkeep (k-means, restarts) and buffer updates in training; no estimator is applied, so
        composite quantizers (rvq, gvq) can apply one to their total.
        """
        flat = self._normalise(flat)
        if self.training:
            self._keep_healthy(flat.detach())
        codebook = self.codebook()
        indices = nearest_code(flat.detach(), codebook)
        codes = F.embedding(indices, codebook)
        loss = self._loss(flat, codes)
        if self.training:
            counts = self.upkeep.record(indices)
            self._update(flat.detach(), indices, counts)
        return flat, codes, indices, loss

    def search(self, flat: torch.Tensor) -> torch.Tensor:
        """Pure nearest-code search on rows ``[N, D]`` -> int64 ``[N]`` (no buffer updates)."""
        return nearest_code(self._normalise(flat), self.codebook())

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of int64 ``indices`` (any shape) -> ``[..., D]``."""
        return F.embedding(indices, self.codebook())

    def forward(self, z: torch.Tensor) -> Quantized:
        b, _, h, w = z.shape
        flat, codes, indices, loss = self.lookup_flat(channels_last_flat(z))
        flat_q = estimate(flat, codes.to(flat.dtype), self.estimator)
        z_q = unflatten_channels_first(flat_q, b, h, w).to(z.dtype)
        indices = indices.reshape(b, h, w)
        return Quantized(z_q, indices, loss, code_stats(indices, self.codebook_size))

    # --- inference path (pure, exportable) --------------------------------------------------------------
    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        return self.search(channels_last_flat(z)).reshape(b, h, w)

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        b, h, w = indices.shape
        return unflatten_channels_first(self.embed(indices.reshape(-1)), b, h, w)
