from __future__ import annotations

import torch
from torch import nn

from vqkit.codebook import Codebook
from vqkit.registry import quantizers


@quantizers.register("simvq")
class SimVQ(Codebook):
    """SimVQ (Zhu et al., 2024): a frozen codebook C re-parameterised through a learnable linear map W.

    The codes are ``C W^T``: the loss's gradient moves W, and with it every code at once, used or not, which
    keeps the whole codebook in play. k-means init and restarts write C so that C W^T hits the chosen
    latents (W starts as the identity).
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
        self.embedding.weight.requires_grad_(False)
        self.proj = nn.Linear(self.dim, self.dim, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(self.dim))

    def codebook(self) -> torch.Tensor:
        # fp32 even under autocast: a bf16 codebook would move codes and change the search.
        with torch.autocast(device_type=self.proj.weight.device.type, enabled=False):
            return self.proj(self.embedding.weight.float())

    @torch.no_grad()
    def _seed_rows(self, flat: torch.Tensor) -> torch.Tensor:
        # Solve C W^T = flat for C, i.e. W C^T = flat^T (least squares: W may be near-singular after training).
        return torch.linalg.lstsq(self.proj.weight.detach().float(), flat.float().t()).solution.t()
