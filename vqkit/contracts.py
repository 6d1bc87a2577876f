"""The component contracts. Built-ins and third-party plugins obey the same ones.

Subclassing these bases is optional (the builder checks behaviour, not ancestry), but they document the
contract and supply sensible defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Quantized:
    """What ``Quantizer.forward`` returns on the training path.

    z_q:     quantized latents ``[B, dim, h, w]`` carrying straight-through (or other) gradients to z.
    indices: int64 codes ``[B, h, w]`` (one codebook) or ``[B, h, w, S]`` (S codebooks).
    loss:    the quantizer's auxiliary loss, a scalar tensor (zero if it has none).
    stats:   scalar tensors worth logging: ``perplexity``, ``codes_used``, ...
    """

    z_q: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Encoder(nn.Module):
    """Images ``[B, C, H, W]`` in [-1, 1] -> latents ``[B, latent_dim, H/f, W/f]``; ``f = self.downsample``."""

    downsample: int = 1
    # The peak Adam learning rate this architecture trains at when a run does not set one (None: the
    # trainer's own default). A model takes the lowest of its encoder's and decoder's.
    recommended_lr: float | None = None

    def __init__(self, in_channels: int, latent_dim: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.latent_dim = latent_dim


class Decoder(nn.Module):
    """Latents ``[B, latent_dim, h, w]`` -> images ``[B, C, h*f, w*f]`` in [-1, 1]; ``f = self.upsample``."""

    upsample: int = 1
    recommended_lr: float | None = None  # as the encoder's

    def __init__(self, latent_dim: int, out_channels: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.out_channels = out_channels


class Quantizer(nn.Module):
    """Maps continuous latents ``[B, dim, h, w]`` to codes and back.

    Built as ``Quantizer(dim, codebook_size, **options)``; ``dim`` or ``codebook_size`` is ``None`` when the
    user left it to the quantizer (which then picks its default, or fixes it itself, as FSQ does).

    - ``forward(z) -> Quantized``: training path (may update buffers, e.g. EMA statistics).
    - ``quantize(z) -> indices`` and ``dequantize(indices) -> z_q``: pure, deterministic, no buffer updates,
      traceable by ``torch.export``; these are what exported graphs contain.

    A quantizer that treats each latent vector on its own can subclass :class:`vqkit.codebook.FlatQuantizer`
    and work on rows ``[N, D]`` only; one with a learnt nearest-neighbour codebook can subclass
    :class:`vqkit.codebook.Codebook` (which rvq and gvq can then stack, ``codebook=NAME``).
    """

    dim: int
    codebook_size: int
    num_codebooks: int = 1

    def quantize(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - contract
        raise NotImplementedError

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:  # pragma: no cover - contract
        raise NotImplementedError


def channels_last_flat(z: torch.Tensor) -> torch.Tensor:
    """``[B, D, h, w]`` -> ``[B*h*w, D]`` (row order b, h, w), the layout every codebook search uses."""
    b, d, h, w = z.shape
    return z.permute(0, 2, 3, 1).reshape(b * h * w, d)


def unflatten_channels_first(flat: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`channels_last_flat`: ``[B*h*w, D]`` -> ``[B, D, h, w]``."""
    return flat.reshape(b, h, w, -1).permute(0, 3, 1, 2)
