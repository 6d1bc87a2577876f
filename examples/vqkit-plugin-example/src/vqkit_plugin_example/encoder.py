from __future__ import annotations

import torch
from torch import nn

from vqkit.contracts import Encoder
from vqkit.registry import encoders


@encoders.register("tiny")
class TinyEncoder(Encoder):
    """Two stride-2 4x4 convs and a 1x1 conv: a 4x downsampling encoder with a few thousand parameters.

    ``width`` is the channel count of the second conv (the first has half of it).
    """

    def __init__(self, in_channels: int, latent_dim: int, width: int = 32) -> None:
        super().__init__(in_channels, latent_dim)
        if width < 2:
            raise ValueError(f"width must be at least 2, got {width}")  # vqkit shows this as an option error
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width // 2, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, latent_dim, kernel_size=1),
        )
        self.downsample = 4  # the contract: latents are [B, latent_dim, H/4, W/4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
