"""Shared pieces of the quantizers: :class:`FlatQuantizer` (the ``[B, D, h, w]`` <-> ``[N, D]`` layout, written
once), :class:`Codebook` (a learnt codebook searched by nearest neighbour: vq, ema, cosine, simvq, and the stages
of rvq/gvq), the nearest-code search, usage statistics, k-means initialisation, dead-code restart, EMA
statistics and the rotation-trick gradient estimator.

The search (:mod:`vqkit.search`) computes distances in fp32, also under bf16 autocast, and exports to ONNX.

Per-code statistics are built with ``bincount``/``index_add_`` (O(N*D)), never an N x K one-hot. Everything
that changes a codebook outside the optimiser (k-means, restarts, EMA) is made identical on every DDP rank
through :mod:`vqkit.distributed`: sums are all-reduced, random choices are made on rank 0 and broadcast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqkit import search
from vqkit.contracts import Quantized, Quantizer, channels_last_flat, unflatten_channels_first
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


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the distributions along the last dimension of ``p``; zero probabilities add 0."""
    return -(p * torch.log(p.clamp_min(1e-10))).sum(-1)


# Above this many codes a [K] histogram would take more memory than the codes it describes (lfq with many bits):
# count the codes that occur instead (torch.unique, a device sync).
HISTOGRAM_MAX_CODES = 2**24

# Up to this many codes the entropy terms of lfq and fsq use the exact distribution over codes ([N, K]
# probabilities, or fsq's product of per-channel ones); above it, a per-bit or per-channel factorisation.
EXACT_ENTROPY_MAX_CODES = 4096


def code_stats(indices: torch.Tensor, codebook_size: int) -> dict[str, torch.Tensor]:
    """Perplexity and number of distinct codes in a batch of indices, from a histogram (no one-hot)."""
    if codebook_size > HISTOGRAM_MAX_CODES:
        counts = torch.unique(indices.reshape(-1), return_counts=True)[1].float()
    else:
        counts = code_counts(indices, codebook_size)
    probs = counts / counts.sum().clamp_min(1)
    return {
        "perplexity": torch.exp(entropy(probs)).detach(),
        "codes_used": (counts > 0).sum().float().detach(),
    }


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


