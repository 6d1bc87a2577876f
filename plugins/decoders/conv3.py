from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vqkit.contracts import Decoder
from vqkit.registry import decoders


@decoders.register("conv3")
class Conv3Decoder(Decoder):
    """The mirror of the ``conv3`` encoder: a 1x1 layer to ``widths[0]`` channels (default 128), then one
    stride-2 4x4 transposed convolution per width (64, 32, then the image's C channels, 8x larger in all), Tanh.

    ``head="conv"`` (default) makes the first layer a 1x1 Conv2d; ``head="transpose"`` a 1x1 ConvTranspose2d
    as in the original VQ-VAE tutorial formulation (the ``original`` preset). Both compute the same family of
    maps; the plain conv is the usual, faster form.
    """

    def __init__(
        self, latent_dim: int, out_channels: int, widths: Sequence[int] = (128, 64, 32), head: str = "conv"
    ) -> None:
        super().__init__(latent_dim, out_channels)
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {widths}")
        if head not in ("conv", "transpose"):
            raise ValueError(f"head must be 'conv' or 'transpose', got {head!r}")
        first = nn.Conv2d if head == "conv" else nn.ConvTranspose2d
        layers: list[nn.Module] = [first(latent_dim, widths[0], kernel_size=1), nn.ReLU()]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(a, b, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        layers += [
            nn.ConvTranspose2d(widths[-1], out_channels, kernel_size=4, stride=2, padding=1),
            nn.Tanh(),
        ]
        self.net = nn.Sequential(*layers)
        self.upsample = 2 ** len(widths)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
