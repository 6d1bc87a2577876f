"""The ResNet encoder's mirror decoder: the same options, the layout reversed.

    1x1 conv latent_dim -> widths[-1]; self-attention (if ``attention``)
    level k (lowest first): blocks[k-1] residual blocks at widths[k-1],
             then 2x nearest upsampling and a 3x3 conv to widths[k-2] (to the image's size after level 1)
    head: GroupNorm, SiLU, 2x nearest upsampling, 3x3 conv to the image's channels

The head is linear (no Tanh): a saturating output can die early in training (all-black reconstructions). The
output is clamped to the images' [-1, 1] range: in evaluation mode a plain clamp (what a user decodes and every
exported graph computes), in training one whose gradient still brings a pixel past the range back (see ``vqkit.heads``), so the
loss sees what inference gives and no pixel is lost to saturation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vqkit.contracts import Decoder
from vqkit.heads import clamp_output
from vqkit.plugins.encoders.resnet import RECOMMENDED_LR, Attention, ResBlock, resolve_levels
from vqkit.registry import decoders


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))


@decoders.register("resnet")
class ResNetDecoder(Decoder):
    """The ``resnet`` encoder's mirror: residual blocks, attention at the lowest resolution, linear output.

    Options as the encoder's (``downsample``, ``widths`` listed from the highest resolution down as for the
    encoder, ``blocks``, ``attention``, ``norm_groups``): give both the same values. The output is clamped
    to [-1, 1]; in training its gradient still brings values past the range back, so none saturates.
    """

    # The options this decoder takes from the encoder when built as its mirror (no decoder named): a model
    # builder that honours it passes the encoder's values of these unless the decoder's are given.
    mirror_options = ("downsample", "widths", "blocks", "attention", "norm_groups")
    recommended_lr = RECOMMENDED_LR  # the encoder's

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        downsample: int = 8,
        widths: Sequence[int] | None = None,
        blocks: int | Sequence[int] | None = None,
        attention: bool = True,
        norm_groups: int = 8,
    ) -> None:
        super().__init__(latent_dim, out_channels)
        w, b = resolve_levels(downsample, widths, blocks, norm_groups)
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, w[-1], 1)]
        if attention:
            layers.append(Attention(w[-1], norm_groups))
        for k in reversed(range(len(w))):
            layers += [ResBlock(w[k], w[k], norm_groups) for _ in range(b[k])]
            if k > 0:
                layers.append(_up(w[k], w[k - 1]))
        layers += [nn.GroupNorm(norm_groups, w[0]), nn.SiLU(), _up(w[0], out_channels)]
        self.net = nn.Sequential(*layers)
        self.upsample = int(downsample)

    @property
    def last_layer(self) -> torch.Tensor:
        """The output convolution's weight (where adaptive loss weights compare gradients)."""
        return self.net[-1][1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return clamp_output(self.net(z), self.training)
