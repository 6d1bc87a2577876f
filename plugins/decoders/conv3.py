from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vqkit.contracts import Decoder
from vqkit.heads import clamp_output
from vqkit.registry import decoders

OUTPUTS = ("clamp", "tanh")


@decoders.register("conv3")
class Conv3Decoder(Decoder):
    """The mirror of the ``conv3`` encoder: a 1x1 layer to ``widths[0]`` channels (default 128), then one
    stride-2 4x4 transposed convolution per width (64, 32, then the image's C channels, 8x larger in all).

    ``output="clamp"`` (default): the last layer is linear and its pixels are clamped to [-1, 1], with a
    gradient that still brings a pixel past the range back in training (:mod:`vqkit.heads`), so the decoder
    cannot saturate and die. ``output="tanh"``: a Tanh, as in the original VQ-VAE tutorial formulation (the
    ``original`` preset); at a fast learning rate it can saturate at -1 within a few dozen steps and stay
    there (every reconstruction black). Model files saved before this option existed keep their Tanh.

    ``head="conv"`` (default) makes the first layer a 1x1 Conv2d; ``head="transpose"`` a 1x1 ConvTranspose2d
    as in the original formulation (the ``original`` preset). Both compute the same family of maps; the plain
    conv is the usual, faster form.
    """

    # Options added after models were first saved, with the value that rebuilds such an older model as it was.
    legacy_options = {"output": "tanh"}

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        widths: Sequence[int] = (128, 64, 32),
        head: str = "conv",
        output: str = "clamp",
    ) -> None:
        super().__init__(latent_dim, out_channels)
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {widths}")
        if head not in ("conv", "transpose"):
            raise ValueError(f"head must be 'conv' or 'transpose', got {head!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        first = nn.Conv2d if head == "conv" else nn.ConvTranspose2d
        layers: list[nn.Module] = [first(latent_dim, widths[0], kernel_size=1), nn.ReLU()]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(a, b, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(widths[-1], out_channels, kernel_size=4, stride=2, padding=1))
        if output == "tanh":
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.output = output
        self.upsample = 2 ** len(widths)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        return out if self.output == "tanh" else clamp_output(out, self.training)
