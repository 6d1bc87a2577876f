"""Pixel losses: mean squared and mean absolute error."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vqkit.objectives import Objective
from vqkit.registry import objectives


@objectives.register("mse")
class MSE(Objective):
    """Mean squared error between reconstruction and image (the VQ-VAE paper's reconstruction loss)."""

    def forward(
        self, x: torch.Tensor, recon: torch.Tensor, *, step: int, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        return F.mse_loss(recon.float(), x.float())


@objectives.register("l1")
class L1(Objective):
    """Mean absolute error: sharper reconstructions than MSE, the pixel term of VQGAN-style recipes."""

    def forward(
        self, x: torch.Tensor, recon: torch.Tensor, *, step: int, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        return F.l1_loss(recon.float(), x.float())
