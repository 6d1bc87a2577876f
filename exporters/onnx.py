"""The ONNX exporter: ``encoder.onnx`` (images -> int64 codes) and ``decoder.onnx`` (codes -> images)."""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqkit._version import __version__
from vqkit.export import ExportError
from vqkit.exporters.subpixel import rewrite_conv_transpose
from vqkit.model import VQVAE
from vqkit.registry import exporters
from vqkit.runtime import Tokenizer

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter (torch.onnx.export(dynamo=True)) emits opset 18 and newer
MAX_OPSET = 23
# protobuf's 2 GB limit: above it the weights go to an external-data file beside the graph.
SINGLE_FILE_LIMIT = 1_800_000_000


class EncodeGraph(nn.Module):
    """What ``encoder.onnx`` contains: encoder + ``quantizer.quantize``."""

    def __init__(self, model: VQVAE) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.quantizer = model.quantizer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantizer.quantize(self.encoder(images))


class DecodeGraph(nn.Module):
    """What ``decoder.onnx`` contains: ``quantizer.dequantize`` + decoder."""

    def __init__(self, model: VQVAE, decoder: nn.Module) -> None:
        super().__init__()
        self.quantizer = model.quantizer
        self.decoder = decoder

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.dequantize(codes))


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


@exporters.register("onnx")
class OnnxExporter:
    """ONNX graphs for ONNX Runtime and other apps: encoder.onnx, decoder.onnx, dynamic batch axis.

    ``opset``: ONNX opset version (18-23). ``subpixel``: rewrite each transposed conv that allows it as an exactly
    equivalent Conv + DepthToSpace (see ``subpixel.py``). Off by default: on the CPU we measured
    (benchmarks/onnx_speed.py) ONNX Runtime's own ConvTranspose was the faster of the two at every batch size.
    """

    def __init__(self, opset: int = DEFAULT_OPSET, subpixel: bool = False) -> None:
        if not MIN_OPSET <= int(opset) <= MAX_OPSET:
            raise ValueError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
        self.opset = int(opset)
        self.subpixel = bool(subpixel)

    def _export_one(
        self, module: nn.Module, example: torch.Tensor, names: tuple[str, str], path: Path
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
        if not big:
            proto = onnx.load(str(path))
            # Metadata a non-Python app can read straight from the graph file.
            entries = {"vqkit_version": __version__, "vqkit_graph": path.stem}
            for key, value in entries.items():
                proto.metadata_props.add(key=key, value=value)
            onnx.save(proto, str(path))

    def export(self, model: VQVAE, folder: Path) -> dict[str, Any]:
        spec = model.spec
        images = torch.rand(2, spec.channels, spec.image_size, spec.image_size) * 2 - 1
        # The batch of 2 keeps torch.export from specialising the batch axis to 1.
        with torch.no_grad():
            codes = model.quantizer.quantize(model.encoder(images))
        decoder, rewritten = (model.decoder, 0)
        if self.subpixel:
            decoder, rewritten = rewrite_conv_transpose(model.decoder)
        self._export_one(EncodeGraph(model), images, ("images", "codes"), folder / "encoder.onnx")
        self._export_one(DecodeGraph(model, decoder), codes, ("codes", "images"), folder / "decoder.onnx")
        return {
            "files": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
            "opset": self.opset,
            "graph_rewrites": {"conv_transpose_to_subpixel": rewritten},
            "torch_version": torch.__version__.split("+")[0],
        }

    def load(self, folder: Path) -> Tokenizer:
        return Tokenizer(folder)
