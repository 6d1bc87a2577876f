from __future__ import annotations

import torch
from torch import nn

from vqkit.contracts import Decoder
from vqkit.registry import decoders


# Named like the encoder, so `vqkit build --encoder tiny` picks it as the default decoder.
@decoders.register("tiny")
class TinyDecoder(Decoder):
    """The tiny encoder's mirror: a 1x1 conv, two stride-2 4x4 transposed convs, tanh (4x upsampling)."""

    def __init__(self, latent_dim: int, out_channels: int, width: int = 32) -> None:
        super().__init__(latent_dim, out_channels)
        if width < 2:
            raise ValueError(f"width must be at least 2, got {width}")
        self.net = nn.Sequential(
            nn.Conv2d(latent_dim, width, kernel_size=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width // 2, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width // 2, out_channels, kernel_size=4, stride=2, padding=1),
            nn.Tanh(),  # the contract: images in [-1, 1]
        )
        self.upsample = 4

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