def eager_under_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run eagerly (a graph break) when a ``torch.compile``'d model reaches it, and plainly otherwise.
    ``torch.compiler.disable`` as a decorator would import Dynamo (over a second) with every plugin load, for
    every command; this wrapper defers that to the first compiled call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return torch.compiler.disable(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


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
    (``restart_after // 8``, at least 2): a code is re-seeded after ``restart_after`` to
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
        # At least every other step: a check with dead codes costs a device sync.
        self.check_every = max(2, self.restart_after // 8)
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

    def advance_host(self) -> None:
        """Count one training step on the host mirror (the buffer ``step`` is counted by :meth:`record`).

        Called from the eager upkeep (:meth:`Codebook._keep_healthy`), never from code ``torch.compile``
        traces: a traced read of the host step makes Dynamo guard on its value and recompile every step."""
        initialised, step = self._mirror()
        self._host = (initialised, step + 1)

    @torch.no_grad()
    def record(self, indices: torch.Tensor) -> torch.Tensor:
        """Count one training step's codes over all ranks, mark them used; returns the reduced counts.

        Only tensors change here (no host state), so a compiled model traces it once."""
        counts = all_reduce_sum_(code_counts(indices, self.codebook_size))
        self.step += 1
        # torch.where, not a boolean-mask assignment (which finds its indices with a device sync)
        self.last_used.copy_(torch.where(counts > 0, self.step, self.last_used))
        return counts

    @torch.no_grad()
    def tend(
        self,
        z: torch.Tensor,
        start: Callable[[torch.Tensor | None, torch.Tensor], None],
        error: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """One training step's upkeep, before the search: k-means on the first batch, then, when a check is
        due, dead codes re-seeded from this batch. ``start(mask, rows)`` makes the codes (all where ``mask``
        is None) start at ``rows``; ``error(z)`` is each latent's quantization error (restarts go where it is
        largest). Counts the step on the host; run it eagerly (decisions are host-side)."""
        try:
            if self.needs_init():
                start(None, kmeans(z, self.codebook_size, self.kmeans_iters))
                self.mark_initialised()
            if not self.restart_check_due():
                return
            dead = self.dead_codes()
            if bool(dead.any()):  # a device sync, but only every check_every steps
                start(dead, self.replacements(z, dead, error(z)))
        finally:
            self.advance_host()  # record() counts this step in the buffer

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


class FlatQuantizer(Quantizer):
    """A quantizer that treats every latent vector on its own: subclasses work on rows ``[N, D]`` and this
    base does the ``[B, D, h, w]`` <-> ``[N, D]`` layout (row order b, h, w) for all of them.

    Subclasses implement:

    - ``forward_flat(rows) -> Quantized`` with ``z_q [N, D]`` and ``indices [N]`` (one codebook) or
      ``[N, S]`` (``S = num_codebooks``);
    - ``quantize_flat(rows) -> indices`` (``[N]`` or ``[N, S]``), pure and traceable;
    - ``dequantize_flat(indices) -> rows [N, D]`` (``indices`` as ``quantize_flat`` gives them).

    With one codebook the codes are ``[B, h, w]``, with S codebooks ``[B, h, w, S]``; ``z_q`` takes the
    latents' dtype.
    """

    def forward_flat(self, rows: torch.Tensor) -> Quantized:  # pragma: no cover - contract
        raise NotImplementedError

    def quantize_flat(self, rows: torch.Tensor) -> torch.Tensor:  # pragma: no cover - contract
        raise NotImplementedError

    def dequantize_flat(self, indices: torch.Tensor) -> torch.Tensor:  # pragma: no cover - contract
        raise NotImplementedError

    def _grid(self, indices: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        if self.num_codebooks == 1:
            return indices.reshape(b, h, w)
        return indices.reshape(b, h, w, self.num_codebooks)

    def forward(self, z: torch.Tensor) -> Quantized:
        b, _, h, w = z.shape
        q = self.forward_flat(channels_last_flat(z))
        z_q = unflatten_channels_first(q.z_q, b, h, w).to(z.dtype)
        return Quantized(z_q, self._grid(q.indices, b, h, w), q.loss, q.stats)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        return self._grid(self.quantize_flat(channels_last_flat(z)), b, h, w)

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        b, h, w = indices.shape[0], indices.shape[1], indices.shape[2]
        s = self.num_codebooks
        rows = indices.reshape(b * h * w) if s == 1 else indices.reshape(b * h * w, s)
        return unflatten_channels_first(self.dequantize_flat(rows), b, h, w)


INITS = ("normal", "uniform", "kmeans")


class Codebook(FlatQuantizer):
    """A learnt codebook of ``codebook_size`` codes of ``dim`` values, searched by nearest neighbour, with its
    upkeep (k-means init, dead-code restarts) and the ste/rotation estimator: the machinery of vq and of the
    quantizers built on it (ema, cosine, simvq). rvq and gvq stack any registered subclass as their stages.

    ``init``: ``"uniform"`` draws U(-1/K, 1/K) (the original VQ-VAE codebook), ``"normal"`` N(0, 1) like
    ``nn.Embedding``, ``"kmeans"`` runs k-means++ on the first training batch's latents.
    ``restart_after=N`` re-seeds codes unused for N training steps (0: never).

    Subclasses change only the hooks: :meth:`codebook`, ``_normalise``, ``_loss``, ``_update``,
    ``_seed_rows``, ``_set_rows``; the search, the upkeep and the estimator stay here.
    """

    def __init__(
        self,
        dim: int | None,
        codebook_size: int | None,
        beta: float,
        init: str,
        restart_after: int,
        estimator: str,
    ) -> None:
        super().__init__()
        self.dim = int(dim or 64)
        self.codebook_size = int(codebook_size or 512)
        if self.dim < 1 or self.codebook_size < 2:
            raise ValueError(
                f"need dim >= 1 and codebook_size >= 2, got dim={self.dim} and codebook_size={self.codebook_size}"
            )
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.beta = float(beta)
        self.init = init
        self.estimator = check_estimator(estimator)
        self.embedding = nn.Embedding(self.codebook_size, self.dim)
        if init == "uniform":
            self.embedding.weight.data.uniform_(-1 / self.codebook_size, 1 / self.codebook_size)
        self.upkeep = CodebookUpkeep(self.codebook_size, init == "kmeans", restart_after)

    # --- hooks for subclasses ---------------------------------------------------------------------------
    def codebook(self) -> torch.Tensor:
        """The codes the search runs against, ``[K, D]`` (with gradients where they are learnt)."""
        return self.embedding.weight

    def _normalise(self, flat: torch.Tensor) -> torch.Tensor:
        return flat

    def _loss(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Codebook loss + beta x commitment loss (fp32)."""
        return F.mse_loss(codes.float(), flat.detach().float()) + self.beta * F.mse_loss(
            codes.detach().float(), flat.float()
        )

    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """Buffer updates after the search (EMA); gradient-trained codebooks do nothing."""

    def _seed_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Raw codebook rows that make ``codebook()`` equal ``flat`` (identity unless re-parameterised)."""
        return flat

    @torch.no_grad()
    def _set_rows(self, mask: torch.Tensor | None, rows: torch.Tensor) -> None:
        """Overwrite codebook rows (all rows when ``mask`` is None) after k-means or a restart."""
        w = self.embedding.weight.data
        if mask is None:
            w.copy_(rows.to(w.dtype))
        else:
            w[mask] = rows.to(w.dtype)

    # --- training path ------------------------------------------------------------------------------------
    # Eager even inside a torch.compile'd model: its decisions are host-side (the step mirror, a device
    # sync when dead codes are found), and traced they would make Dynamo guard on the step number and
    # recompile the model at every step. One graph break per codebook per step is the price.
    @eager_under_compile
    @torch.no_grad()
    def _keep_healthy(self, flat: torch.Tensor) -> None:
        """k-means on the first batch, then re-seed dead codes from this batch (before the search, so they
        compete at once and no tensor saved for backward is modified). Runs once per training step, before
        :meth:`CodebookUpkeep.record`, and counts that step on the host."""

        def error(rows: torch.Tensor) -> torch.Tensor:
            codebook = self.codebook().detach().float()
            return ((rows.float() - codebook[nearest_code(rows, codebook)]) ** 2).sum(-1)

        self.upkeep.tend(flat, lambda mask, rows: self._set_rows(mask, self._seed_rows(rows)), error)

    def lookup_flat(
        self, flat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training search on rows ``[N, D]``: (normalised rows, their codes, int64 indices ``[N]``, loss).

        Runs the upkeep (k-means, restarts) and buffer updates in training; no estimator is applied, so
        composite quantizers (rvq, gvq) can apply one to their total.
        """
        flat = self._normalise(flat)
        if self.training:
            self._keep_healthy(flat.detach())
        codebook = self.codebook()
        indices = nearest_code(flat.detach(), codebook)
        codes = F.embedding(indices, codebook)
        loss = self._loss(flat, codes)
        if self.training:
            counts = self.upkeep.record(indices)
            self._update(flat.detach(), indices, counts)
        return flat, codes, indices, loss

    def search(self, flat: torch.Tensor) -> torch.Tensor:
        """Pure nearest-code search on rows ``[N, D]`` -> int64 ``[N]`` (no buffer updates)."""
        return nearest_code(self._normalise(flat), self.codebook())

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of int64 ``indices`` (any shape) -> ``[..., D]``."""
        return F.embedding(indices, self.codebook())

    # --- the FlatQuantizer contract -------------------------------------------------------------------
    def forward_flat(self, rows: torch.Tensor) -> Quantized:
        flat, codes, indices, loss = self.lookup_flat(rows)
        flat_q = estimate(flat, codes.to(flat.dtype), self.estimator)
        return Quantized(flat_q, indices, loss, code_stats(indices, self.codebook_size))

    def quantize_flat(self, rows: torch.Tensor) -> torch.Tensor:
        return self.search(rows)

    def dequantize_flat(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embed(indices)
