"""Conformance checks for vqkit components: call them from a plugin's own tests.

    from vqkit.testing import check_encoder, check_decoder, check_quantizer

    def test_my_quantizer():
        check_quantizer(MyQuantizer, dim=8)

They are the same checks every built-in passes in vqkit's own test suite: the contract (shapes, dtypes,
``downsample``/``upsample``, an optional ``recommended_lr``, ``dim``, ``codebook_size``, ``num_codebooks``,
index range), gradient flow to the input, determinism and purity of ``quantize``, agreement of
``forward``/``quantize``/``dequantize`` in eval mode, a save/load round trip through
:func:`vqkit.save`/:func:`vqkit.load`, and ONNX export parity through the ``onnx`` exporter. A failure
raises :class:`AssertionError` saying what the contract wanted.

For quantizers also: codes ``[B, h, w]`` with one codebook and ``[B, h, w, S]`` with S; the search in fp32
under bf16 autocast (the same codes as in fp32); ``codes_used``/``perplexity`` stats, when given, describe
the batch's codes (the mean over codebooks when there are several).

``preserved_state()`` isolates a test that registers components or loads plugins: everything registered or
loaded inside ``with preserved_state():`` is gone after it.

Each check builds the component with small sizes, so a whole run takes seconds on a CPU. To put the
component in a full model (for the round trip and the export) it is paired with tiny reference parts that
live here, so the checks depend on no other plugin.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqkit import checks
from vqkit.codebook import nearest_code
from vqkit.contracts import Quantized, channels_last_flat, unflatten_channels_first
from vqkit.discovery import preserved_state
from vqkit.errors import OptionError
from vqkit.registry import REGISTRIES

__all__ = ["ConformanceWarning", "check_decoder", "check_encoder", "check_quantizer", "preserved_state"]

SEED = 1234
# Eval-mode outputs computed two ways (batched vs alone, forward vs dequantize) may differ by float rounding.
ATOL = 1e-5
ONNX_IMAGES = 8  # held-out images the export parity check runs; few, to keep a conformance run fast
_counter = itertools.count()


class ConformanceWarning(UserWarning):
    """A check that could not run (outside pytest; under pytest the test is skipped with the reason)."""


# --- reference parts: the smallest components that obey the contract ---------------------------------------
class _RefEncoder(nn.Module):
    """One conv with kernel = stride = factor."""

    def __init__(self, in_channels: int, latent_dim: int, factor: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, latent_dim, kernel_size=factor, stride=factor)
        self.downsample = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _RefDecoder(nn.Module):
    """One transposed conv with kernel = stride = factor, then tanh."""

    def __init__(self, latent_dim: int, out_channels: int, factor: int = 1) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(latent_dim, out_channels, kernel_size=factor, stride=factor)
        self.upsample = factor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(z))


class _RefQuantizer(nn.Module):
    """Nearest code with a commitment loss and straight-through gradients."""

    num_codebooks = 1

    def __init__(self, dim: int | None = None, codebook_size: int | None = None) -> None:
        super().__init__()
        self.dim, self.codebook_size = int(dim or 8), int(codebook_size or 16)
        self.codebook = nn.Parameter(torch.randn(self.codebook_size, self.dim))

    def forward(self, z: torch.Tensor) -> Quantized:
        indices = self.quantize(z)
        z_q = self.dequantize(indices)
        loss = F.mse_loss(z_q, z.detach()) + 0.25 * F.mse_loss(z, z_q.detach())
        return Quantized(z + (z_q - z).detach(), indices, loss, {})

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        return nearest_code(channels_last_flat(z), self.codebook).reshape(b, h, w)

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        b, h, w = indices.shape
        return unflatten_channels_first(self.codebook[indices.reshape(-1)], b, h, w)


# --- helpers --------------------------------------------------------------------------------------------
def _name(cls: Any) -> str:
    return getattr(cls, "__qualname__", None) or getattr(cls, "__name__", None) or repr(cls)


class _Checker:
    """Collects the subject's name so every failure message starts with what was being checked."""

    def __init__(self, check: str, cls: Any) -> None:
        self.prefix = f"{check}({_name(cls)})"

    def fail(self, message: str) -> None:
        raise AssertionError(f"{self.prefix}: {message}")

    def require(self, condition: bool, message: str | Callable[[], str]) -> None:
        if not condition:
            self.fail(message() if callable(message) else message)

    def build(self, cls: Any, *args: Any, **options: Any) -> nn.Module:
        shown = ", ".join([*(repr(a) for a in args), *(f"{k}={v!r}" for k, v in options.items())])
        try:
            module = cls(*args, **options)
        except Exception as exc:
            self.fail(f"constructing {_name(cls)}({shown}) raised {type(exc).__name__}: {exc}")
        self.require(
            isinstance(module, nn.Module),
            f"{_name(cls)}({shown}) returned {type(module).__name__}, not nn.Module",
        )
        return module

    def call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            shapes = ", ".join(f"{list(a.shape)} {a.dtype}" for a in args if isinstance(a, torch.Tensor))
            self.fail(f"{what} raised {type(exc).__name__} for input {shapes}: {exc}")

    def tensor(self, what: str, t: Any, shape: tuple[int, ...], dtype: torch.dtype, contract: str) -> None:
        self.require(
            isinstance(t, torch.Tensor), f"{what} is {type(t).__name__}; the contract wants a tensor"
        )
        self.require(
            tuple(t.shape) == shape and t.dtype == dtype,
            lambda: (
                f"{what} is {list(t.shape)} {t.dtype}; the contract wants {list(shape)} {dtype} ({contract})"
            ),
        )
        if t.dtype.is_floating_point:
            self.require(bool(torch.isfinite(t).all()), f"{what} has NaN or infinite values")


