"""How well a model reconstructs images: MSE, PSNR, SSIM (and LPIPS when its weights are present), code
usage, perplexity, bits per image.

Conventions: images are compared in the model's [-1, 1] range through the inference path a user gets
(``encode`` then ``decode``); PSNR is ``10 log10(4 / MSE)`` (peak-to-peak 2), the same number as PSNR on
0..1 or 0..255 images, taken from the mean MSE over all images. SSIM and LPIPS are the registered ``ssim`` and
``lpips`` objectives' measures (SSIM on images mapped to [0, 1], Gaussian window), averaged over images. Code usage counts the distinct codes over the
whole set; with several codebooks (residual/grouped) it and the perplexity are averaged over the codebooks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from vqkit import checks
from vqkit.errors import OptionError, ShapeError
from vqkit.images import to_float, write_grid
from vqkit.model import VQVAE
from vqkit.pixels import psnr, to_uint8
from vqkit.pixels import to_float as pixel_float

MAX_BATCH = 2**20  # images per forward pass; beyond it a typo would only exhaust memory


def _as_float_batch(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(to_float(images) if images.dtype == np.uint8 else images.astype(np.float32))
    elif images.dtype == torch.uint8:
        images = pixel_float(images)
    return images.to(device=device, dtype=torch.float32)


@torch.no_grad()
def reconstruct(
    model: VQVAE, images: np.ndarray | torch.Tensor, *, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 0..255 or float [-1, 1], ``[N, C, H, W]``) -> (codes, reconstructions in [-1, 1]),
    both on the model's device."""
    batch_size = _check_model_args(model, images, batch_size)
    device = next(model.parameters()).device
    if len(images) == 0:
        raise ShapeError("no images to reconstruct")
    was_training = model.training
    model.eval()
    codes, recons = [], []
    try:
        for i in range(0, len(images), batch_size):
            x = _as_float_batch(images[i : i + batch_size], device)
            model.check_images(x)
            c = model.encode(x, check=False)
            codes.append(c)
            recons.append(model.decode(c, check=False).float())
    finally:
        model.train(was_training)
    return torch.cat(codes), torch.cat(recons)


def _check_model_args(model: Any, images: Any, batch_size: Any) -> int:
    if not isinstance(model, VQVAE):
        raise OptionError(f"model must be a vqkit VQVAE, got {type(model).__name__}", param="model")
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise OptionError(
            f"images must be a numpy array or tensor [N, C, H, W], got {type(images).__name__}",
            param="images",
        )
    return checks.integer(batch_size, "batch_size", minimum=1, maximum=MAX_BATCH)


def _perceptual(lpips: bool | str | None, device: torch.device) -> torch.nn.Module | None:
    """The ``lpips`` objective when asked for (True or a weight file: its weights must load) or, with
    ``"auto"``, when its default weight file exists; else None."""
    from vqkit.discovery import load_plugins
    from vqkit.registry import objectives

    if lpips is None or lpips is False:
        return None
    load_plugins()
    if "lpips" not in objectives:
        return None
    if lpips == "auto":  # through the registered objective: the core names no built-in plugin
        available = getattr(objectives.get("lpips"), "weights_available", None)
        if available is None or not available():
            return None
        lpips = True
    weights = None if lpips is True else str(lpips)
    return objectives.get("lpips")(weights=weights).to(device)


def _ssim_sum(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each image's SSIM, through the registered ``ssim`` objective (1 - SSIM)."""
    from vqkit.discovery import load_plugins
    from vqkit.registry import objectives

    load_plugins()
    loss = objectives.get("ssim")()(x, recon, step=0, last_layer=None)
    return (1 - loss.double()) * len(x)


@torch.no_grad()
def evaluate(
    model: VQVAE,
    images: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 256,
    lpips: bool | str | None = "auto",
) -> dict[str, Any]:
    """Reconstruction quality and code usage of ``model`` on ``images`` (uint8 or float ``[N, C, H, W]``).

    Returns a JSON-ready dict: ``mse``, ``psnr``, ``ssim``, ``codes_used``, ``codebook_size``, ``usage``
    (codes used / codebook size), ``perplexity``, ``bits_per_image``, ``images``; and ``lpips`` when measured.
    ``lpips``: ``"auto"`` measures it when the ``lpips`` objective's default weight file exists, True (or a
    weight file's path) requires it, None/False leaves it out.
    """
    batch_size = _check_model_args(model, images, batch_size)
    chunks = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    return _evaluate_batches(model, chunks, batch_size, lpips)


def _evaluate_batches(
    model: VQVAE, chunks: Iterable[Any], batch_size: int, lpips: bool | str | None
) -> dict[str, Any]:
    """:func:`evaluate` over batches as they come (a folder or shards read from disk a batch at a time)."""
    device = next(model.parameters()).device
    perceptual = _perceptual(lpips, device)
    ssim_sum = torch.zeros((), dtype=torch.float64, device=device)
    lpips_sum = torch.zeros((), dtype=torch.float64, device=device)
    sq_err = torch.zeros((), dtype=torch.float64, device=device)
    count = images = 0
    k = int(model.quantizer.codebook_size)
    s = model.num_codebooks
    hist = torch.zeros(s, k, dtype=torch.float64, device=device)
    for chunk in chunks:
        codes, recon = reconstruct(model, chunk, batch_size=batch_size)
        x = _as_float_batch(chunk, device)
        sq_err += ((recon - x) ** 2).sum(dtype=torch.float64)
        ssim_sum += _ssim_sum(x, recon)
        if perceptual is not None:
            lpips_sum += perceptual.distance(x, recon).sum(dtype=torch.float64)
        count += x.numel()
        images += len(x)
        flat = codes.reshape(-1, s)
        for j in range(s):
            hist[j] += torch.bincount(flat[:, j], minlength=k)[:k].double()
    mse = float(sq_err) / max(count, 1)
    probs = hist / hist.sum(dim=1, keepdim=True).clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=1)
    codes_used = float((hist > 0).sum(dim=1).double().mean())
    n = max(images, 1)
    extra = {"lpips": float(lpips_sum) / n} if perceptual is not None else {}
    return {
        "images": images,
        "mse": mse,
        "psnr": psnr(mse),
        "ssim": float(ssim_sum) / n,
        **extra,
        "codes_used": int(codes_used) if s == 1 else codes_used,
        "codebook_size": k,
        "usage": codes_used / k,
        "perplexity": float(torch.exp(entropy).mean()),
        "bits_per_image": model.bits_per_image,
    }


