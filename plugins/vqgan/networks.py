"""The VQGAN encoder and decoder of taming-transformers (and diffusers' ``VQModel``, which copies them),
with their options named as taming's ``ddconfig`` names them, so that a published model's weights load one
to one (``vqkit import``)::

    encoder: conv_in 3x3 -> ch; per level i (ch * ch_mult[i] wide, at resolution / 2**i): num_res_blocks
             ResnetBlocks (each followed by attention where that resolution is in attn_resolutions), then a
             Downsample (not after the last level); middle (block, attention, block); norm, swish,
             conv_out 3x3 -> z_channels; quant_conv 1x1 -> latent_dim (taming's embed_dim)
    decoder: post_quant_conv 1x1 latent_dim -> z_channels; conv_in 3x3; middle; per level from the lowest:
             num_res_blocks + 1 ResnetBlocks (+ attention), then an Upsample (not after level 0); norm,
             swish, conv_out 3x3 -> image channels

taming's VQModel keeps quant_conv and post_quant_conv beside the encoder and decoder; here they are their last
and first layers, so that the quantizer sees exactly what taming's quantizer sees. ``resolution`` is the
training resolution of the original model: it only says where the attention blocks sit (the networks are
fully convolutional). The decoder's output is the original's, clamped to the images' [-1, 1] range as the
``resnet`` decoder's: a plain clamp in evaluation mode, in training one whose gradient still brings a pixel
past the range back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vqkit.contracts import Decoder, Encoder
from vqkit.heads import clamp_output
from vqkit.plugins.vqgan.blocks import (
    AttnBlock,
    Downsample,
    Level,
    Middle,
    ResnetBlock,
    Upsample,
    norm,
    swish,
)
from vqkit.registry import decoders, encoders

# Published VQGANs' ddconfig (taming's ImageNet f16 model): the defaults.
DEFAULT_CH_MULT = (1, 1, 2, 2, 4)
DEFAULT_ATTN = (16,)


def check_options(
    ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, resolution: int, norm_groups: int
) -> tuple[int, ...]:
    """Check the shared options (ValueErrors name the option); -> ch_mult as a tuple of ints."""
    mult = tuple(int(m) for m in ch_mult)
    if not mult or min(mult) < 1:
        raise ValueError(f"ch_mult must be one or more positive multipliers, got {list(ch_mult)}")
    if ch < 1 or num_res_blocks < 0 or z_channels < 1 or resolution < 1:
        raise ValueError(
            f"need ch >= 1, num_res_blocks >= 0, z_channels >= 1 and resolution >= 1, got ch={ch}, "
            f"num_res_blocks={num_res_blocks}, z_channels={z_channels}, resolution={resolution}"
        )
    if norm_groups < 1 or any((ch * m) % norm_groups for m in mult):
        raise ValueError(f"every width ch * ch_mult must be a multiple of norm_groups={norm_groups}")
    return mult


class _Options:
    """The options both networks take (one docstring, one validation)."""

    mirror_options = (
        "ch",
        "ch_mult",
        "num_res_blocks",
        "attn_resolutions",
        "z_channels",
        "resolution",
        "norm_groups",
        "mid_attention",
        "dropout",
    )


@encoders.register("vqgan")
class VQGANEncoder(Encoder, _Options):
    """The taming-transformers / diffusers VQGAN encoder, ending in taming's 1x1 ``quant_conv``.

    Options as taming's ddconfig: ``ch`` (base width), ``ch_mult`` (width multiplier per level; downsample
    2**(levels-1)), ``num_res_blocks``, ``attn_resolutions`` (attention after each block of the levels at
    these resolutions), ``resolution`` (the original training size, which places attention),
    ``z_channels``, ``norm_groups`` (32 in every published model), ``mid_attention`` (diffusers can turn the
    middle attention off), ``dropout``. ``vqkit import`` fills them in from a published model's config.
    """

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        ch: int = 128,
        ch_mult: Sequence[int] = DEFAULT_CH_MULT,
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = DEFAULT_ATTN,
        z_channels: int = 256,
        resolution: int = 256,
        norm_groups: int = 32,
        mid_attention: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_channels, latent_dim)
        mult = check_options(ch, ch_mult, num_res_blocks, z_channels, resolution, norm_groups)
        attn_at = {int(r) for r in attn_resolutions}
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin, res = ch, int(resolution)
        for i, m in enumerate(mult):
            blocks = [
                ResnetBlock(cin if j == 0 else ch * m, ch * m, norm_groups, dropout)
                for j in range(num_res_blocks)
            ]
            attns = [AttnBlock(ch * m, norm_groups) for _ in blocks] if res in attn_at else []
            level = Level(blocks, attns)
            cin = ch * m
            if i != len(mult) - 1:
                level.downsample = Downsample(cin)
                res //= 2
            self.down.append(level)
        self.mid = Middle(cin, norm_groups, dropout, bool(mid_attention))
        self.norm_out = norm(cin, norm_groups)
        self.conv_out = nn.Conv2d(cin, z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels, latent_dim, 1)
        self.downsample = 2 ** (len(mult) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.conv_out(swish(self.norm_out(self.mid(h))))
        return self.quant_conv(h)


@decoders.register("vqgan")
class VQGANDecoder(Decoder, _Options):
    """The VQGAN encoder's mirror (taming's Decoder), starting with taming's 1x1 ``post_quant_conv``; the
    same options as the encoder (give both the same values). The original's output, clamped to [-1, 1]
    (in training with a gradient that brings pixels past the range back, as the ``resnet`` decoder's).
    """

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        ch: int = 128,
        ch_mult: Sequence[int] = DEFAULT_CH_MULT,
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = DEFAULT_ATTN,
        z_channels: int = 256,
        resolution: int = 256,
        norm_groups: int = 32,
        mid_attention: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(latent_dim, out_channels)
        mult = check_options(ch, ch_mult, num_res_blocks, z_channels, resolution, norm_groups)
        attn_at = {int(r) for r in attn_resolutions}
        cin = ch * mult[-1]
        self.post_quant_conv = nn.Conv2d(latent_dim, z_channels, 1)
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        self.mid = Middle(cin, norm_groups, dropout, bool(mid_attention))
        levels: list[Level] = []
        res = int(resolution) // 2 ** (len(mult) - 1)
        for i in reversed(range(len(mult))):
            width = ch * mult[i]
            blocks = [
                ResnetBlock(cin if j == 0 else width, width, norm_groups, dropout)
                for j in range(num_res_blocks + 1)
            ]
            attns = [AttnBlock(width, norm_groups) for _ in blocks] if res in attn_at else []
            level = Level(blocks, attns)
            cin = width
            if i != 0:
                level.upsample = Upsample(cin)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # up[i] is level i, as taming numbers them
        self.norm_out = norm(cin, norm_groups)
        self.conv_out = nn.Conv2d(cin, out_channels, 3, padding=1)
        self.upsample = 2 ** (len(mult) - 1)

    @property
    def last_layer(self) -> torch.Tensor:
        """The output convolution's weight (where adaptive loss weights compare gradients)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        out = self.conv_out(swish(self.norm_out(h)))
        return clamp_output(out, self.training)