def _images(n: int, c: int, size: int, seed: int = SEED) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


def _randn(*shape: int, seed: int = SEED) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    after = module.state_dict()
    return [k for k in before if k not in after or not torch.equal(before[k], after[k])]


def _check_input_gradient(ck: _Checker, what: str, x: torch.Tensor, out: torch.Tensor) -> None:
    weights = _randn(*out.shape, seed=SEED + 1)
    (grad,) = torch.autograd.grad((out * weights).sum(), x, allow_unused=True)
    ck.require(
        grad is not None and bool(grad.abs().sum() > 0),
        f"no gradient flows from {what} back to its input; training needs d(output)/d(input) "
        "(do not detach, argmax or round without a straight-through estimator)",
    )
    ck.require(bool(torch.isfinite(grad).all()), f"the gradient from {what} to its input has NaN/inf values")


def _check_eval_determinism(ck: _Checker, what: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        first = ck.call(what, module, x)
        again = ck.call(what, module, x)
        alone = ck.call(what, module, x[:1])
    ck.require(
        torch.equal(first, again),
        f"{what} in eval mode gave different outputs for the same input; exported graphs must be deterministic",
    )
    ck.require(
        torch.allclose(alone, first[:1], atol=ATOL),
        f"{what} in eval mode gives a different result for an image alone than in a batch of {len(x)}; "
        "samples must not affect each other (exported graphs have a dynamic batch axis)",
    )
    return first


@contextlib.contextmanager
def _registered(**parts: Any) -> Iterator[dict[str, str]]:
    """Register each part under a fresh name for the duration of the block (and take them back)."""
    names = {kind: f"vqkit-testing-{kind}-{next(_counter)}" for kind in parts}
    try:
        for kind, obj in parts.items():
            REGISTRIES[kind].commit(names[kind], obj, origin="vqkit.testing")
        yield names
    finally:
        for kind, name in names.items():
            REGISTRIES[kind].remove(name)


def _check_recommended_lr(ck: _Checker, module: nn.Module) -> None:
    lr = getattr(module, "recommended_lr", None)
    ok = True
    if lr is not None:
        try:  # the check the trainer makes of it (vqkit.training.setup.model_lr)
            checks.number(lr, "recommended_lr", minimum=0, open_min=True)
        except OptionError:
            ok = False
    ck.require(ok, f"its `recommended_lr` must be None or a positive number (a peak Adam lr), got {lr!r}")


def _train_a_little(model: nn.Module, images: torch.Tensor) -> None:
    """Two optimizer steps in train mode, so parameters and quantizer buffers (EMA statistics, k-means init,
    usage counters) hold trained values rather than their initial ones before the round trip."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05) if params else None
    for _ in range(2):
        out = model(images)
        loss = torch.nn.functional.mse_loss(out.reconstruction.float(), images.float()) + out.quantized.loss
        if opt is not None and loss.requires_grad:
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def _round_trip(ck: _Checker, part: str, cls: Any, build: dict[str, Any], images: torch.Tensor) -> Any:
    """Build a model around the subject, train it a little, save and load it through the model file, and
    check the loaded model computes exactly what the saved one did. Returns the (trained) model."""
    import vqkit

    onnx = build.pop("onnx", "auto")
    vqkit.load_plugins()  # before registering anything temporary: plugins must not load inside the block
    reference = {"encoder": _RefEncoder, "quantizer": _RefQuantizer, "decoder": _RefDecoder}
    reference[part] = cls
    with _registered(**reference) as names, torch.random.fork_rng(), tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(SEED)
        try:
            model = vqkit.build_model(names["encoder"], names["quantizer"], names["decoder"], **build)
        except vqkit.VQKitError as exc:
            ck.fail(f"vqkit.build_model could not use it: {exc}")
        try:
            model.spec.to_json()
        except (TypeError, ValueError) as exc:
            ck.fail(f"its options must be JSON values (they are stored in the model file): {exc}")
        _train_a_little(model, images)
        with torch.no_grad():
            codes = model.encode(images)
            recon = model.decode(codes)
        path = Path(tmp) / "model.safetensors"
        vqkit.save(model, path)
        try:
            loaded = vqkit.load(path)
        except vqkit.VQKitError as exc:
            ck.fail(f"the saved model does not load back: {exc}")
        missing = _changed(_state(model), loaded)
        ck.require(not missing, f"state differs after save/load: {missing}")
        with torch.no_grad():
            ck.require(
                torch.equal(loaded.encode(images), codes),
                "a model saved and loaded again encodes differently; all state that affects the output must "
                "be parameters or registered buffers (it is what the model file stores)",
            )
            ck.require(
                torch.allclose(loaded.decode(codes), recon, atol=ATOL),
                "a model saved and loaded again decodes differently; all state that affects the output must "
                "be parameters or registered buffers (it is what the model file stores)",
            )
        if onnx is not False:
            _check_onnx(ck, model, images, required=onnx is True)
        return model


def _skip(reason: str) -> None:
    if "pytest" in sys.modules:
        import pytest

        pytest.skip(reason)
    warnings.warn(reason, ConformanceWarning, stacklevel=3)


def _check_onnx(ck: _Checker, model: Any, images: torch.Tensor, required: bool) -> None:
    """Export through the ``onnx`` exporter with its parity check (exact codes, decoder within 1e-5) on a
    few held-out images of the built-in dataset."""
    from vqkit.errors import VQKitError
    from vqkit.registry import exporters

    if "onnx" not in exporters:
        ck.require(not required, "onnx=True, but no 'onnx' exporter is registered in this vqkit")
        _skip(
            "ONNX export parity not checked: no 'onnx' exporter is registered in this vqkit "
            "(every other conformance check passed)"
        )
        return
    from vqkit.export import ParityError, export

    with tempfile.TemporaryDirectory() as tmp:
        try:
            export(model, Path(tmp) / "export", format="onnx", num_images=ONNX_IMAGES)
        except ParityError as exc:
            ck.fail(
                "the ONNX export does not reproduce PyTorch (quantize/dequantize and the networks must be "
                f"traceable by torch.export without data-dependent Python control flow): {exc}\n"
                + exc.report.format()
            )
        except VQKitError as exc:
            ck.fail(
                f"the ONNX export failed: {exc} (quantize/dequantize and the networks must be traceable by "
                "torch.onnx.export(dynamo=True); write distances as |z|^2 - 2 z.e + |e|^2, not torch.cdist)"
            )
    del images  # the exporter checks on its own held-out images


# --- the public checks ------------------------------------------------------------------------------------
def check_encoder(
    cls: Callable[..., nn.Module],
    *,
    in_channels: int = 3,
    latent_dim: int = 8,
    image_size: int = 32,
    onnx: bool | str = "auto",
    **options: Any,
) -> None:
    """Check an encoder class against the contract: ``cls(in_channels, latent_dim, **options)`` maps images
    ``[B, C, H, W]`` in [-1, 1] to latents ``[B, latent_dim, H/f, W/f]`` with ``f = .downsample``.

    ``onnx``: ``"auto"`` checks export parity when an ``onnx`` exporter is registered (else skips with the
    reason), ``True`` requires it, ``False`` leaves it out.
    """
    ck = _Checker("check_encoder", cls)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        for channels in sorted({in_channels, 1}):  # 1 too: grayscale data (MNIST) is common
            enc = ck.build(cls, channels, latent_dim, **options)
            _check_recommended_lr(ck, enc)
            f = getattr(enc, "downsample", None)
            ck.require(
                isinstance(f, int) and not isinstance(f, bool) and f >= 1,
                f"it must say its downsample factor as a positive int attribute `downsample`, got {f!r}",
            )
            ck.require(
                image_size % f == 0,
                f"image_size={image_size} is not a multiple of its downsample factor {f}; pass image_size=",
            )
            s = image_size // f
            x = _images(2, channels, image_size).requires_grad_(True)
            enc.train()
            z = ck.call("forward", enc, x)
            ck.tensor(
                "its output",
                z,
                (2, latent_dim, s, s),
                torch.float32,
                f"[B, latent_dim, H/{f}, W/{f}] for images [2, {channels}, {image_size}, {image_size}]",
            )
            _check_input_gradient(ck, "the latents", x, z)
            enc.eval()
            _check_eval_determinism(ck, "forward", enc, x.detach())
        build = dict(
            channels=in_channels,
            image_size=image_size,
            latent_dim=latent_dim,
            codebook_size=16,
            encoder_options=options,
            decoder_options={"factor": f},
            onnx=onnx,
        )
        _round_trip(ck, "encoder", cls, build, _images(2, in_channels, image_size).detach())


def check_decoder(
    cls: Callable[..., nn.Module],
    *,
    latent_dim: int = 8,
    out_channels: int = 3,
    grid: int = 4,
    onnx: bool | str = "auto",
    **options: Any,
) -> None:
    """Check a decoder class against the contract: ``cls(latent_dim, out_channels, **options)`` maps latents
    ``[B, latent_dim, h, w]`` to images ``[B, out_channels, h*f, w*f]`` in [-1, 1], ``f = .upsample``.

    ``grid`` is the latent grid's side. ``onnx`` as in :func:`check_encoder`.
    """
    ck = _Checker("check_decoder", cls)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        for channels in sorted({out_channels, 1}):
            dec = ck.build(cls, latent_dim, channels, **options)
            _check_recommended_lr(ck, dec)
            z = _randn(2, latent_dim, grid, grid).requires_grad_(True)
            dec.train()
            y = ck.call("forward", dec, z)
            ck.require(isinstance(y, torch.Tensor) and y.dim() == 4, "its output must be images [B, C, H, W]")
            f = getattr(dec, "upsample", None)
            if f is None:  # optional in the contract: infer it, and require it to be a whole number
                f = y.shape[-1] // grid
                ck.require(
                    f >= 1 and y.shape[-1] == y.shape[-2] == grid * f,
                    f"latents {grid}x{grid} became images {y.shape[-2]}x{y.shape[-1]}; the contract wants "
                    "an integer upsampling factor, the same in height and width",
                )
            ck.require(
                isinstance(f, int) and not isinstance(f, bool) and f >= 1,
                f"its `upsample` attribute must be a positive int, got {f!r}",
            )
            size = grid * f
            ck.tensor(
                "its output",
                y,
                (2, channels, size, size),
                torch.float32,
                f"[B, out_channels, h*{f}, w*{f}] for latents [2, {latent_dim}, {grid}, {grid}]",
            )
            low, high = float(y.detach().min()), float(y.detach().max())
            ck.require(
                low >= -1 - 1e-6 and high <= 1 + 1e-6,
                f"its images range over [{low:.3g}, {high:.3g}]; the contract wants values in [-1, 1] "
                "(end with tanh or a clamp)",
            )
            _check_input_gradient(ck, "the images", z, y)
            dec.eval()
            _check_eval_determinism(ck, "forward", dec, z.detach())
        build = dict(
            channels=out_channels,
            image_size=size,
            latent_dim=latent_dim,
            codebook_size=16,
            encoder_options={"factor": f},
            decoder_options=options,
            onnx=onnx,
        )
        _round_trip(ck, "decoder", cls, build, _images(2, out_channels, size))


def _build_quantizer(
    ck: _Checker, cls: Any, dim: int | None, codebook_size: int | None, options: dict[str, Any]
) -> tuple[nn.Module, int | None, int | None]:
    """``cls(dim, codebook_size, **options)``. A quantizer that fixes its own dim or codebook size (FSQ, LFQ)
    may reject the one offered, as the builder allows: then it is built with ``None`` for it, as
    ``vqkit build`` does when not told. Returns the quantizer and the (dim, codebook_size) it took."""
    tries = [(dim, codebook_size), (None, codebook_size), (dim, None), (None, None)]
    for d, k in dict.fromkeys(tries):  # in order, without repeats
        try:
            return cls(d, k, **options), d, k
        except Exception:
            continue
    ck.build(cls, dim, codebook_size, **options)  # fails, reporting the error for what was asked
    raise AssertionError("unreachable")


def check_quantizer(
    cls: Callable[..., nn.Module],
    dim: int | None = 8,
    *,
    codebook_size: int | None = None,
    onnx: bool | str = "auto",
    **options: Any,
) -> None:
    """Check a quantizer class against the contract: ``cls(dim, codebook_size, **options)`` with ``dim``,
    ``codebook_size``, ``num_codebooks``; ``forward(z) -> Quantized``; pure ``quantize``/``dequantize``.

    ``codebook_size=None`` lets the quantizer pick its default, as ``vqkit build`` does when not told.
    ``onnx`` as in :func:`check_encoder`.
    """
    ck = _Checker("check_quantizer", cls)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        q, dim_arg, size_arg = _build_quantizer(ck, cls, dim, codebook_size, options)
        ck.require(isinstance(q, nn.Module), f"{_name(cls)}(...) must return an nn.Module")
        d, codes = _check_quantizer_attributes(ck, q, dim_arg, size_arg)
        # The first batch has more latents than codes, as in real training (k-means init on fewer would
        # repeat codes).
        rows = max(64, 2 * codes.k)
        _check_training_path(ck, q, _randn(2, d, 4, -(-rows // 8)), codes)  # non-square: catches h/w mix-ups
        z = _randn(2, d, 3, 5, seed=SEED + 2)
        _check_eval_agreement(ck, q, z, _check_inference_path(ck, q, z, codes))
        _check_bf16_autocast(ck, q, z, codes)
        _check_dequantize_range(ck, q, z, codes)
        build = dict(
            channels=1,
            image_size=16,
            latent_dim=dim_arg,
            codebook_size=size_arg,
            encoder_options={"factor": 2},
            quantizer_options=options,
            decoder_options={"factor": 2},
            onnx=onnx,
        )
        _round_trip(ck, "quantizer", cls, build, _images(-(-rows // 64), 1, 16))  # an 8x8 grid each


@dataclass(frozen=True)
class _Codes:
    """What the contract wants of a quantizer's codes: ``[B, h, w]`` with one codebook, ``[B, h, w, S]``
    with S, each in ``[0, k)``."""

    k: int
    s: int

    @property
    def contract(self) -> str:
        if self.s == 1:
            return "int64 [B, h, w]: one codebook, so no codebook axis (not [B, h, w, 1])"
        return f"int64 [B, h, w, num_codebooks={self.s}]"

    def shape(self, z: torch.Tensor) -> tuple[int, ...]:
        b, _, h, w = z.shape
        return (b, h, w) if self.s == 1 else (b, h, w, self.s)

    def check(self, ck: _Checker, what: str, codes: Any, z: torch.Tensor) -> None:
        ck.tensor(what, codes, self.shape(z), torch.int64, self.contract)
        _check_range(ck, what, codes, self.k)


def _check_quantizer_attributes(
    ck: _Checker, q: nn.Module, dim_arg: int | None, size_arg: int | None
) -> tuple[int, _Codes]:
    d, k, s = (getattr(q, a, None) for a in ("dim", "codebook_size", "num_codebooks"))
    for attr, value, low in (("dim", d, 1), ("codebook_size", k, 2), ("num_codebooks", s, 1)):
        ck.require(
            isinstance(value, int) and not isinstance(value, bool) and value >= low,
            f"it must have an int attribute `{attr}` >= {low}, got {value!r}",
        )
    if dim_arg is not None:
        ck.require(d == dim_arg, f"it was asked for dim={dim_arg} and says dim={d} (a quantizer that fixes "
                   "its own dim should reject a different one, or accept dim=None)")  # fmt: skip
    if size_arg is not None:
        ck.require(
            k == size_arg,
            f"it was asked for codebook_size={size_arg} and says codebook_size={k} (a quantizer that "
            "fixes its own codebook size should reject a different one, or accept codebook_size=None)",
        )
    return int(d), _Codes(int(k), int(s))  # type: ignore[arg-type]


def _check_training_path(ck: _Checker, q: nn.Module, z: torch.Tensor, codes: _Codes) -> None:
    """``Quantized`` with straight-through gradients, a scalar loss, scalar stats."""
    z.requires_grad_(True)
    q.train()
    out = ck.call("forward", q, z)
    for attr in ("z_q", "indices", "loss", "stats"):
        ck.require(hasattr(out, attr), "forward must return vqkit.Quantized (z_q, indices, loss, stats)")
    ck.tensor("forward(z).z_q", out.z_q, tuple(z.shape), torch.float32, "the same shape and dtype as z")
    codes.check(ck, "forward(z).indices", out.indices, z)
    ck.require(
        isinstance(out.loss, torch.Tensor) and out.loss.dim() == 0 and out.loss.dtype.is_floating_point,
        lambda: f"forward(z).loss must be a scalar float tensor (zero if none), got {out.loss!r}",
    )
    ck.require(bool(torch.isfinite(out.loss)), "forward(z).loss is NaN or infinite")
    ck.require(isinstance(out.stats, dict), "forward(z).stats must be a dict of scalar tensors")
    for key, value in out.stats.items():
        ck.require(
            isinstance(value, torch.Tensor) and value.numel() == 1,
            f"forward(z).stats[{key!r}] must be a scalar tensor, got {value!r}",
        )
    _check_usage_stats(ck, out.stats, out.indices, codes)
    _check_input_gradient(ck, "forward(z).z_q", z, out.z_q)


def _check_inference_path(ck: _Checker, q: nn.Module, z: torch.Tensor, codes: _Codes) -> torch.Tensor:
    """``quantize`` is pure, deterministic, batch-independent, within range. Returns its eval-mode codes."""
    for mode in ("train", "eval"):
        q.train(mode == "train")
        before = _state(q)
        with torch.no_grad():
            indices = ck.call("quantize", q.quantize, z)
            again = ck.call("quantize", q.quantize, z)
        changed = _changed(before, q)
        ck.require(not changed, f"quantize in {mode} mode changed state {changed}; it must be pure")
        codes.check(ck, f"quantize(z) in {mode} mode", indices, z)
        ck.require(torch.equal(indices, again), "quantize gave different codes for the same input")
    with torch.no_grad():
        alone = ck.call("quantize", q.quantize, z[:1])
        tiny = ck.call("quantize", q.quantize, z[:1, :, :1, :1])
    ck.require(
        _same_codes(q, alone, indices[:1]),
        "quantize gives different codes for a sample alone than in a batch; samples must not affect "
        "each other (exported graphs have a dynamic batch axis)",
    )
    ck.require(
        _same_codes(q, tiny, indices[:1, :1, :1]), "quantize of a 1x1 grid disagrees with the full grid"
    )
    return indices


def _check_eval_agreement(ck: _Checker, q: nn.Module, z: torch.Tensor, indices: torch.Tensor) -> None:
    """In eval mode ``forward`` agrees with ``quantize``/``dequantize`` and changes nothing."""
    before = _state(q)
    with torch.no_grad():
        out = ck.call("forward in eval mode", q, z)
        z_q = ck.call("dequantize", q.dequantize, indices)
    changed = _changed(before, q)
    ck.require(not changed, f"forward in eval mode changed state {changed}; only training may")
    ck.require(
        torch.equal(out.indices, indices),
        "in eval mode forward(z).indices must equal quantize(z) (the exported encoder uses quantize)",
    )
    ck.tensor("dequantize(codes)", z_q, tuple(z.shape), torch.float32, "latents [B, dim, h, w]")
    ck.require(
        torch.allclose(out.z_q, z_q, atol=ATOL * max(1.0, float(z_q.abs().max()))),
        lambda: (
            "in eval mode forward(z).z_q must equal dequantize(quantize(z)) (the exported decoder "
            f"uses dequantize); largest difference {float((out.z_q - z_q).abs().max()):.3g}"
        ),
    )


def _check_dequantize_range(ck: _Checker, q: nn.Module, z: torch.Tensor, codes: _Codes) -> None:
    """``dequantize`` takes every code, the last one included."""
    k = codes.k
    extremes = torch.zeros(codes.shape(z), dtype=torch.int64)
    extremes[0] = k - 1
    extremes.view(-1)[1::2] = torch.randint(0, k, extremes.view(-1)[1::2].shape)
    with torch.no_grad():
        decoded = ck.call("dequantize", q.dequantize, extremes)
    ck.tensor(
        f"dequantize(codes) for codes 0..{k - 1}", decoded, tuple(z.shape), torch.float32, "[B, dim, h, w]"
    )


def _same_codes(q: nn.Module, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal codes, or codes that differ only between identical codebook vectors (an exact tie, which float
    rounding may break either way and which the decoder cannot tell apart)."""
    if torch.equal(a, b):
        return True
    with torch.no_grad():
        return a.shape == b.shape and torch.equal(q.dequantize(a), q.dequantize(b))


def _check_range(ck: _Checker, what: str, codes: torch.Tensor, k: int) -> None:
    ck.require(
        bool((codes >= 0).all() and (codes < k).all()),
        lambda: (
            f"{what} has values from {int(codes.min())} to {int(codes.max())}; the contract wants codes "
            f"in [0, codebook_size={k})"
        ),
    )


def _check_usage_stats(
    ck: _Checker, stats: dict[str, torch.Tensor], indices: torch.Tensor, codes: _Codes
) -> None:
    """``codes_used`` and ``perplexity`` (both optional; training logs them) describe the batch's codes: the
    number of distinct codes and exp(entropy) of their histogram. With S codebooks, each is the mean over
    the codebooks (so both stay within [1, codebook_size] whatever S is)."""
    k, s = codes.k, codes.s
    books = indices.detach().reshape(-1, s).t()  # [S, N]: the codes each codebook gave
    counts = [torch.bincount(b, minlength=k).double() for b in books]
    used = sum(float((c > 0).sum()) for c in counts) / s
    probs = [c / c.sum() for c in counts]
    perplexity = sum(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())) for p in probs) / s
    per_book = " (the mean over its codebooks)" if s > 1 else ""
    for key, want, tol in (("codes_used", used, 1e-4), ("perplexity", perplexity, 1e-3 * perplexity)):
        if key in stats:
            got = float(stats[key])
            ck.require(
                abs(got - want) <= tol,
                f"forward(z).stats[{key!r}] is {got:.6g} but its indices give {want:.6g}{per_book}; "
                f"stats {key!r} must describe the batch's codes, averaged over codebooks when there are several",
            )


