"""The ONNX exporter: ``encoder.onnx`` (images -> codes) and ``decoder.onnx`` (codes -> images).

The graphs are written for the broadest set of runtimes that can run them: opset 18 (the lowest the dynamo
exporter emits) stamped with the lowest ONNX IR version that opset needs (8), which ONNX Runtime 1.16 loads
(tested in a separate environment by ``tests/test_onnx_compat.py``). Codes are int32 where the codebook fits
(JavaScript gets an ``Int32Array``, not ``BigInt64Array``). Every graph carries the preprocessing and the codes'
layout in its own ``metadata_props`` (``vqkit.export.metadata``), so an app that ships only the ``.onnx`` files
still knows them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqkit.export.metadata import describe, graph_properties
from vqkit.export.target import ExportError
from vqkit.exporters.subpixel import rewrite_conv_transpose
from vqkit.model import VQVAE
from vqkit.registry import exporters
from vqkit.runtime import Tokenizer

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter (torch.onnx.export(dynamo=True)) emits opset 18 and newer
MAX_OPSET = 23
# The oldest ONNX Runtime that implements an opset (ONNX Runtime's version matrix): 1.14 implements opset 18
# at IR 8, but 1.16 is the oldest this project tests (tests/test_onnx_compat.py), so nothing older is claimed.
MIN_ONNXRUNTIME = {18: "1.16", 19: "1.16", 20: "1.17", 21: "1.18", 22: "1.20", 23: "1.22"}
# ... and the highest IR version each of those loads: IR 10 needs 1.18, IR 11 1.22.
MIN_ONNXRUNTIME_FOR_IR = {8: "1.16", 9: "1.16", 10: "1.18", 11: "1.22"}
CODES_DTYPES = {"int32": torch.int32, "int64": torch.int64}
# protobuf's 2 GB limit: above it the weights go to an external-data file beside the graph.
SINGLE_FILE_LIMIT = 1_800_000_000


# Float input further than this outside [-1, 1] is not an image the model was trained on (vqkit.runtime's
# check uses the same bound).
INPUT_SLACK = 1e-3


class EncodeGraph(nn.Module):
    """What ``encoder.onnx`` contains: encoder + ``quantizer.quantize``, codes cast to ``codes_dtype``.

    An image holding NaN, infinity or a value outside [-1 - 1e-3, 1 + 1e-3] (0..255 pixels passed as floats,
    say) gets the code -1 at every position: flagged, since an ONNX graph cannot refuse, and never a valid
    code (a NaN pixel would otherwise turn every code into 0 unnoticed)."""

    check_input = True

    def __init__(self, model: VQVAE, codes_dtype: torch.dtype = torch.int64) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.quantizer = model.quantizer
        self.codes_dtype = codes_dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        codes = self.quantizer.quantize(self.encoder(images)).to(self.codes_dtype)
        if not self.check_input:
            return codes
        # NaN fails both comparisons, so it counts as outside.
        inside = (images >= -1.0 - INPUT_SLACK) & (images <= 1.0 + INPUT_SLACK)
        bad = ~_per_image(inside)
        bad = bad.reshape(bad.shape[0], *([1] * (codes.dim() - 1)))
        return torch.where(bad, torch.full_like(codes, -1), codes)


def _per_image(flags: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` booleans -> ``[B]``: all true. Reduced axis by axis, not flattened: a flatten exports as a
    Reshape to ``[batch, -1]``, which ONNX Runtime cannot resolve for an empty batch."""
    for dim in range(flags.dim() - 1, 0, -1):
        flags = flags.all(dim=dim)
    return flags