def _source_for_model(
    spec: Any,
    data: str,
    split: str,
    data_root: str | os.PathLike[str] | None,
    download: bool,
    skip_bad: bool,
) -> Any:
    """``split`` of the data source ``data``, read at the channels and size of a model's ``spec``."""
    from vqkit.data.imageset import open_images

    return open_images(
        data,
        split=split,
        channels=spec.channels,
        image_size=spec.image_size,
        download=download,
        skip_bad=skip_bad,
        data_root=data_root,
    )


def evaluate_source(
    model_path: str | os.PathLike[str],
    data: str,
    *,
    split: str = "test",
    limit: int | None = None,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    skip_bad: bool = False,
    batch_size: int = 256,
    device: str = "auto",
) -> dict[str, Any]:
    """``vqkit eval``: load a model file and a data source (converted to the model's channels and size),
    and return :func:`evaluate`'s report with the model, data and split named in it."""
    from vqkit.device import resolve_device
    from vqkit.modelfile import load, read_spec

    checks.optional_integer(limit, "limit", minimum=1)
    checks.integer(batch_size, "batch_size", minimum=1, maximum=MAX_BATCH)
    spec, _ = read_spec(model_path)
    dev = resolve_device(device)
    found = _source_for_model(spec, data, split, data_root, download, skip_bad)
    model = load(model_path, device=dev)
    report = _evaluate_batches(model, found.batches(batch_size, limit), batch_size, "auto")
    return {"model": str(model_path), "data": data, "split": split, **report}


def reconstruct_files(
    model_path: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    device: str = "auto",
    per_row: int = 8,
    scale: int | None = None,
) -> dict[str, Any]:
    """``vqkit reconstruct``: encode and decode image files, write a grid with each row of originals above
    the row of their reconstructions (``per_row`` images a row), and return ``{"images", "mse", "psnr"}``.
    A folder in ``paths`` stands for every image file under it (recursive, sorted). Files are converted to
    the model's channels and resized/cropped to its size; a file smaller than that is an error naming it."""
    from vqkit.data import DataError
    from vqkit.device import resolve_device
    from vqkit.images import expand_image_paths, read_image
    from vqkit.modelfile import load, read_spec

    spec, _ = read_spec(model_path)
    paths = expand_image_paths(paths)
    size = spec.image_size
    originals = []
    for p in paths:
        w, h = _image_size(p)
        if min(w, h) < size:
            raise DataError(f"image {p} is {w}x{h}, smaller than the model's {size}x{size}")
        originals.append(read_image(p, spec.channels, size))
    model = load(model_path, device=resolve_device(device))
    return _reconstruction_grid(model, np.stack(originals), output, per_row, scale)


def reconstruct_source(
    model_path: str | os.PathLike[str],
    data: str,
    output: str | os.PathLike[str],
    *,
    split: str = "test",
    limit: int = 16,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    skip_bad: bool = False,
    device: str = "auto",
    per_row: int = 8,
    scale: int | None = None,
) -> dict[str, Any]:
    """``vqkit reconstruct --data``: :func:`reconstruct_files` over the first ``limit`` images of ``split`` of
    a data source (any form ``vqkit eval --data`` takes; only those images are read)."""
    from vqkit.device import resolve_device
    from vqkit.modelfile import load, read_spec

    limit = checks.integer(limit, "limit", minimum=1, maximum=MAX_BATCH)
    spec, _ = read_spec(model_path)
    images = _source_for_model(spec, data, split, data_root, download, skip_bad).read(limit)
    model = load(model_path, device=resolve_device(device))
    return _reconstruction_grid(model, images, output, per_row, scale)


def _reconstruction_grid(
    model: VQVAE, images: np.ndarray, output: str | os.PathLike[str], per_row: int, scale: int | None
) -> dict[str, Any]:
    _, recon = reconstruct(model, images)
    recon_u8 = to_uint8(recon).cpu().numpy()
    n = len(images)
    cols = min(per_row, n)
    rows = []
    for i in range(0, n, cols):
        for block in (images[i : i + cols], recon_u8[i : i + cols]):
            pad = np.zeros((cols - len(block), *block.shape[1:]), dtype=np.uint8)
            rows.append(np.concatenate([block, pad]))
    write_grid(np.concatenate(rows), output, nrow=cols, scale=scale)
    mse = float(((recon.float().cpu() - torch.from_numpy(to_float(images))) ** 2).mean())
    return {"images": n, "mse": mse, "psnr": psnr(mse)}


def _image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    from PIL import Image

    from vqkit.errors import VQKitError

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise VQKitError(f"no such image file: {path}") from None
    except Exception as exc:  # Pillow raises many types for bad files
        raise VQKitError(f"cannot read image {path}: {exc}") from exc
