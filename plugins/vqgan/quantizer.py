"""The VQGAN quantizer: taming-transformers' ``VectorQuantizer`` (``VectorQuantizer2``) and diffusers'
copy of it, on vqkit's :class:`~vqkit.codebook.Codebook` and nearest-code search. What decides the codes is
theirs: the nearest code by |z|^2 + |e|^2 - 2 z.e, and the optional ``remap`` of codes to the ``used``
subset of the codebook; the loss keeps their ``legacy`` form, in which beta weighs the codebook term instead
of the commitment term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vqkit.codebook import Codebook, code_stats, estimate, nearest_code
from vqkit.contracts import Quantized
from vqkit.registry import quantizers

UNKNOWN_NAMES = ("extra", "random")


def check_unknown_index(unknown_index: int | str, remap_used: int, codebook_size: int) -> int | str:
    """``unknown_index`` as taming takes it: "extra", "random" or a code; ValueErrors name the option."""
    if isinstance(unknown_index, str) and unknown_index in UNKNOWN_NAMES:
        if unknown_index == "extra" and remap_used >= codebook_size:
            raise ValueError(
                f"unknown_index='extra' needs remap_used < codebook_size ({remap_used} >= {codebook_size}): "
                f"the extra code would lie outside the codebook"
            )
        return unknown_index
    if isinstance(unknown_index, bool) or not isinstance(unknown_index, int):
        raise ValueError(f"unknown_index must be 'extra', 'random' or a code, got {unknown_index!r}")
    if not 0 <= unknown_index < codebook_size:
        raise ValueError(f"unknown_index must be a code in [0, {codebook_size - 1}], got {unknown_index}")
    return unknown_index


@quantizers.register("vqgan")
class VQGANQuantizer(Codebook):
    """taming-transformers' / diffusers' VectorQuantizer: nearest code, straight-through gradients,
    codebook + commitment loss with taming's ``legacy`` beta; ``init=uniform`` is the original's U(-1/K, 1/K).

    ``legacy=True`` (taming's default and diffusers' only form): loss = |sg[e] - z|^2 + beta |e - sg[z]|^2;
    ``legacy=False``: loss = beta |sg[e] - z|^2 + |e - sg[z]|^2. ``remap_used=R`` (taming's ``remap``): codes
    are positions in the buffer ``used`` of R codebook rows (loaded with the weights); a latent whose nearest
    row is not among them gets ``unknown_index``: ``"extra"`` (code R), a fixed code, or ``"random"``, which
    taming draws at random and which here is the nearest used row instead (deterministic, so an export
    agrees). ``init``, ``restart_after``, ``estimator`` as vq's.

    A new model trains from vq's defaults: k-means init, restarts after 10 unused steps and ``legacy=False``
    (taming's uniform init without restarts kept 2% of the codes in a 300-step run; its legacy form, which pulls
    the encoder onto the codebook four times harder than the codebook follows, collapsed a constant-lr run to one
    code where ``legacy=False`` used all 512). An imported model is built with the original's form
    (``legacy=True``) and ``fields.PRETRAINED`` (uniform, no restarts), so fine-tuning never re-seeds its codebook.
    """

    # Options added after models were first saved, with the values that rebuild such an older model as it was.
    legacy_options = {"init": "uniform", "restart_after": 0, "legacy": True}

    def __init__(
        self,
        dim: int | None,
        codebook_size: int | None,
        beta: float = 0.25,
        legacy: bool = False,
        remap_used: int = 0,
        unknown_index: int | str = "extra",
        init: str = "kmeans",
        restart_after: int = 10,
        estimator: str = "ste",
    ) -> None:
        super().__init__(dim, codebook_size, beta, init, restart_after, estimator)
        self.legacy = bool(legacy)
        if not 0 <= int(remap_used) <= self.codebook_size:
            raise ValueError(
                f"remap_used must lie in [0, codebook_size={self.codebook_size}], got {remap_used}"
            )
        self.remap_used = int(remap_used)
        self.unknown_index = check_unknown_index(unknown_index, self.remap_used, self.codebook_size)
        if self.remap_used:
            self.register_buffer("used", torch.arange(self.remap_used, dtype=torch.int64))

    def _loss(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if not self.legacy:
            return super()._loss(flat, codes)
        commitment = F.mse_loss(codes.detach().float(), flat.float())
        return commitment + self.beta * F.mse_loss(codes.float(), flat.detach().float())

    def _to_used(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook rows -> positions in ``used`` (taming's remap_to_used), unknown rows -> unknown_index."""
        match = indices.unsqueeze(-1) == self.used.unsqueeze(0)
        position = match.long().argmax(-1)
        unknown = self.remap_used if self.unknown_index == "extra" else int(self.unknown_index)
        return torch.where(match.any(-1), position, torch.full_like(position, unknown))

    def quantize_flat(self, rows: torch.Tensor) -> torch.Tensor:
        if not self.remap_used:
            return self.search(rows)
        if self.unknown_index == "random":
            return nearest_code(rows, self.codebook()[self.used])
        return self._to_used(self.search(rows))

    def dequantize_flat(self, indices: torch.Tensor) -> torch.Tensor:
        if self.remap_used:
            # taming's unmap_to_all: the extra code (and anything past the used rows) reads used[0]
            indices = self.used[torch.where(indices >= self.remap_used, torch.zeros_like(indices), indices)]
        return self.embed(indices)

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        # contiguous, as taming's get_codebook_entry gives it: the decoder's convolutions then take the same
        # path (and round alike) as the original's
        return super().dequantize(indices).contiguous()

    def forward_flat(self, rows: torch.Tensor) -> Quantized:
        flat, codes, indices, loss = self.lookup_flat(rows)
        flat_q = estimate(flat, codes.to(flat.dtype), self.estimator)
        if self.remap_used:
            indices = self.quantize_flat(rows.detach())
        return Quantized(flat_q, indices, loss, code_stats(indices, self.codebook_size))
