from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from vqkit.codebook import FlatQuantizer, code_stats
from vqkit.contracts import Quantized
from vqkit.registry import quantizers


class _TanhBack(torch.autograd.Function):
    """Tanh whose gradient does not vanish on the way back: where a step of gradient descent would move a
    saturated input back toward 0, the gradient passes at full slope (1); where it would push it further out,
    Tanh's own (vanishing) slope applies. With Tanh's own gradient alone, latents that drift into the tails
    early in training (all on one level, so rounding gives one code for every input) never come back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        x, y = ctx.saved_tensors
        inward = (x * grad) > 0  # descent (x - lr * grad) shrinks |x|
        return torch.where(inward, grad, grad * (1 - y * y))


@quantizers.register("fsq")
class FSQ(FlatQuantizer):
    """Finite scalar quantization (Mentzer et al., 2023): each latent channel is bounded and rounded to one
    of ``levels[i]`` values; no codebook, no auxiliary loss, every code reachable by construction.

    Fixes its own latent dim (``len(levels)``) and codebook size (``prod(levels)``): 8,5,5,5 gives 4
    channels and 1000 codes. Bounding and rounding run in fp32 even under bf16 autocast (bf16 cannot hold
    the half-integer rounding boundaries of larger levels and silently merges codes).
    """

    def __init__(
        self, dim: int | None = None, codebook_size: int | None = None, levels: Sequence[int] = (8, 5, 5, 5)
    ) -> None:
        super().__init__()
        levels = tuple(int(v) for v in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"levels must be a list of integers >= 2, e.g. 8,5,5,5; got {levels}")
        self.levels = levels
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        if dim is not None and int(dim) != self.dim:
            raise ValueError(
                f"fsq fixes its latent dim to len(levels) = {self.dim} (levels={','.join(map(str, levels))}); "
                f"got dim {dim}: leave the latent dim unset or change levels"
            )
        if codebook_size is not None and int(codebook_size) != self.codebook_size:
            raise ValueError(
                f"fsq fixes its codebook size to prod(levels) = {self.codebook_size} "
                f"(levels={','.join(map(str, levels))}); got codebook size {codebook_size}: leave it unset "
                f"or change levels"
            )
        basis = [math.prod(levels[:i]) for i in range(len(levels))]
        # Derived from the option, so not saved in the model file.
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int64), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)

    def _bounded(self, flat: torch.Tensor) -> torch.Tensor:
        """Squash each channel so that rounding gives exactly ``levels[i]`` integers, centred on 0 (fp32).

        In training the squashing passes gradients by :class:`_TanhBack`: a latent deep in the Tanh's flat
        tail still gets the gradient that brings it back (inference computes the same values)."""
        levels = self._levels.float()
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        squash = _TanhBack.apply if self.training and flat.requires_grad else torch.tanh
        return squash(flat + shift) * half - offset

    def _half_width(self) -> torch.Tensor:
        return torch.div(self._levels, 2, rounding_mode="floor")

    def _indices(self, rounded: torch.Tensor) -> torch.Tensor:
        digits = rounded.long() + self._half_width()
        return (digits * self._basis).sum(-1)

    def forward_flat(self, rows: torch.Tensor) -> Quantized:
        with torch.autocast(device_type=rows.device.type, enabled=False):
            bounded = self._bounded(rows.float())
            rounded = torch.round(bounded)
            flat_q = (bounded + (rounded - bounded).detach()) / self._half_width().float()
            indices = self._indices(rounded.detach())
        return Quantized(
            flat_q, indices, rows.new_zeros((), dtype=torch.float32), code_stats(indices, self.codebook_size)
        )

    def quantize_flat(self, rows: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=rows.device.type, enabled=False):
            return self._indices(torch.round(self._bounded(rows.float())))

    def dequantize_flat(self, indices: torch.Tensor) -> torch.Tensor:
        digits = torch.remainder(
            torch.div(indices.reshape(-1, 1), self._basis, rounding_mode="floor"), self._levels
        )
        half = self._half_width()
        return (digits - half).float() / half.float()
