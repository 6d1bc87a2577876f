"""Shared pieces of every codebook quantizer: the nearest-code search, usage statistics, k-means
initialisation, dead-code restart, EMA statistics and the rotation-trick gradient estimator.

The search (:mod:`vqkit.search`) computes distances in fp32, also under bf16 autocast, and exports to ONNX.

Per-code statistics are built with ``bincount``/``index_add_`` (O(N*D)), never an N x K one-hot. Everything
that changes a codebook outside the optimiser (k-means, restarts, EMA) is made identical on every DDP rank
through :mod:`vqkit.distributed`: sums are all-reduced, random choices are made on rank 0 and broadcast.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqkit import search
from vqkit.distributed import all_reduce_sum_, broadcast_


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of ``codebook [K, D]`` for each row of ``z [N, D]`` (int64 ``[N]``).

    Delegates to :mod:`vqkit.search`: a fused Triton kernel on CUDA, a bounded-memory chunked search
    elsewhere, the plain formula when exporting; never an N x K matrix outside export.
    """
    return search.nearest_code(z, codebook)


def code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs (float ``[K]``), from a histogram.

    By ``index_add_`` into a fixed ``[K]`` rather than ``torch.bincount``, whose CUDA kernel reads the largest
    index back to the host to size its output (a device sync in every training step). Counts of ones are exact
    in fp32, so the atomics' order does not matter."""
    flat = indices.reshape(-1)
    counts = torch.zeros(codebook_size, device=flat.device, dtype=torch.float32)
    return counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))


def code_stats(indices: torch.Tensor, codebook_size: int) -> dict[str, torch.Tensor]:
    """Perplexity and number of distinct codes in a batch of indices, from a histogram (no one-hot)."""
    counts = code_counts(indices, codebook_size)
    probs = counts / counts.sum().clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum()
    return {"perplexity": torch.exp(entropy).detach(), "codes_used": (counts > 0).sum().float().detach()}


