"""The VQ-VAE: an encoder, a quantizer and a decoder, built by name from the registries."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqkit._version import __version__
from vqkit.contracts import Quantized
from vqkit.discovery import load_plugins
from vqkit.errors import OptionError, ShapeError, VQKitError
from vqkit.options import validate_options
from vqkit.registry import decoders, encoders, quantizers

SPEC_FORMAT = 1


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model: stored as JSON in the model file's metadata."""

    encoder: str = "conv3"
    quantizer: str = "vq"
    decoder: str = "conv3"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    quantizer_options: dict[str, Any] = field(default_factory=dict)
    decoder_options: dict[str, Any] = field(default_factory=dict)
    channels: int = 3
    image_size: int = 32
    latent_dim: int = 64
    codebook_size: int = 512
    value_range: tuple[float, float] = (-1.0, 1.0)
    # Which distribution each component came from ("vqkit-plugin-example==0.1.0"); None for built-ins.
    origins: dict[str, str | None] = field(default_factory=dict)
    vqkit_version: str = __version__
    format: int = SPEC_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("spec is not a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        spec = cls(**{k: v for k, v in data.items() if k in known})
        spec.value_range = tuple(spec.value_range)  # type: ignore[assignment]
        return spec


@dataclass
class VQVAEOutput:
    reconstruction: torch.Tensor
    quantized: Quantized
    recon_loss: torch.Tensor
    loss: torch.Tensor


class VQVAE(nn.Module):
    """Encoder -> quantizer -> decoder. ``forward`` trains; ``encode``/``decode`` map images <-> codes."""

    def __init__(self, encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder
        self.spec = spec

    # --- shapes -----------------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        f = int(self.encoder.downsample)
        return (self.spec.image_size // f, self.spec.image_size // f)

    @property
    def num_codebooks(self) -> int:
        return int(getattr(self.quantizer, "num_codebooks", 1))

    @property
    def codes_shape(self) -> tuple[int, ...]:
        """Shape of one image's codes: ``(h, w)`` or ``(h, w, S)``."""
        h, w = self.grid
        return (h, w) if self.num_codebooks == 1 else (h, w, self.num_codebooks)

    @property
    def bits_per_image(self) -> float:
        h, w = self.grid
        return h * w * self.num_codebooks * math.log2(self.quantizer.codebook_size)

    def check_images(self, x: torch.Tensor) -> None:
        c, s = self.spec.channels, self.spec.image_size
        if x.dim() != 4 or x.shape[1] != c:
            raise ShapeError(f"expected images [B, {c}, H, W], got {list(x.shape)}")
        f = int(self.encoder.downsample)
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ShapeError(f"image size {x.shape[-2]}x{x.shape[-1]} is not divisible by the encoder's {f}")
        del s  # other sizes than the trained one are allowed for fully convolutional models

    def check_codes(self, indices: torch.Tensor) -> None:
        s = self.num_codebooks
        want = 3 if s == 1 else 4
        if indices.dim() != want or (s > 1 and indices.shape[-1] != s):
            shape = "[B, h, w]" if s == 1 else f"[B, h, w, {s}]"
            raise ShapeError(f"expected codes {shape}, got {list(indices.shape)}")
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ShapeError(f"codes must be integers, got {indices.dtype}")
        k = self.quantizer.codebook_size
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= k):
            raise ShapeError(
                f"codes must lie in [0, {k - 1}], got values from {int(indices.min())} to {int(indices.max())}"
            )

    # --- computation --------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        z = self.encoder(x)
        q = self.quantizer(z)
        recon = self.decoder(q.z_q)
        recon_loss = F.mse_loss(recon.float(), x.float())
        return VQVAEOutput(recon, q, recon_loss, recon_loss + q.loss)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in [-1, 1] -> int64 codes ``[B, h, w]`` (or ``[B, h, w, S]``)."""
        if check:
            self.check_images(x)
        return self.quantizer.quantize(self.encoder(x))

    @torch.no_grad()
    def decode(self, indices: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Codes -> images ``[B, C, H, W]`` in [-1, 1]."""
        if check:
            self.check_codes(indices)
        return self.decoder(self.quantizer.dequantize(indices.long()))

    # --- description -------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        def count(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())

        h, w = self.grid
        return {
            "encoder": {
                "name": self.spec.encoder,
                "options": self.spec.encoder_options,
                "parameters": count(self.encoder),
            },
            "quantizer": {
                "name": self.spec.quantizer,
                "options": self.spec.quantizer_options,
                "parameters": count(self.quantizer),
            },
            "decoder": {
                "name": self.spec.decoder,
                "options": self.spec.decoder_options,
                "parameters": count(self.decoder),
            },
            "parameters": count(self),
            "channels": self.spec.channels,
            "image_size": self.spec.image_size,
            "latent_dim": self.spec.latent_dim,
            "downsample": int(self.encoder.downsample),
            "grid": [h, w],
            "num_codebooks": self.num_codebooks,
            "codebook_size": int(self.quantizer.codebook_size),
            "bits_per_image": self.bits_per_image,
        }

    def describe(self) -> str:
        """A human-readable summary: components with all their options, parameters, shapes, code budget."""
        info = self.summary()
        registries = {"encoder": encoders, "quantizer": quantizers, "decoder": decoders}
        lines = []
        for part in ("encoder", "quantizer", "decoder"):
            name = info[part]["name"]
            opts = dict(info[part]["options"])
            if name in registries[part]:
                defaults = {o.name: o.default for o in registries[part].entry(name).options if not o.required}
                opts = {**defaults, **opts}
            shown = " ".join(f"{k}={v!r}" for k, v in opts.items())
            lines.append(f"{part:<10} {name:<12} {info[part]['parameters']:>12,} params  {shown}".rstrip())
        h, w = info["grid"]
        s = info["num_codebooks"]
        books = "1 codebook" if s == 1 else f"{s} codebooks"
        lines += [
            f"{'total':<10} {'':<12} {info['parameters']:>12,} params",
            f"images     {info['channels']} x {info['image_size']} x {info['image_size']}, values in [-1, 1]",
            f"latents    {info['latent_dim']} x {h} x {w} (downsample {info['downsample']})",
            f"codes      {h}x{w} grid, {books} of {info['codebook_size']} codes, "
            f"{info['bits_per_image']:g} bits per image",
        ]
        return "\n".join(lines)

    def extra_repr(self) -> str:
        s = self.spec
        h, w = self.grid
        return (
            f"encoder={s.encoder!r}, quantizer={s.quantizer!r}, decoder={s.decoder!r}, channels={s.channels}, "
            f"image_size={s.image_size}, grid={h}x{w}, codebook_size={self.quantizer.codebook_size}"
        )


def default_decoder(encoder: str) -> str:
    load_plugins()
    encoders.entry(encoder)  # an unknown encoder is the clearer error
    if encoder in decoders:
        return encoder
    raise OptionError(
        f"no decoder is named like encoder {encoder!r}; choose one with --decoder "
        f"(available decoders: {', '.join(decoders.names()) or 'none'})"
    )


def _construct(kind: str, name: str, obj: Any, *args: Any, **options: Any) -> nn.Module:
    try:
        return obj(*args, **options)
    except VQKitError:
        raise
    except (ValueError, AssertionError) as exc:
        raise OptionError(f"{kind} {name!r} rejected its settings: {exc}") from exc


def _dry_run(encoder: nn.Module, decoder: nn.Module, spec: ModelSpec) -> None:
    """Push one blank image through encoder and decoder so a mismatched pair fails at build, clearly."""
    s, c, d = spec.image_size, spec.channels, spec.latent_dim
    f = int(encoder.downsample)
    modes = (encoder.training, decoder.training)
    encoder.eval()
    decoder.eval()
    try:
        with torch.no_grad():
            z = encoder(torch.zeros(1, c, s, s))
            if tuple(z.shape) != (1, d, s // f, s // f):
                raise ShapeError(
                    f"encoder {spec.encoder!r} gave latents {list(z.shape)} for a {s}x{s} image; "
                    f"the contract wants [1, {d}, {s // f}, {s // f}]"
                )
            y = decoder(z)
            if tuple(y.shape) != (1, c, s, s):
                raise ShapeError(
                    f"decoder {spec.decoder!r} turned latents {list(z.shape)} into {list(y.shape)}; "
                    f"the model needs images [1, {c}, {s}, {s}]"
                )
    except RuntimeError as exc:
        raise ShapeError(f"{spec.encoder!r} + {spec.decoder!r} cannot process {s}x{s} images: {exc}") from exc
    finally:
        encoder.train(modes[0])
        decoder.train(modes[1])


def build_model(
    encoder: str = "conv3",
    quantizer: str = "vq",
    decoder: str | None = None,
    *,
    channels: int = 3,
    image_size: int = 32,
    latent_dim: int | None = None,
    codebook_size: int | None = None,
    encoder_options: dict[str, Any] | None = None,
    quantizer_options: dict[str, Any] | None = None,
    decoder_options: dict[str, Any] | None = None,
    seed: int | None = None,
) -> VQVAE:
    """Build a VQ-VAE from registered components.

    ``latent_dim``/``codebook_size`` left as ``None`` take the quantizer's defaults (or what it fixes itself);
    the quantizer's resulting ``dim`` is given to encoder and decoder. ``seed`` makes initial weights repeatable.
    """
    load_plugins()
    if channels < 1:
        raise OptionError(f"channels must be at least 1, got {channels}")
    if image_size < 1:
        raise OptionError(f"image size must be positive, got {image_size}")
    if latent_dim is not None and latent_dim < 1:
        raise OptionError(f"latent dim must be at least 1, got {latent_dim}")
    if codebook_size is not None and codebook_size < 2:
        raise OptionError(f"codebook size must be at least 2, got {codebook_size}")
    decoder = decoder or default_decoder(encoder)
    e_entry, q_entry, d_entry = encoders.entry(encoder), quantizers.entry(quantizer), decoders.entry(decoder)
    e_opts = validate_options(e_entry, dict(encoder_options or {}))
    q_opts = validate_options(q_entry, dict(quantizer_options or {}))
    d_opts = validate_options(d_entry, dict(decoder_options or {}))

    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        q = _construct("quantizer", quantizer, q_entry.obj, latent_dim, codebook_size, **q_opts)
        dim = int(q.dim)
        if latent_dim is not None and dim != latent_dim:
            raise OptionError(
                f"quantizer {quantizer!r} fixes its latent dim to {dim}; drop --latent-dim {latent_dim}"
            )
        enc = _construct("encoder", encoder, e_entry.obj, channels, dim, **e_opts)
        factor = getattr(enc, "downsample", None)
        if not isinstance(factor, int) or factor < 1:
            raise VQKitError(
                f"encoder {encoder!r} does not say its downsample factor (an int attribute `downsample`)"
            )
        if image_size % factor:
            raise ShapeError(
                f"image size {image_size} is not divisible by encoder {encoder!r}'s downsample factor {factor}; "
                f"use a multiple of {factor}"
            )
        dec = _construct("decoder", decoder, d_entry.obj, dim, channels, **d_opts)
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    spec = ModelSpec(
        encoder=encoder,
        quantizer=quantizer,
        decoder=decoder,
        encoder_options=e_opts,
        quantizer_options=q_opts,
        decoder_options=d_opts,
        channels=channels,
        image_size=image_size,
        latent_dim=dim,
        codebook_size=int(q.codebook_size),
        origins={
            "encoder": e_entry.distribution,
            "quantizer": q_entry.distribution,
            "decoder": d_entry.distribution,
        },
    )
    _dry_run(enc, dec, spec)
    return VQVAE(enc, q, dec, spec)


def build_from_spec(spec: ModelSpec) -> VQVAE:
    """Rebuild the (untrained) model a spec describes."""
    return build_model(
        spec.encoder,
        spec.quantizer,
        spec.decoder,
        channels=spec.channels,
        image_size=spec.image_size,
        latent_dim=spec.latent_dim,
        codebook_size=spec.codebook_size,
        encoder_options=spec.encoder_options,
        quantizer_options=spec.quantizer_options,
        decoder_options=spec.decoder_options,
    )
