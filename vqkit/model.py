"""The VQ-VAE: an encoder, a quantizer and a decoder, built by name from the registries."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vqkit import checks, pixels, presets
from vqkit._version import __version__
from vqkit.contracts import Quantized
from vqkit.discovery import load_plugins
from vqkit.errors import OptionError, ShapeError, VQKitError
from vqkit.options import validate_options
from vqkit.registry import REGISTRIES, Entry, decoders, encoders
from vqkit.spec import (
    DEFAULT_CHANNELS,
    DEFAULT_ENCODER,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_QUANTIZER,
    PARTS,
    SPEC_FORMAT,
    ModelSpec,
    spec_problem,
)

__all__ = ["SPEC_FORMAT", "VQVAE", "ModelSpec", "VQVAEOutput", "build_from_spec", "build_model"]

# Float images a little outside [-1, 1] (rounding in a user's own conversion) are accepted, as by the runtime.
FLOAT_RANGE_TOLERANCE = 1e-3


@dataclass
class VQVAEOutput:
    """What a training forward pass gives: the reconstruction and the quantizer's output (its auxiliary loss
    included). The reconstruction loss is the trainer's objectives' (``vqkit.objectives``), not the model's."""

    reconstruction: torch.Tensor
    quantized: Quantized


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
        return VQVAEOutput(self.decoder(q.z_q), q)

    def _device(self) -> torch.device:
        tensor = next(itertools.chain(self.parameters(), self.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def images_to_model(self, images: Any, *, check: bool = True) -> tuple[torch.Tensor, bool]:
        """Any accepted image input -> float ``[B, C, H, W]`` in [-1, 1] on the model's device, and whether it
        was one image.

        The torch side of vqkit has one layout, channels first, whatever the dtype:

        - uint8 pixels 0..255: ``[C, H, W]`` or ``[B, C, H, W]``, what ``vqkit.data.load_images`` and
          ``torchvision.io.read_image`` give (``[H, W]`` for one channel);
        - floats in [-1, 1]: ``[C, H, W]`` or ``[B, C, H, W]``.

        uint8 pixels channels last (``[H, W, C]``, ``[B, H, W, C]``: what Pillow, OpenCV and the numpy runtime
        :class:`vqkit.runtime.Tokenizer` take) are accepted too when the shape says so: the channel axis is
        the one of size C. A shape that fits both (the size at the channels-first place and the last size
        both equal C, e.g. ``[3, 32, 3]``) is read channels first, the convention.

        With ``check``, floats outside [-1, 1] (beyond a small tolerance), NaN or infinity are refused."""
        x = images if isinstance(images, torch.Tensor) else torch.as_tensor(images)
        if x.dtype == torch.uint8:
            x, single = uint8_channels_first(x, self.spec.channels)
            return pixels.to_float(x.to(self._device())), single
        if not x.dtype.is_floating_point:
            raise ShapeError(
                f"images must be uint8 (0..255, [B,] H, W, C) or float ([-1, 1], [B,] C, H, W), got {x.dtype}"
            )
        single = x.dim() == 3
        x = x[None] if single else x
        if check and x.numel():
            lo, hi = float(x.min()), float(x.max())
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ShapeError("float images contain NaN or infinity")
            if lo < -1 - FLOAT_RANGE_TOLERANCE or hi > 1 + FLOAT_RANGE_TOLERANCE:
                raise ShapeError(
                    f"float images must lie in [-1, 1], got values from {lo:g} to {hi:g} "
                    f"(pass uint8 for 0..255 pixels)"
                )
        return x.to(self._device()), single

    @torch.no_grad()
    def encode(self, x: Any, *, check: bool = True) -> torch.Tensor:
        """Images -> int64 codes ``[B, h, w]`` (or ``[B, h, w, S]``); one image -> codes without the batch axis.

        Takes uint8 pixels (0..255) or floats in [-1, 1], channels first, as :meth:`images_to_model` says
        (channels-last uint8 is taken too); ``check=False`` skips the checks (and their device syncs)."""
        x, single = self.images_to_model(x, check=check)
        if check:
            self.check_images(x)
        codes = self.quantizer.quantize(self.encoder(x))
        return codes[0] if single else codes

    @torch.no_grad()
    def decode(self, indices: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Codes -> images ``[B, C, H, W]`` in [-1, 1]; one image's codes without the batch axis (shaped
        exactly :attr:`codes_shape`) -> ``[C, H, W]``."""
        indices = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(indices)
        single = tuple(indices.shape) == self.codes_shape
        indices = indices[None] if single else indices
        if check:
            self.check_codes(indices)
        images = self.decoder(self.quantizer.dequantize(indices.long().to(self._device())))
        return images[0] if single else images

    # --- description -------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """A JSON-ready description: per part its name, user-set and resolved options, version and parameter
        count; then sizes, grid and code budget."""

        def count(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())

        h, w = self.grid
        resolved = self.resolved_options
        parts = {
            part: {
                "name": getattr(self.spec, part),
                "options": getattr(self.spec, f"{part}_options"),  # as the user set them
                "resolved_options": resolved[part],  # every option, defaults included
                "version": self.spec.versions.get(part),
                "parameters": count(getattr(self, part)),
            }
            for part in PARTS
        }
        return {
            **parts,
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

    @property
    def resolved_options(self) -> dict[str, dict[str, Any]]:
        """Every option of each part as the model was built with it, defaults included:
        ``{"encoder": {...}, "quantizer": {...}, "decoder": {...}}`` (a copy)."""
        return {part: dict(self.spec.options(part)) for part in PARTS}

    def describe(self) -> str:
        """A human-readable summary: components with all their options, parameters, shapes, code budget."""
        info = self.summary()
        resolved = self.resolved_options
        lines = []
        for part in PARTS:
            shown = " ".join(f"{k}={v!r}" for k, v in resolved[part].items())
            lines.append(
                f"{part:<10} {info[part]['name']:<12} {info[part]['parameters']:>12,} params  {shown}".rstrip()
            )
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


def uint8_channels_first(x: torch.Tensor, channels: int) -> tuple[torch.Tensor, bool]:
    """uint8 images in the layouts :meth:`VQVAE.images_to_model` accepts -> ``[B, C, H, W]`` and whether
    it was one image: channels first when the size at ``-3`` is ``channels``, else channels last when the
    last size is, else a :class:`ShapeError` saying what was expected."""
    if x.dim() == 2 and channels == 1:
        x = x[None]
    if x.dim() not in (3, 4):
        raise ShapeError(
            f"uint8 images must be [C, H, W] or [B, C, H, W] (channels last also taken), got shape {list(x.shape)}"
        )
    single = x.dim() == 3
    x = x[None] if single else x
    if x.shape[1] == channels:
        return x, single
    if x.shape[-1] == channels:
        return x.permute(0, 3, 1, 2), single
    raise ShapeError(
        f"expected {channels}-channel uint8 images [B, {channels}, H, W], got shape {list(x.shape)}"
    )


def default_decoder(encoder: str) -> str:
    load_plugins()
    encoders.entry(encoder)  # an unknown encoder is the clearer error
    if encoder in decoders:
        return encoder
    raise OptionError(
        f"no decoder is named like encoder {encoder!r}; choose one with the decoder setting "
        f"(available decoders: {', '.join(decoders.names()) or 'none'})"
    )


def component_version(entry: Entry) -> str | None:
    """The version of the code behind a registered component: vqkit's for its built-ins, the plugin
    distribution's for an installed plugin, None for a plugin file or module (no version to record)."""
    module = str(getattr(entry.obj, "__module__", "") or "")
    if module == "vqkit" or module.startswith("vqkit."):
        return __version__
    distribution = getattr(entry, "distribution", None)
    if isinstance(distribution, str) and "==" in distribution:
        return distribution.split("==", 1)[1]
    return None


def _json_form(value: Any) -> tuple[bool, Any]:
    """(whether ``value`` can be written to a spec, its JSON form: tuples become lists)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return True, value
    if isinstance(value, (list, tuple)):
        forms = [_json_form(v) for v in value]
        return all(ok for ok, _ in forms), [v for _, v in forms]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        forms = {k: _json_form(v) for k, v in value.items()}
        return all(ok for ok, _ in forms.values()), {k: v for k, (_, v) in forms.items()}
    return False, None


def resolve_options(entry: Entry, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of a component: its signature's defaults with the validated ``options`` on top, in JSON
    form. A default that JSON cannot hold (an object) is left out: the constructor's own default applies."""
    resolved: dict[str, Any] = {}
    for opt in entry.options:
        given = opt.name in options
        value = options[opt.name] if given else opt.default
        if not given and opt.required:
            continue
        ok, form = _json_form(value)
        if ok:
            resolved[opt.name] = form
    for name, value in options.items():  # options a **kwargs component accepts beyond its signature
        if name not in resolved:
            resolved[name] = _json_form(value)[1]
    return resolved


def _construct(kind: str, name: str, obj: Any, *args: Any, **options: Any) -> nn.Module:
    try:
        return obj(*args, **options)
    except VQKitError:
        raise
    except (ValueError, AssertionError) as exc:
        raise OptionError(f"{kind} {name!r} rejected its settings: {exc}") from exc


def _check_sizes(fields: dict[str, Any]) -> None:
    """Sizes against the spec's limits; ``latent_dim``/``codebook_size`` None are the quantizer's choice."""
    fields = {k: v for k, v in fields.items() if v is not None or k in ("channels", "image_size")}
    problem = spec_problem(fields)
    if problem:
        first = problem.split()[0]
        raise OptionError(problem, param=first if first in fields else None)


def _check_build_args(names: dict[str, Any], options: dict[str, Any], seed: Any) -> None:
    """The types of build_model's arguments (sizes are checked with the spec's limits, values by each
    component), so a wrong one is an :class:`OptionError` naming it rather than a TypeError from inside."""
    for name, value in names.items():
        if value is not None:
            checks.text(value, name)
    for name, value in options.items():
        checks.mapping(value, name)
    checks.optional_seed(seed)


def resolve_names(
    encoder: str | None = None,
    quantizer: str | None = None,
    decoder: str | None = None,
    *,
    preset: str | None = None,
    latent_dim: int | None = None,
    codebook_size: int | None = None,
    encoder_options: dict[str, Any] | None = None,
    quantizer_options: dict[str, Any] | None = None,
    decoder_options: dict[str, Any] | None = None,
) -> tuple[dict[str, str], dict[str, dict[str, Any]], dict[str, Any]]:
    """The component names (defaults and preset applied) and each part's validated options, constructing
    nothing: an unknown name or option is an :class:`OptionError` in milliseconds, so a command can check
    what it was asked for before it reads any data. Returns ``(names, options per part, merged settings)``."""
    names = {"encoder": encoder, "quantizer": quantizer, "decoder": decoder, "preset": preset}
    parts = {"encoder_options": encoder_options, "quantizer_options": quantizer_options}
    parts["decoder_options"] = decoder_options
    _check_build_args(names, parts, None)
    load_plugins()
    given = {"encoder": encoder, "quantizer": quantizer, "decoder": decoder}
    given.update(parts, latent_dim=latent_dim, codebook_size=codebook_size)
    settings = presets.apply(preset, given)
    _check_sizes({k: settings.get(k) for k in ("latent_dim", "codebook_size")})
    first = settings.get("encoder") or DEFAULT_ENCODER
    chosen = {
        "encoder": first,
        "quantizer": settings.get("quantizer") or DEFAULT_QUANTIZER,
        "decoder": settings.get("decoder") or default_decoder(first),
    }
    for part in PARTS:
        if not isinstance(settings[f"{part}_options"], dict):
            raise OptionError(f"{part}_options must be a dict of option names to values")
    user = {
        part: validate_options(REGISTRIES[part].entry(chosen[part]), settings[f"{part}_options"])
        for part in PARTS
    }
    if not settings.get("decoder"):
        _mirror(user, REGISTRIES["decoder"].entry(chosen["decoder"]).obj)
    return chosen, user, settings


def build_model(
    encoder: str | None = None,
    quantizer: str | None = None,
    decoder: str | None = None,
    *,
    preset: str | None = None,
    channels: int = DEFAULT_CHANNELS,
    image_size: int = DEFAULT_IMAGE_SIZE,
    latent_dim: int | None = None,
    codebook_size: int | None = None,
    encoder_options: dict[str, Any] | None = None,
    quantizer_options: dict[str, Any] | None = None,
    decoder_options: dict[str, Any] | None = None,
    seed: int | None = None,
) -> VQVAE:
    """Build a VQ-VAE from registered components.

    With nothing set, every component takes its own defaults, the recommended model: ``conv3`` encoder and
    decoder, ``vq`` with k-means init and dead-code restarts. ``preset`` names a configuration from
    :mod:`vqkit.presets` (``"original"``: the original VQ-VAE's uniform codebook init, no restarts and
    transposed-conv decoder head); what is set explicitly overrides it. ``latent_dim``/``codebook_size`` left
    as ``None`` take the quantizer's defaults (or what it fixes itself); the quantizer's resulting ``dim`` is
    given to encoder and decoder. ``decoder=None``: the decoder named like the encoder. ``seed`` makes
    initial weights repeatable.
    """
    checks.optional_seed(seed)
    _check_sizes({"channels": channels, "image_size": image_size})
    names, user, settings = resolve_names(
        encoder,
        quantizer,
        decoder,
        preset=preset,
        latent_dim=latent_dim,
        codebook_size=codebook_size,
        encoder_options=encoder_options,
        quantizer_options=quantizer_options,
        decoder_options=decoder_options,
    )
    spec = ModelSpec(
        **names,
        encoder_options=user["encoder"],
        quantizer_options=user["quantizer"],
        decoder_options=user["decoder"],
        channels=channels,
        image_size=image_size,
        latent_dim=settings.get("latent_dim"),  # type: ignore[arg-type]
        codebook_size=settings.get("codebook_size"),  # type: ignore[arg-type]
    )
    return _build(spec, user, seed=seed)


def _mirror(user: dict[str, dict[str, Any]], decoder_cls: Any) -> None:
    """A decoder built as the encoder's mirror (none named) takes the encoder's options it lists in its
    ``mirror_options`` (``resnet``: downsample, widths, ...), unless the decoder's own were set."""
    for key in getattr(decoder_cls, "mirror_options", ()):
        if key in user["encoder"] and key not in user["decoder"]:
            user["decoder"][key] = user["encoder"][key]


def _build(
    spec: ModelSpec, options: dict[str, dict[str, Any]], *, seed: int | None, dry_run: bool = True
) -> VQVAE:
    """Construct the parts ``spec`` names with the validated ``options`` (per part); ``spec.latent_dim`` and
    ``spec.codebook_size`` may be None (the quantizer's choice). Returns the model with its complete spec."""
    entries = {part: REGISTRIES[part].entry(getattr(spec, part)) for part in PARTS}
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        q, enc, dec = _construct_parts(spec, entries, options)
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    spec.latent_dim, spec.codebook_size = int(q.dim), int(q.codebook_size)
    spec.resolved_options = {part: resolve_options(entries[part], options[part]) for part in PARTS}
    spec.versions = {part: component_version(entries[part]) for part in PARTS}
    spec.origins = {part: entries[part].distribution for part in PARTS}
    spec.vqkit_version, spec.format = __version__, SPEC_FORMAT
    if dry_run:
        from vqkit.dryrun import dry_run as check_parts

        check_parts(enc, q, dec, spec)
    return VQVAE(enc, q, dec, spec)


def _construct_parts(
    spec: ModelSpec, entries: dict[str, Entry], options: dict[str, dict[str, Any]]
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """quantizer, encoder, decoder (in this order: the quantizer settles the latent dim)."""
    latent_dim, codebook_size = spec.latent_dim, spec.codebook_size
    q = _construct(
        "quantizer",
        spec.quantizer,
        entries["quantizer"].obj,
        latent_dim,
        codebook_size,
        **options["quantizer"],
    )
    dim = int(q.dim)
    if latent_dim is not None and dim != latent_dim:
        raise OptionError(
            f"quantizer {spec.quantizer!r} fixes its latent dim to {dim}; leave latent_dim unset (got {latent_dim})"
        )
    enc = _construct(
        "encoder", spec.encoder, entries["encoder"].obj, spec.channels, dim, **options["encoder"]
    )
    factor = getattr(enc, "downsample", None)
    if not isinstance(factor, int) or factor < 1:
        raise VQKitError(
            f"encoder {spec.encoder!r} does not say its downsample factor (an int attribute `downsample`)"
        )
    if spec.image_size % factor:
        raise ShapeError(
            f"image size {spec.image_size} is not divisible by encoder {spec.encoder!r}'s downsample factor "
            f"{factor}; use a multiple of {factor}"
        )
    dec = _construct(
        "decoder", spec.decoder, entries["decoder"].obj, dim, spec.channels, **options["decoder"]
    )
    return q, enc, dec


def _spec_options(spec: ModelSpec) -> dict[str, dict[str, Any]]:
    """The options a stored spec's parts are rebuilt with, validated: every resolved option it recorded (a
    spec from before resolved options were recorded takes today's defaults for the rest, except the options a
    component lists in its ``legacy_options``: added later, they take the value that rebuilds the older model
    as it was)."""
    out = {}
    for part in PARTS:
        entry = REGISTRIES[part].entry(getattr(spec, part))
        recorded = spec.options(part)
        legacy = getattr(entry.obj, "legacy_options", None) or {}
        out[part] = validate_options(entry, {**legacy, **recorded})
    return out


def build_from_spec(spec: ModelSpec, *, seed: int | None = None, dry_run: bool = True) -> VQVAE:
    """Rebuild the (untrained) model a spec describes, with the options it recorded.

    The returned model's spec keeps ``spec``'s user-set options and records the resolved ones anew."""
    if not isinstance(spec, ModelSpec):
        raise OptionError(f"spec must be a vqkit ModelSpec, got {type(spec).__name__}", param="spec")
    checks.optional_seed(seed)
    load_plugins()
    problem = spec_problem(vars(spec))
    if problem:
        raise OptionError(problem)
    rebuilt = ModelSpec(**{**vars(spec), "value_range": tuple(spec.value_range)})
    return _build(rebuilt, _spec_options(spec), seed=seed, dry_run=dry_run)


def expected_state_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors a model built from ``spec`` holds, found by building it on the
    ``meta`` device (no memory is allocated, whatever sizes the spec asks for)."""
    options = _spec_options(spec)
    entries = {part: REGISTRIES[part].entry(getattr(spec, part)) for part in PARTS}
    with torch.device("meta"):
        q, enc, dec = _construct_parts(spec, entries, options)
    parts = {"encoder": enc, "quantizer": q, "decoder": dec}
    return {f"{p}.{k}": tuple(v.shape) for p, m in parts.items() for k, v in m.state_dict().items()}
