"""Training objectives (reconstruction losses) and their weighted combination (:class:`Loss`).

The training loop calls :class:`Loss` only::

    loss_fn = build_loss("mse", {}, device)
    rec, terms = loss_fn(x, recon, step=step, last_layer=decoder_last_layer(model.decoder))
    (rec + quantizer_loss).backward(); optimizer.step()
    loss_fn.update(x, recon.detach(), step=step)      # trainable objectives take a step of their own
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqkit.errors import OptionError


class Loss(nn.Module):
    """The weighted sum of objectives; ``spec`` is its canonical spelling, for the run's config."""

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec

    def forward(
        self, x: torch.Tensor, recon: torch.Tensor, *, step: int, last_layer: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        value = F.mse_loss(recon.float(), x.float())
        return value, {"mse": value.detach()}

    def update(self, x: torch.Tensor, recon: torch.Tensor, *, step: int) -> dict[str, torch.Tensor]:
        return {}

    def training_state(self) -> dict[str, Any]:
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        return None


def build_loss(text: str = "mse", options: dict[str, Any] | None = None, device: Any = None) -> Loss:
    if text.strip() != "mse":
        raise OptionError(f"unknown objective {text!r}; available: mse", param="loss")
    return Loss("mse")


def decoder_last_layer(decoder: nn.Module) -> torch.Tensor | None:
    """The weight of the decoder's last layer (what an adaptive GAN weight compares gradients at)."""
    last = None
    for module in decoder.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            last = module.weight
    return last
