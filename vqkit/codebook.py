"""Shared pieces of every codebook quantizer: the nearest-code search and usage statistics.

The search writes distances as ||z||^2 - 2 z.e^T + ||e||^2 (the seed's formula, exportable to ONNX, unlike
``torch.cdist`` for small inputs) and always computes in fp32, also under bf16 autocast.
"""

from __future__ import annotations

import torch

from vqkit import search


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of ``codebook [K, D]`` for each row of ``z [N, D]`` (int64 ``[N]``).

    Delegates to :mod:`vqkit.search`: a fused Triton kernel on CUDA, a bounded-memory chunked search
    elsewhere, the plain formula when exporting; never an N x K matrix outside export.
    """
    return search.nearest_code(z, codebook)


def code_stats(indices: torch.Tensor, codebook_size: int) -> dict[str, torch.Tensor]:
    """Perplexity and number of distinct codes in a batch of indices, from a histogram (no one-hot)."""
    flat = indices.reshape(-1)
    counts = torch.bincount(flat, minlength=codebook_size).float()
    probs = counts / counts.sum().clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum()
    return {"perplexity": torch.exp(entropy).detach(), "codes_used": (counts > 0).sum().float().detach()}
