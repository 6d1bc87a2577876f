from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vqkit.contracts import Encoder
from vqkit.registry import encoders


@encoders.register("conv3")
class Conv3Encoder(Encoder):
    """A small convolutional encoder: one stride-2 4x4 convolution with ReLU per entry of ``widths`` (default
    32, 64, 128 channels, so images shrink 8x: 32x32 -> a 4x4 grid), then a 1x1 convolution to latent_dim.

    The encoder of the widely used PyTorch VQ-VAE tutorial; pairs with the ``conv3`` decoder.
    """

    def __init__(self, in_channels: int, latent_dim: int, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__(in_channels, latent_dim)
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {widths}")
        layers: list[nn.Module] = []
        prev = in_channels
        for w in widths:
            layers += [nn.Conv2d(prev, w, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            prev = w
        layers.append(nn.Conv2d(prev, latent_dim, kernel_size=1))
        self.net = nn.Sequential(*layers)
        self.downsample = 2 ** len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
