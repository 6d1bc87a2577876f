"""Output heads a decoder can end with, so that its pixels stay in the images' [-1, 1] range.

A saturating head (Tanh) can die early in training: once its pre-activations sit far below -1 every pixel is
black, the gradient through Tanh vanishes, and nothing reaches the encoder again (the "all-black" collapse of
the original VQ-VAE decoder under a fast learning rate). :func:`clamp_output` keeps the head linear and clamps
instead: in evaluation mode a plain clamp (what a user decodes and every exported graph computes), in training
a clamp whose gradient still brings a value past the range back (:class:`ClampBack`), so the loss sees what
inference gives and no pixel is lost to saturation. Any decoder, built-in or third-party, may use it.
"""

from __future__ import annotations

from typing import Any

import torch


class ClampBack(torch.autograd.Function):
    """Clamp to [-1, 1] whose gradient passes wherever a step would bring a value back toward the range,
    and is stopped only where it would push an already clamped value further out. A hard clamp would leave
    every clamped pixel without a gradient (it could never come back); a plain straight-through one lets a
    loss that wants a pixel beyond the range (an adversarial one) drive it without bound."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(out)
        return out.clamp(-1.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        outward = ((out > 1) & (grad < 0)) | ((out < -1) & (grad > 0))  # descent would move it further out
        return grad.masked_fill(outward, 0.0)


def clamp_output(out: torch.Tensor, training: bool) -> torch.Tensor:
    """``out`` clamped to [-1, 1]: a plain clamp in evaluation (and export), :class:`ClampBack` in training."""
    if not training:
        return out.clamp(-1.0, 1.0)
    return ClampBack.apply(out)