def _check_bf16_autocast(ck: _Checker, q: nn.Module, z: torch.Tensor, codes: _Codes) -> None:
    """Training with bf16 runs the quantizer under autocast. Its search must still be fp32 (bf16 distances
    merge near codes and disagree with the fp32 search the exported model runs): under autocast the codes of
    a bf16 latent, or of an fp32 one, must be those the fp32 search gives for the same values. Thousands of
    latents, so that some lie near enough to the boundary between two codes for bf16 to get them wrong."""
    z = _randn(4, z.shape[1], 32, 32, seed=SEED + 3)
    z_bf16 = z.bfloat16()
    q.eval()
    with torch.no_grad():
        want = ck.call("quantize", q.quantize, z_bf16.float())
        want_fp32 = ck.call("quantize", q.quantize, z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = ck.call("quantize under bf16 autocast", q.quantize, z_bf16)
            got_fp32 = ck.call("quantize under bf16 autocast", q.quantize, z)
            out = ck.call("forward in eval mode under bf16 autocast", q, z_bf16)
    ck.require(
        _same_codes(q, got, want) and _same_codes(q, got_fp32, want_fp32),
        "under torch.autocast(dtype=torch.bfloat16), quantize(z) gives other codes than in fp32; compute the "
        "distances and the search in fp32 (z.float(), and `with torch.autocast(z.device.type, enabled=False)` "
        "around the matmul, which autocast would run in bf16)",
    )
    codes.check(ck, "forward(z).indices under bf16 autocast", out.indices, z)
    ck.require(
        _same_codes(q, out.indices, want),
        "under bf16 autocast, forward(z).indices in eval mode differ from quantize(z) in fp32",
    )
    ck.require(
        isinstance(out.z_q, torch.Tensor)
        and tuple(out.z_q.shape) == tuple(z.shape)
        and out.z_q.dtype in (torch.float32, torch.bfloat16)
        and bool(torch.isfinite(out.z_q).all()),
        lambda: (
            f"under bf16 autocast forward(z).z_q is {list(out.z_q.shape)} {out.z_q.dtype}; the contract wants "
            f"z's shape {list(z.shape)} in float32 or bfloat16, without NaN or infinite values"
        ),
    )