def mean_stats(stats: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Average the stats of several codebooks (residual stages, groups) key by key."""
    return {k: torch.stack([s[k] for s in stats]).mean() for k in stats[0]}


def cluster_sums(
    z: torch.Tensor, indices: torch.Tensor, codebook_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code counts ``[K]`` and latent sums ``[K, D]`` of ``z [N, D]`` (fp32, by index_add)."""
    z = z.float()
    counts = code_counts(indices, codebook_size)
    sums = torch.zeros(codebook_size, z.shape[1], device=z.device, dtype=torch.float32)
    sums.index_add_(0, indices, z)
    return counts, sums


@torch.no_grad()
def kmeans_plus_plus(z: torch.Tensor, k: int) -> torch.Tensor:
    """k-means++ seeds: each next seed drawn with probability proportional to its squared distance from
    the seeds so far, so separated clusters each get one (plain random seeds often pair up in one)."""
    n = z.shape[0]
    seeds = torch.empty(k, z.shape[1], dtype=z.dtype, device=z.device)
    seeds[0] = z[torch.randint(0, n, (1,), device=z.device)]
    nearest = ((z - seeds[0]) ** 2).sum(-1)
    for i in range(1, k):
        total = nearest.sum()
        if total <= 0:  # fewer distinct latents than codes: repeat some (restarts spread them later)
            seeds[i:] = z[torch.randint(0, n, (k - i,), device=z.device)]
            break
        seeds[i] = z[torch.multinomial(nearest, 1)]
        nearest = torch.minimum(nearest, ((z - seeds[i]) ** 2).sum(-1))
    return seeds


@torch.no_grad()
def kmeans(z: torch.Tensor, k: int, iters: int = 10) -> torch.Tensor:
    """k-means on ``z [N, D]`` (fp32): k-means++ seeds, then Lloyd iterations; centroids ``[K, D]``.

    Computed on rank 0 and broadcast, so every DDP rank starts from the same codebook. An empty cluster
    keeps its seed; with fewer latents than codes, seeds repeat (restarts then spread them).
    """
    z = z.detach().float()
    centroids = kmeans_plus_plus(z, k)
    for _ in range(iters):
        counts, sums = cluster_sums(z, nearest_code(z, centroids), k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return broadcast_(centroids)


def rotation_trick(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Rotation-trick estimator (Fifty et al., 2024): returns ``e`` in value, with gradients to ``z``
    through the rotation + rescaling that maps ``z`` onto ``e``, treated as a constant.

    Rows of ``z``, ``e`` are ``[N, D]``. Uses R z = z - 2 (z.w) w + 2 (z.u) q with u = z/|z|, q = e/|e|,
    w = (u+q)/|u+q| (Householder form, no D x D matrix), then scales by |e|/|z|.
    """
    eps = 1e-6
    z_norm = z.norm(dim=-1, keepdim=True).clamp_min(eps)
    e_norm = e.norm(dim=-1, keepdim=True).clamp_min(eps)
    u = (z / z_norm).detach()
    q = (e / e_norm).detach()
    w = F.normalize(u + q, dim=-1, eps=eps).detach()
    rotated = z - 2 * (z * w).sum(-1, keepdim=True) * w + 2 * (z * u).sum(-1, keepdim=True) * q
    return (e_norm / z_norm).detach() * rotated


ESTIMATORS = ("ste", "rotation")


def estimate(z: torch.Tensor, e: torch.Tensor, estimator: str) -> torch.Tensor:
    """Quantized rows ``e`` with gradients to ``z`` by the straight-through or the rotation estimator."""
    if estimator == "rotation":
        return rotation_trick(z, e)
    return z + (e - z).detach()


def check_estimator(estimator: str) -> str:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    return estimator


class CodebookUpkeep(nn.Module):
    """The state that keeps one codebook healthy: k-means init on the first training batch and dead-code
    restart (a code unused for ``restart_after`` training steps is re-seeded from a latent of the batch).

    The codebook tensor itself is owned by the quantizer (a parameter or an EMA buffer). In training the
    quantizer runs :func:`kmeans` once while ``initialised`` is false, re-seeds :meth:`dead_codes` with
    :meth:`replacements` before its search, and calls :meth:`record` after it. Usage counts are
    all-reduced and replacements broadcast from rank 0, so every rank agrees.

    The decisions "run k-means now?" and "look for dead codes now?" are taken on the host from Python
    mirrors of ``initialised`` and ``step`` (read from the buffers once after construction or loading), so
    a training step does not wait on the GPU. Dead codes are looked for every ``check_every`` steps
    (``restart_after // 8``, at least 1): a code is re-seeded after ``restart_after`` to
    ``restart_after + check_every - 1`` unused steps.
    """

    def __init__(
        self, codebook_size: int, kmeans_init: bool, restart_after: int, kmeans_iters: int = 10
    ) -> None:
        super().__init__()
        if restart_after < 0:
            raise ValueError(f"restart_after must be >= 0 steps (0 turns restarts off), got {restart_after}")
        if kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be at least 1, got {kmeans_iters}")
        self.codebook_size = codebook_size
        self.kmeans_init = bool(kmeans_init)
        self.restart_after = int(restart_after)
        self.kmeans_iters = int(kmeans_iters)
        # Persistent: a loaded model must not be k-means initialised again.
        self.register_buffer("initialised", torch.tensor(not self.kmeans_init))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("last_used", torch.zeros(codebook_size, dtype=torch.int64))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.int64))
        self.check_every = max(1, self.restart_after // 8)
        self._host: tuple[bool, int] | None = None  # (initialised, step), mirrored on the host

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._host = None  # re-read the loaded buffers once

    def _mirror(self) -> tuple[bool, int]:
        if self._host is None:
            self._host = (bool(self.initialised), int(self.step))  # one sync after construction or loading
        return self._host

    def needs_init(self) -> bool:
        """Whether k-means has yet to run (a host-side read: no device sync after the first call)."""
        return not self._mirror()[0]

    @torch.no_grad()
    def mark_initialised(self) -> None:
        self.initialised.fill_(True)
        self._host = (True, self._mirror()[1])

    def restart_check_due(self) -> bool:
        """Whether this training step should look for dead codes (host-side; every rank decides alike)."""
        if self.restart_after == 0:
            return False
        step = self._mirror()[1]
        return step >= self.restart_after and step % self.check_every == 0

    @torch.no_grad()
    def dead_codes(self) -> torch.Tensor:
        """Bool mask ``[K]`` of codes unused for ``restart_after`` training steps (never, if 0)."""
        if self.restart_after == 0:
            return torch.zeros(self.codebook_size, dtype=torch.bool, device=self.last_used.device)
        return (self.step - self.last_used) >= self.restart_after

    @torch.no_grad()
    def record(self, indices: torch.Tensor) -> torch.Tensor:
        """Count one training step's codes over all ranks, mark them used; returns the reduced counts."""
        counts = all_reduce_sum_(code_counts(indices, self.codebook_size))
        initialised, step = self._mirror()
        self.step += 1
        self._host = (initialised, step + 1)
        # torch.where, not a boolean-mask assignment (which finds its indices with a device sync)
        self.last_used.copy_(torch.where(counts > 0, self.step, self.last_used))
        return counts

    @torch.no_grad()
    def replacements(self, z: torch.Tensor, dead: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
        """New rows for the dead codes, ``[n_dead, D]``: latents of this batch drawn on rank 0 (broadcast).

        Latents are drawn with probability proportional to their squared quantization ``error`` ``[N]``,
        so restarted codes go where the codebook represents the data worst, not onto latents it already
        fits (k-means++ style); a tight, collapsed cluster of latents therefore cannot soak up every restart.
        """
        n = int(dead.sum())
        z = z.detach().float()
        weights = error.detach().float().clamp_min(0) + 1e-12
        pick = torch.multinomial(weights, n, replacement=z.shape[0] < n)
        rows = z[pick].clone()
        self.restarts += n
        self.last_used[dead] = self.step
        return broadcast_(rows)
