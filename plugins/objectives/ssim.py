"""Structural similarity (SSIM) as a loss, and the SSIM measure ``vqkit eval`` reports."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vqkit.objectives import Objective
from vqkit.registry import objectives


def _window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of each image pair ``[B, C, H, W]`` in [-1, 1] (mapped to [0, 1]): a Gaussian window
    (``window`` pixels, ``sigma``), no padding, constants (0.01)^2 and (0.03)^2, as in Wang et al. 2004 and
    scikit-image's ``gaussian_weights=True``. Images smaller than the window use the largest odd window that
    fits. Returns ``[B]`` in fp32."""
    x = (x.float() + 1) / 2
    y = (y.float() + 1) / 2
    c = x.shape[1]
    size = min(window, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2  # odd
    w = _window(size, sigma, c, x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(dim=1)


@objectives.register("ssim")
class SSIM(Objective):
    """1 - SSIM (structural similarity, Gaussian window, on images mapped from [-1, 1] to [0, 1]).

    Options: ``window`` (pixels, odd; default 11), ``sigma`` (the Gaussian's width; default 1.5).
    """

    def __init__(self, window: int = 11, sigma: float = 1.5) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be a positive odd number of pixels, got {window}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.window, self.sigma = int(window), float(sigma)

    def forward(
        self, x: torch.Tensor, recon: torch.Tensor, *, step: int, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        return 1 - ssim_per_image(recon, x, window=self.window, sigma=self.sigma).mean()
