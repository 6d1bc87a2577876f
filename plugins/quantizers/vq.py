from __future__ import annotations

from vqkit.codebook import INITS, Codebook
from vqkit.registry import quantizers

__all__ = ["INITS", "VQ"]


@quantizers.register("vq")
class VQ(Codebook):
    """The standard VQ-VAE quantizer (van den Oord et al., 2017): nearest code, codebook + beta x commitment loss.

    ``init="kmeans"`` (default) runs k-means++ on the first training batch's latents; ``init="normal"`` draws
    N(0, 1) like ``nn.Embedding``; ``init="uniform"`` is the original VQ-VAE's U(-1/K, 1/K) codebook, which
    collapses to a few codes in training. ``restart_after=N`` (default 10) re-seeds codes unused for N
    training steps from poorly quantized latents of the batch (0: never). ``estimator="rotation"`` passes
    gradients by the rotation trick instead of straight-through. With init=uniform and restart_after=0 (the
    ``original`` preset) it is exactly the quantizer of the original VQ-VAE formulation.
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
