"""A PatchGAN discriminator trained beside the autoencoder, with a hinge loss (the VQGAN recipe).

The generator term is ``-mean(D(recon))``; the loss scales it adaptively (``adaptive_weight``): by the ratio
of the gradient norms, at the decoder's last layer, of the other terms and of this one. The discriminator is
a small fully convolutional net that scores overlapping patches (Isola et al.'s PatchGAN, as in
taming-transformers' NLayerDiscriminator), trained by its own Adam on ``relu(1 - D(x)) + relu(1 + D(recon))``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqkit.distributed import all_reduce_mean_, is_distributed
from vqkit.errors import ShapeError, VQKitError
from vqkit.objectives import Objective
from vqkit.registry import objectives

NORMS = ("batch", "none")


def discriminator(channels: int, width: int, layers: int, norm: str) -> nn.Sequential:
    """``layers`` stride-2 4x4 convolutions (width doubling up to 8x), a stride-1 one, and a 1-channel
    stride-1 head: one logit per patch."""

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        if norm == "batch":
            return [nn.Conv2d(cin, cout, 4, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
        return [nn.Conv2d(cin, cout, 4, stride, 1), nn.LeakyReLU(0.2)]

    mods: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
    mult = 1
    for n in range(1, layers):
        prev, mult = mult, min(2**n, 8)
        mods += block(width * prev, width * mult, 2)
    prev, mult = mult, min(2**layers, 8)
    mods += block(width * prev, width * mult, 1)
    mods.append(nn.Conv2d(width * mult, 1, 4, 1, 1))
    return nn.Sequential(*mods)


def _init(net: nn.Module, seed: int) -> None:
    """DCGAN initialisation (N(0, 0.02) convolutions, N(1, 0.02) norm scales) from a private generator, so
    building the loss neither depends on nor disturbs the global random stream."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=gen) * 0.02)
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.copy_(1 + torch.randn(m.weight.shape, generator=gen) * 0.02)
            m.bias.data.zero_()