def _group_norm(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``nn.GroupNorm.forward`` as exported: the same maths with every reshape spelled out. The exporter's own
    translation reshapes to ``[batch, groups, -1]``, which ONNX Runtime refuses for an empty batch."""
    b, g = x.shape[0], self.num_groups
    per_group = math.prod(x.shape[1:]) // g  # channels and spatial sizes are static; only the batch varies
    xg = x.reshape(b, g, per_group)
    mean = xg.mean(dim=2, keepdim=True)
    centred = xg - mean
    var = (centred * centred).mean(dim=2, keepdim=True)
    y = (centred / torch.sqrt(var + self.eps)).reshape(x.shape)
    if self.affine:
        shape = (1, x.shape[1], *([1] * (x.dim() - 2)))
        y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
    return y


@contextlib.contextmanager
def _exportable_group_norm():
    original = nn.GroupNorm.forward
    nn.GroupNorm.forward = _group_norm  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.GroupNorm.forward = original  # type: ignore[method-assign]


class PixelsEncodeGraph(EncodeGraph):
    """What ``encoder_uint8.onnx`` contains: uint8 pixels ``[N, H, W, C]`` (resized and cropped to the model's
    size) -> float32 ``x / 127.5 - 1`` (one division and one subtraction, each rounded to float32), NCHW ->
    codes. Every uint8 input is a valid image, so nothing is flagged."""

    check_input = False

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = pixels.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0
        return super().forward(images)


class DecodeGraph(nn.Module):
    """What ``decoder.onnx`` contains: ``quantizer.dequantize`` + decoder, with codes checked: an image with
    any code outside [0, codebook_size) comes out all NaN (the code itself is clamped so the graph runs), which
    no valid image can be mistaken for."""

    def __init__(self, model: VQVAE, decoder: nn.Module) -> None:
        super().__init__()
        self.quantizer = model.quantizer
        self.decoder = decoder
        self.codebook_size = int(model.quantizer.codebook_size)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        codes = codes.to(torch.int64)
        valid = (codes >= 0) & (codes < self.codebook_size)
        images = self.decoder(self.quantizer.dequantize(torch.where(valid, codes, torch.zeros_like(codes))))
        bad = ~_per_image(valid)
        return torch.where(bad[:, None, None, None], torch.full_like(images, float("nan")), images)


def _cache_torchlib_table() -> None:
    """Build onnxscript's table of ATen translations once per process, not once per graph.

    ``torch.onnx.export(dynamo=True)`` asks onnxscript for it on every call, and onnxscript rebuilds it, compiling
    each of ~1000 functions: about 2 s of a small model's 2.5 s export. The table only depends on the installed
    onnxscript, so caching it changes no result. Skipped quietly if onnxscript's layout differs.
    """
    try:
        from onnxscript._framework_apis import torch_2_5 as apis
    except ImportError:
        return
    build = getattr(apis, "get_torchlib_ops", None)
    if build is None or getattr(build, "_vqkit_cached", False):
        return
    cached = functools.lru_cache(maxsize=1)(build)
    cached._vqkit_cached = True  # type: ignore[attr-defined]
    apis.get_torchlib_ops = cached


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def min_ir_version(opset: int) -> int:
    """The lowest ONNX IR version a graph of ``opset`` may be stamped with (from onnx's version table)."""
    from onnx import helper

    return min(ir for _, ir, op, *_ in helper.VERSION_TABLE if op >= opset)


def min_onnxruntime(opset: int, ir_version: int) -> str:
    versions = [MIN_ONNXRUNTIME.get(opset, "1.22"), MIN_ONNXRUNTIME_FOR_IR.get(ir_version, "1.22")]
    return max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


@exporters.register("onnx")
class OnnxExporter:
    """ONNX graphs for ONNX Runtime and other apps: encoder.onnx, decoder.onnx, dynamic batch axis.

    ``opset``: ONNX opset version (18-23). ``ir_version``: the ONNX IR version the files are stamped with
    (default: the lowest the opset allows, 8 for opset 18, so older runtimes load them). ``codes_dtype``:
    ``"int32"`` or ``"int64"`` (default int32 where the codebook fits); the decoder takes the same dtype.
    ``uint8_encoder``: also write ``encoder_uint8.onnx``, which takes uint8 pixels ``[N, H, W, C]`` at the
    model's size and maps them to [-1, 1] inside the graph. ``subpixel``: rewrite each transposed conv that
    allows it as an exactly equivalent Conv + DepthToSpace (see ``subpixel.py``). Off by default: on the CPU
    we measured (benchmarks/onnx_speed.py) ONNX Runtime's own ConvTranspose was the faster of the two at
    every batch size.
    """

    def __init__(
        self,
        opset: int = DEFAULT_OPSET,
        subpixel: bool = False,
        ir_version: int | None = None,
        codes_dtype: str | None = None,
        uint8_encoder: bool = False,
    ) -> None:
        import onnx

        if not MIN_OPSET <= int(opset) <= MAX_OPSET:
            raise ValueError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
        self.opset = int(opset)
        lowest = min_ir_version(self.opset)
        self.ir_version = lowest if ir_version is None else int(ir_version)
        if not lowest <= self.ir_version <= onnx.IR_VERSION:
            raise ValueError(
                f"ir_version must be between {lowest} (the lowest opset {self.opset} allows) and "
                f"{onnx.IR_VERSION}, got {ir_version}"
            )
        if codes_dtype is not None and codes_dtype not in CODES_DTYPES:
            raise ValueError(f"codes_dtype must be 'int32' or 'int64', got {codes_dtype!r}")
        self.codes_dtype = codes_dtype
        self.uint8_encoder = bool(uint8_encoder)
        self.subpixel = bool(subpixel)

    def _export_one(
        self,
        module: nn.Module,
        example: torch.Tensor,
        names: tuple[str, str],
        path: Path,
        props: dict[str, str],
    ) -> None:
        import onnx

        _cache_torchlib_table()
        big = sum(p.numel() * p.element_size() for p in module.parameters()) > SINGLE_FILE_LIMIT
        batch = torch.export.Dim("batch", min=1)
        sink = io.StringIO()
        try:
            # The exporter prints progress lines and warns about internals; keep the user's terminal clean.
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(sink),
                contextlib.redirect_stderr(sink),
                _exportable_group_norm(),
            ):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module.eval(),
                    (example,),
                    str(path),
                    dynamo=True,
                    opset_version=self.opset,
                    input_names=[names[0]],
                    output_names=[names[1]],
                    dynamic_shapes={names[0]: {0: batch}},
                    external_data=big,
                    verbose=False,
                )
        except Exception as exc:
            raise ExportError(
                f"cannot export the {path.stem} graph to ONNX: {_first_line(exc)}. Its modules must be "
                f"traceable by torch.export (quantize/dequantize pure, no data-dependent Python control flow)"
            ) from exc
        # Weights stay where the exporter put them (external data, for big models, is not rewritten).
        proto = onnx.load(str(path), load_external_data=False)
        self._stamp(proto, props, path)
        onnx.save(proto, str(path))

    def _stamp(self, proto: Any, props: dict[str, str], path: Path) -> None:
        """Stamp the lowest IR version asked for and the description into the graph's own metadata."""
        import onnx

        extra = {p.domain for p in proto.opset_import if p.domain not in ("", "ai.onnx")}
        if extra or any(p.version > self.opset for p in proto.opset_import if p.domain in ("", "ai.onnx")):
            raise ExportError(
                f"the {path.stem} graph uses operator sets beyond opset {self.opset} "
                f"({', '.join(sorted(extra)) or 'a newer default opset'}); try a higher opset"
            )
        proto.ir_version = self.ir_version
        del proto.metadata_props[:]
        for key, value in props.items():
            proto.metadata_props.add(key=key, value=value)
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as exc:
            raise ExportError(
                f"the {path.stem} graph is not valid at IR version {self.ir_version}: {_first_line(exc)}; "
                "try a higher ir_version"
            ) from exc

    def _codes_dtype(self, model: VQVAE) -> str:
        if self.codes_dtype is not None:
            if self.codes_dtype == "int32" and model.quantizer.codebook_size > 2**31:
                raise ExportError(
                    f"codes_dtype 'int32' cannot hold codes of a {model.quantizer.codebook_size}-code codebook"
                )
            return self.codes_dtype
        return "int32" if model.quantizer.codebook_size <= 2**31 else "int64"

    def export(self, model: VQVAE, folder: Path) -> dict[str, Any]:
        spec = model.spec
        images = torch.rand(2, spec.channels, spec.image_size, spec.image_size) * 2 - 1
        # The batch of 2 keeps torch.export from specialising the batch axis to 1.
        codes_dtype = self._codes_dtype(model)
        dtype = CODES_DTYPES[codes_dtype]
        with torch.no_grad():
            codes = model.quantizer.quantize(model.encoder(images)).to(dtype)
        decoder, rewritten = (model.decoder, 0)
        if self.subpixel:
            decoder, rewritten = rewrite_conv_transpose(model.decoder)
        details = {
            "opset": self.opset,
            "ir_version": self.ir_version,
            "min_onnxruntime": min_onnxruntime(self.opset, self.ir_version),
        }
        desc = describe(model, codes_dtype)
        files = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
        graphs = [
            ("encoder", EncodeGraph(model, dtype), images, ("images", "codes")),
            ("decoder", DecodeGraph(model, decoder), codes, ("codes", "images")),
        ]
        if self.uint8_encoder:
            files["encoder_uint8"] = "encoder_uint8.onnx"
            pixels = torch.randint(
                0, 256, (2, spec.image_size, spec.image_size, spec.channels), dtype=torch.uint8
            )
            graphs.append(("encoder_uint8", PixelsEncodeGraph(model, dtype), pixels, ("pixels", "codes")))
        for role, module, example, names in graphs:
            props = graph_properties(desc, role, details)
            self._export_one(module, example, names, folder / files[role], props)
        return {
            "files": files,
            "codes_dtype": codes_dtype,
            **details,
            "graph_rewrites": {"conv_transpose_to_subpixel": rewritten},
            "torch_version": torch.__version__.split("+")[0],
        }

    def load(self, folder: Path) -> Tokenizer:
        return Tokenizer(folder)
