from __future__ import annotations

import torch
import torch.nn.functional as F

from vqkit.codebook import Codebook
from vqkit.registry import quantizers


@quantizers.register("cosine")
class Cosine(Codebook):
    """VQ on the unit sphere: latents and codes are l2-normalised, the nearest code is the most similar one.

    The decoder receives unit-length codes. Same options as vq (k-means runs on the normalised latents).
    """

    def __init__(
        self,
        dim: int | None = None,
        codebook_size: int | None = None,
        beta: float = 0.25,
        init: str = "kmeans",
        restart_after: int = 10,
        estimator: str = "ste",
    ) -> None:
        super().__init__(dim, codebook_size, beta, init, restart_after, estimator)

    def codebook(self) -> torch.Tensor:
        return F.normalize(self.embedding.weight.float(), dim=-1, eps=1e-6)

    def _normalise(self, flat: torch.Tensor) -> torch.Tensor:
        # fp32 on purpose: the search and the codes the decoder sees stay exact under bf16 autocast.
        return F.normalize(flat.float(), dim=-1, eps=1e-6)
