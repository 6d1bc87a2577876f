"""A prior over a VQ-VAE's code grid: a small causal transformer, and its file format.

Why a transformer: the grids vqkit models make are short sequences (16 tokens for the default 4x4 grid, a few
hundred at most), where a decoder-only transformer is simple, fast and beats a PixelCNN's limited receptive
field without any masking tricks. Codes are read in raster order (row by row, left to right); with several
codebooks (``[B, h, w, S]``, residual or grouped quantizers) the S codes of a cell follow each other, so the
sequence is ``h * w * S`` long and each token's embedding depends on its codebook level (token ``c`` of level
``s`` is embedded as ``s * K + c``). A learned start token begins every sequence.

The file is one ``.safetensors`` file: weights plus a :class:`PriorSpec` as JSON in its metadata, including a
fingerprint of the VQ-VAE whose codes it models, so using it with another model is caught.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqkit import checks
from vqkit._version import __version__
from vqkit.errors import ModelFileError, OptionError, ShapeError

FORMAT_KEY = "format"
FORMAT_VALUE = "vqkit.prior"
SPEC_KEY = "vqkit.prior_spec"
PRIOR_FILE = "prior.safetensors"
SPEC_FORMAT = 1


@dataclass
class PriorSpec:
    """Everything needed to rebuild a prior, and which VQ-VAE's codes it models."""

    grid: tuple[int, int] = (4, 4)
    num_codebooks: int = 1
    codebook_size: int = 512
    width: int = 96
    layers: int = 3
    heads: int = 4
    dropout: float = 0.1
    # sha256 (16 hex digits) of the VQ-VAE's weights: its codes are what this prior learnt.
    model_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    vqkit_version: str = __version__
    format: int = SPEC_FORMAT

    @property
    def seq_len(self) -> int:
        return self.grid[0] * self.grid[1] * self.num_codebooks

    @property
    def codes_shape(self) -> tuple[int, ...]:
        h, w = self.grid
        return (h, w) if self.num_codebooks == 1 else (h, w, self.num_codebooks)

    @property
    def uniform_bits(self) -> float:
        """Bits per image of the uniform prior: log2(K) for every code of the grid."""
        return self.seq_len * math.log2(self.codebook_size)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PriorSpec:
        from vqkit.textformats import load_json

        data = load_json(text, "the spec")
        if not isinstance(data, dict):
            raise ValueError("spec is not a JSON object")
        known = set(cls.__dataclass_fields__)
        spec = cls(**{k: v for k, v in data.items() if k in known})
        spec.grid = tuple(int(v) for v in spec.grid)  # type: ignore[assignment]
        return spec


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights (names, shapes and values), to tie a prior to its VQ-VAE."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class _Block(nn.Module):
    """Pre-norm transformer block with causal self-attention."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, c)))
        return x + self.mlp(self.ln2(x))


class CodePrior(nn.Module):
    """Autoregressive model of a VQ-VAE's codes: ``p(codes) = prod_i p(code_i | codes_<i)`` in raster order."""

    def __init__(self, spec: PriorSpec) -> None:
        super().__init__()
        if spec.width % spec.heads:
            raise OptionError(f"prior width {spec.width} is not divisible by its {spec.heads} heads")
        if min(spec.width, spec.layers, spec.heads, spec.codebook_size - 1, *spec.grid) < 1:
            raise OptionError(f"prior sizes must be positive: {spec}")
        if not 0.0 <= spec.dropout < 1.0:
            raise OptionError(f"prior dropout must lie in [0, 1), got {spec.dropout}")
        self.spec = spec
        s, k, length = spec.num_codebooks, spec.codebook_size, spec.seq_len
        self.tokens = nn.Embedding(s * k + 1, spec.width)  # the last row is the start token
        self.positions = nn.Parameter(torch.zeros(length, spec.width))
        nn.init.normal_(self.positions, std=0.02)
        self.drop = nn.Dropout(spec.dropout)
        self.blocks = nn.ModuleList(_Block(spec.width, spec.heads, spec.dropout) for _ in range(spec.layers))
        self.ln = nn.LayerNorm(spec.width)
        self.head = nn.Linear(spec.width, k)
        # Level of the code *read* at each input position (position 0 reads the start token).
        levels = (torch.arange(length) - 1).clamp_min(0) % s
        self.register_buffer("level_offset", levels * k, persistent=False)

    # --- layout -------------------------------------------------------------------------------------------
    def check_codes(self, codes: torch.Tensor) -> None:
        want = (-1, *self.spec.codes_shape)
        if codes.dim() != len(want) or tuple(codes.shape[1:]) != want[1:]:
            shape = ", ".join(["B", *map(str, want[1:])])
            raise ShapeError(f"the prior models codes [{shape}], got {list(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ShapeError(f"codes must be integers, got {codes.dtype}")
        k = self.spec.codebook_size
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise ShapeError(f"codes must lie in [0, {k - 1}], got {int(codes.min())}..{int(codes.max())}")

    def flatten(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` / ``[B, h, w, S]`` -> ``[B, h*w*S]`` in raster order, levels innermost."""
        return codes.reshape(codes.shape[0], -1).long()

    def unflatten(self, seq: torch.Tensor) -> torch.Tensor:
        return seq.reshape(seq.shape[0], *self.spec.codes_shape)

    # --- computation --------------------------------------------------------------------------------------
    def logits(self, prefix: torch.Tensor) -> torch.Tensor:
        """Next-code logits ``[B, T+1, K]`` for each position after the start token, given ``prefix [B, T]``
        (``T < seq_len``): position ``i`` predicts code ``i`` of the sequence."""
        b, t = prefix.shape
        start = torch.full((b, 1), self.tokens.num_embeddings - 1, dtype=torch.long, device=prefix.device)
        ids = torch.cat([start, prefix.long() + self.level_offset[1 : t + 1]], dim=1)
        x = self.drop(self.tokens(ids) + self.positions[: t + 1])
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood in nats per code (the training loss) of ``codes``."""
        seq = self.flatten(codes)
        logits = self.logits(seq[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), seq.reshape(-1))

    @torch.no_grad()
    def bits_per_image(self, codes: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Negative log2-likelihood of each image's codes, ``[B]`` (compare with ``spec.uniform_bits``)."""
        self.check_codes(codes)
        out = []
        for chunk in self.flatten(codes).split(batch_size):
            logits = self.logits(chunk[:, :-1]).float()
            nll = F.cross_entropy(logits.transpose(1, 2), chunk, reduction="none")
            out.append(nll.sum(dim=1) / math.log(2))
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` code grids. ``prefix [n, P]`` (flat, raster order) fixes the first P codes.

        The grids are short, so each step reruns the whole prefix (no key/value cache needed).
        """
        k = self.spec.codebook_size
        check_sampling(temperature, top_k, k)
        device = self.positions.device
        seq = torch.zeros(n, 0, dtype=torch.long, device=device)
        if prefix is not None:
            seq = prefix.to(device).long().reshape(n, -1)
            if seq.shape[1] > self.spec.seq_len:
                raise ShapeError(
                    f"prefix of {seq.shape[1]} codes is longer than the grid's {self.spec.seq_len}"
                )
        while seq.shape[1] < self.spec.seq_len:
            logits = self.logits(seq)[:, -1].float() / temperature
            if top_k is not None and top_k < k:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            seq = torch.cat([seq, nxt], dim=1)
        return self.unflatten(seq)


def check_sampling(temperature: Any, top_k: Any, codebook_size: int | None = None) -> float:
    """``temperature`` a positive finite number, ``top_k`` None or a whole number of codes from 1 (to
    ``codebook_size``); one message naming the parameter otherwise (0 and NaN included)."""
    temperature = checks.number(temperature, "temperature", minimum=0, open_min=True)
    try:
        checks.optional_integer(top_k, "top_k", minimum=1, maximum=codebook_size)
    except OptionError:
        most = f"lie in 1..{codebook_size}" if codebook_size else "be a whole number of at least 1"
        raise OptionError(f"top_k must {most}, got {checks.shown(top_k)}", param="top_k") from None
    return temperature


# --- the file --------------------------------------------------------------------------------------------
def save_prior(
    prior: CodePrior, path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> Path:
    """Write the prior to one ``.safetensors`` file atomically (a crash leaves the previous file intact)."""
    from vqkit.fileio import atomic_path
    from vqkit.modelfile import write_safetensors

    meta = {FORMAT_KEY: FORMAT_VALUE, SPEC_KEY: prior.spec.to_json(), **(metadata or {})}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in prior.state_dict().items()}
    with atomic_path(path) as tmp:
        write_safetensors(tensors, tmp, Path(path), meta)
    return Path(path)


def prior_path(path: str | os.PathLike[str]) -> Path:
    """A prior is named by its file or by the folder ``vqkit prior train --out`` wrote."""
    p = Path(path)
    return p / PRIOR_FILE if p.is_dir() else p


def read_prior_spec(path: str | os.PathLike[str]) -> tuple[PriorSpec, dict[str, str]]:
    from safetensors import safe_open

    p = prior_path(path)
    if not p.exists():
        where = f" (no {PRIOR_FILE} in folder {path})" if Path(path).is_dir() else ""
        raise ModelFileError(f"no such prior: {path}{where}; train one with `vqkit prior train`")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for truncated/garbage files
        raise ModelFileError(f"{p} is not a readable safetensors prior file ({exc})") from exc
    if meta.get(FORMAT_KEY) != FORMAT_VALUE or SPEC_KEY not in meta:
        what = "a vqkit model, not a prior" if meta.get(FORMAT_KEY) == "vqkit.model" else "not a vqkit prior"
        raise ModelFileError(f"{p} is {what}")
    try:
        spec = PriorSpec.from_json(meta[SPEC_KEY])
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{p}: its prior spec is corrupt ({exc})") from exc
    return spec, meta


def load_prior(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> CodePrior:
    """Rebuild a prior from its file (or the folder holding ``prior.safetensors``), in eval mode."""
    from safetensors.torch import load_file

    spec, _ = read_prior_spec(path)
    p = prior_path(path)
    prior = CodePrior(spec)
    try:
        prior.load_state_dict(load_file(str(p), device="cpu"), strict=True)
    except Exception as exc:
        raise ModelFileError(f"{p}: weights do not fit the prior its spec describes ({exc})") from exc
    return prior.to(device).eval()


def check_prior_fits(prior: CodePrior, model: nn.Module) -> None:
    """Fail clearly if ``prior`` models another code layout than ``model`` makes; warn if it was trained on
    another model's codes (same layout, other weights: samples would decode to nonsense)."""
    import warnings

    s = prior.spec
    grid = tuple(model.grid)  # type: ignore[attr-defined]
    books = int(model.num_codebooks)  # type: ignore[attr-defined]
    k = int(model.quantizer.codebook_size)  # type: ignore[attr-defined]
    if (tuple(s.grid), s.num_codebooks, s.codebook_size) != (grid, books, k):
        raise ShapeError(
            f"the prior models a {s.grid[0]}x{s.grid[1]} grid of {s.num_codebooks} codebook(s) of "
            f"{s.codebook_size} codes, but the model makes a {grid[0]}x{grid[1]} grid of {books} codebook(s) "
            f"of {k} codes; train a prior for this model with `vqkit prior train`"
        )
    if s.model_fingerprint and s.model_fingerprint != model_fingerprint(model):
        warnings.warn(
            "the prior was trained on the codes of another model (its weights differ); "
            "samples may not look like the data",
            PriorWarning,
            stacklevel=2,
        )


class PriorWarning(UserWarning):
    pass
