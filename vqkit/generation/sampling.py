"""Making images from codes: sampling a prior (or the uniform distribution) and interpolating latents."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

# The same device rules as `vqkit train`: auto = CUDA, then MPS, then CPU; cuda:N; clear errors.
from vqkit import checks
from vqkit.device import resolve_device
from vqkit.errors import OptionError, ShapeError
from vqkit.generation.prior import CodePrior, check_prior_fits, check_sampling, load_prior

# More images than any sheet or batch of samples holds; beyond it a typo (1e9) would only exhaust memory.
MAX_SAMPLES = 1_000_000

__all__ = [
    "decode_batched",
    "interpolate",
    "resolve_device",
    "sample_codes",
    "sample_images",
    "uniform_codes",
]


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    seed = checks.optional_seed(seed)
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def _count(n: Any) -> int:
    return checks.integer(n, "n", minimum=1, maximum=MAX_SAMPLES)


def uniform_codes(
    model: Any, n: int, *, seed: int | None = None, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Random generation as the classic VQ-VAE tutorials do it, on the model's real grid: every code drawn
    uniformly at random."""
    n = _count(n)
    dev = resolve_device(device)
    shape = (n, *model.codes_shape)
    return torch.randint(model.quantizer.codebook_size, shape, generator=_generator(seed, dev), device=dev)


def sample_codes(
    prior: CodePrior,
    n: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    prefix: torch.Tensor | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """``n`` code grids from ``prior`` (on the prior's device). The same ``seed`` gives the same codes.

    ``prefix`` (codes ``[n, h, w(, S)]`` or ``[n, P]`` flat) fixes the first codes in raster order, e.g. the top
    rows of an image's codes: the prior completes the rest.
    """
    if not isinstance(prior, CodePrior):
        raise OptionError(f"prior must be a CodePrior, got {type(prior).__name__}", param="prior")
    n = _count(n)
    check_sampling(temperature, top_k, prior.spec.codebook_size)
    batch_size = checks.integer(batch_size, "batch_size", minimum=1)
    _check_prefix(prefix)
    dev = prior.positions.device
    gen = _generator(seed, dev)
    flat = None
    if prefix is not None:
        flat = prefix.reshape(prefix.shape[0], -1).to(dev).long()
        if flat.shape[0] != n:
            raise ShapeError(f"prefix holds {flat.shape[0]} code grids for {n} samples")
    prior.eval()
    parts = []
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        p = None if flat is None else flat[i : i + m]
        parts.append(prior.sample(m, temperature=temperature, top_k=top_k, generator=gen, prefix=p))
    return torch.cat(parts)


def sample_images(
    model: Any,
    prior: CodePrior | str | os.PathLike[str],
    n: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    prefix: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample ``n`` images ``[n, C, H, W]`` in [-1, 1] (on the CPU): codes from ``prior`` decoded by ``model``.

    ``prior`` is a :class:`CodePrior`, a prior file or folder, or ``"uniform"`` (every code drawn uniformly at random).
    """
    _check_model(model)
    n = _count(n)
    check_sampling(temperature, top_k)
    checks.optional_seed(seed)
    _check_prefix(prefix)
    if not isinstance(prior, (CodePrior, str, bytes, os.PathLike)):
        raise OptionError(
            f"prior must be a CodePrior, a prior file or 'uniform', got {type(prior).__name__}", param="prior"
        )
    dev = resolve_device(device)
    model = model.to(dev).eval()
    if isinstance(prior, str) and prior == "uniform":
        if prefix is not None:
            raise OptionError("a prefix needs a trained prior, not the uniform one", param="prefix")
        codes = uniform_codes(model, n, seed=seed, device=dev)
    else:
        if not isinstance(prior, CodePrior):
            prior = load_prior(prior)
        check_prior_fits(prior, model)
        prior = prior.to(dev)
        codes = sample_codes(prior, n, temperature=temperature, top_k=top_k, seed=seed, prefix=prefix)
    return decode_batched(model, codes).cpu()


def _check_model(model: Any) -> None:
    from vqkit.model import VQVAE

    if not isinstance(model, VQVAE):
        raise OptionError(f"model must be a vqkit VQVAE, got {type(model).__name__}", param="model")


def _check_prefix(prefix: Any) -> None:
    if prefix is not None and not isinstance(prefix, torch.Tensor):
        raise OptionError(f"prefix must be a tensor of codes, got {type(prefix).__name__}", param="prefix")


def decode_batched(model: Any, codes: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model.decode(c) for c in codes.split(batch_size)])


def as_image_batch(x: torch.Tensor | np.ndarray, model: Any, name: str = "images") -> torch.Tensor:
    """One image ``[C, H, W]`` or a batch ``[B, C, H, W]`` (float in [-1, 1], or uint8) as a float batch."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise OptionError(
            f"{name} must be a tensor or numpy array of images, got {type(x).__name__}", param=name
        )
    t = torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x
    if t.dtype == torch.uint8:
        t = t.float() / 127.5 - 1.0
    if t.dim() == 3:
        t = t.unsqueeze(0)
    model.check_images(t)
    return t.float()


@torch.no_grad()
def interpolate(
    model: Any, a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, steps: int = 10
) -> torch.Tensor:
    """Images along the straight line between ``a``'s and ``b``'s continuous latents, as the classic VQ-VAE tutorials do:
    ``z = lerp(z_a, z_b, t)`` for ``t`` in ``0 .. 1``, quantized and decoded -> ``[steps, C, H, W]``.

    The ends are exactly the model's reconstructions of ``a`` and ``b`` (lerp is exact at t = 0 and 1).
    """
    _check_model(model)
    steps = checks.integer(steps, "steps", minimum=2, maximum=MAX_SAMPLES)  # both ends at least
    dev = next(model.parameters()).device
    xa, xb = as_image_batch(a, model, "a"), as_image_batch(b, model, "b")
    if xa.shape[0] != 1 or xb.shape[0] != 1:
        raise ShapeError("interpolate takes one image at each end")
    if xa.shape != xb.shape:
        raise ShapeError(f"the two images differ in shape: {list(xa.shape)} and {list(xb.shape)}")
    model.eval()
    za, zb = model.encoder(xa.to(dev)), model.encoder(xb.to(dev))
    weights = torch.linspace(0.0, 1.0, steps, device=dev).view(-1, 1, 1, 1)
    z = torch.lerp(za.expand(steps, -1, -1, -1), zb.expand(steps, -1, -1, -1), weights)
    return model.decode(model.quantizer.quantize(z)).cpu()