def _average(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the ranks, in one collective."""
    if not tensors:
        return
    flat = all_reduce_mean_(torch.cat([t.reshape(-1) for t in tensors]))
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


@objectives.register("patchgan")
class PatchGAN(Objective):
    """Adversarial loss against a PatchGAN discriminator (hinge loss, adaptive weight, delayed start).

    Options: ``start`` (step from which the discriminator trains and the term counts; default 1000),
    ``ramp`` (steps over which the term's weight then grows linearly from 0 to its full value, while the
    discriminator learns; default 500: a term at full weight against an untrained discriminator wrecks the
    reconstructions of a trained autoencoder within 100 steps),
    ``lr`` (the discriminator's Adam learning rate; default 2e-4), ``beta1``/``beta2`` (its Adam betas;
    default 0.5, 0.9), ``layers`` (stride-2 layers; default 3, needs images of at least 24x24: use 2 for
    smaller ones), ``width`` (first layer's channels; default 64), ``norm`` (``batch`` or ``none``),
    ``channels`` (image channels; default 3, 1 for gray images, or 0: taken from the first batch),
    ``seed`` (its initial weights).
    """

    trainable = True
    adaptive_weight = True

    def __init__(
        self,
        start: int = 1000,
        ramp: int = 500,
        lr: float = 2e-4,
        beta1: float = 0.5,
        beta2: float = 0.9,
        layers: int = 3,
        width: int = 64,
        norm: str = "batch",
        channels: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if start < 0:
            raise ValueError(f"start must be a step >= 0, got {start}")
        if ramp < 0:
            raise ValueError(f"ramp must be a number of steps >= 0, got {ramp}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"beta1 and beta2 must lie in [0, 1), got {beta1}, {beta2}")
        if not 1 <= layers <= 6:
            raise ValueError(f"layers must be between 1 and 6, got {layers}")
        if width < 1:
            raise ValueError(f"width must be a positive channel count, got {width}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if channels < 0:
            raise ValueError(f"channels must be >= 0 (0: from the data), got {channels}")
        self.start, self.ramp, self.layers = int(start), int(ramp), int(layers)
        self._config = dict(width=int(width), layers=int(layers), norm=norm, seed=int(seed))
        self._adam = dict(lr=float(lr), betas=(float(beta1), float(beta2)))
        self.net: nn.Sequential | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None
        if channels:
            self._build(int(channels), torch.device("cpu"))

    def _build(self, channels: int, device: torch.device) -> None:
        c = self._config
        # The layers' own default initialisation (overwritten by _init) draws from the global generator. The
        # net is built on the first batch: at step 0 of a run, at the resumed step of a resumed one, so those
        # draws would shift every later draw of the run (dead-code restarts) and a resumed run would differ.
        with torch.random.fork_rng(devices=[]):
            net = discriminator(channels, c["width"], c["layers"], c["norm"])
        _init(net, c["seed"])
        self.net = net.to(device)
        self.channels = channels
        self.optimizer = torch.optim.Adam(self.net.parameters(), **self._adam)

    def _ready(self, x: torch.Tensor) -> nn.Sequential:
        """The discriminator, built for the data's channels on first use (and given any state that was
        loaded before it existed)."""
        if self.net is None:
            self._build(x.shape[1], x.device)
            if self._pending_state is not None:
                state, self._pending_state = self._pending_state, None
                self.load_training_state(state)
        elif x.shape[1] != self.channels:
            raise ShapeError(f"patchgan was built for {self.channels}-channel images, got {x.shape[1]}")
        if min(x.shape[-2:]) // 2**self.layers < 3:
            need = 3 * 2**self.layers
            raise ShapeError(
                f"patchgan with layers={self.layers} needs images of at least {need}x{need}, got "
                f"{x.shape[-2]}x{x.shape[-1]}; use fewer layers"
            )
        assert self.net is not None
        return self.net

    def weight_at(self, step: int) -> float:
        if step < self.start:
            return 0.0
        return 1.0 if self.ramp == 0 else min(1.0, (step - self.start) / self.ramp)

    def forward(
        self, x: torch.Tensor, recon: torch.Tensor, *, step: int, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        net = self._ready(x)
        if self.weight_at(step) == 0:  # silent (the discriminator may already be learning)
            return torch.zeros((), device=recon.device)
        # Gradients flow through the discriminator to the reconstruction, never into its own weights.
        params = list(net.parameters())
        for p in params:
            p.requires_grad_(False)
        try:
            logits = net(recon)
        finally:
            for p in params:
                p.requires_grad_(True)
        return -logits.float().mean()

    def update(self, x: torch.Tensor, recon: torch.Tensor, *, step: int) -> dict[str, torch.Tensor]:
        net = self._ready(x)
        if step < self.start:
            zero = torch.zeros((), device=x.device)
            return {"d_loss": zero, "logits_real": zero, "logits_fake": zero}
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        real = net(x.detach()).float()
        fake = net(recon.detach()).float()
        d_loss = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        d_loss.backward()
        if is_distributed():  # replicas stay equal: every rank steps on the mean gradient
            _average([p.grad for p in net.parameters() if p.grad is not None])
        self.optimizer.step()
        if is_distributed():  # and keeps the same normalisation statistics (each rank saw its own batch)
            _average([b for b in net.buffers() if b.is_floating_point()])
        return {
            "d_loss": d_loss.detach(),
            "logits_real": real.detach().mean(),
            "logits_fake": fake.detach().mean(),
        }

    def training_state(self) -> dict[str, Any]:
        if self.net is None or self.optimizer is None:
            return dict(self._pending_state or {})
        return {
            "channels": self.channels,
            "discriminator": {k: v.detach().clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if not isinstance(state, dict) or not {"channels", "discriminator", "optimizer"} <= set(state):
            raise VQKitError("patchgan's training state is incomplete (saved by another version?)")
        if self.net is None:  # built on the first batch, on its device
            self._pending_state = state
            return
        if int(state["channels"]) != self.channels:
            raise VQKitError(
                f"patchgan's saved discriminator is for {state['channels']}-channel images, not {self.channels}"
            )
        assert self.net is not None and self.optimizer is not None
        try:
            self.net.load_state_dict(state["discriminator"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise VQKitError(
                f"patchgan's saved discriminator does not match this one (other layers/width/norm?): {exc}"
            ) from None
