"""What an export says about itself: ``vqkit.json``, and the same facts in each graph's own metadata.

An app must be able to feed an exported encoder exactly what the model saw in training and read its codes
without Python: the preprocessing is described step by step as ``vqkit.images.read_image`` does it (the
reader ``vqkit encode`` and the data loaders use), the codes' layout axis by axis, and what a decoder does
with codes outside the codebook.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from vqkit._version import __version__
from vqkit.export.target import METADATA_FORMAT

if TYPE_CHECKING:
    from vqkit.model import VQVAE

# 3: EXIF orientation applied, bit depth/alpha/palette/CMYK rules stated, vqkit's own resize (vqkit.resample),
# float arithmetic stated, and encoder graphs flag invalid input with code -1. Version 2 exports still load.
METADATA_VERSION = 3
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def preprocessing(channels: int, image_size: int) -> dict[str, Any]:
    """How an image file becomes the encoder's input, as ``vqkit.images.read_image`` + the [-1, 1] map do it:
    every step in terms a client in another language reproduces bit for bit (``vqkit.resample`` holds the
    resize's definition)."""
    s = image_size
    mode = _MODES.get(channels, f"{channels} channels")
    steps = {
        "channels": channels,
        "channel_order": {1: "L (grey)", 3: "RGB", 4: "RGBA"}.get(channels, "as stored"),
        "order": ["decode", "orientation", "bit_depth", "convert", "resize", "pixel_mapping"],
        "decode": "the file's own samples, without colour management (no ICC profile or gamma applied); JPEG "
        "pixels are the decoder's (libjpeg-turbo's islow IDCT and fancy upsampling in vqkit; decoders may "
        "differ by a level)",
        "orientation": "the EXIF Orientation tag (0x0112; JPEG APP1, PNG eXIf, WebP, TIFF) is applied first, "
        "as browsers do: 2 mirror left-right, 3 rotate 180, 4 mirror top-bottom, 5 transpose, 6 rotate 90 "
        "clockwise, 7 transverse, 8 rotate 90 counter-clockwise; other values or no EXIF: as stored",
        "bit_depth": "8-bit samples as they are; PNG grey of 1, 2 or 4 bits scaled as v * 255 / (2^bits - 1); "
        "16-bit grey without alpha (PNG colour type 0) as (v * 255 + 32767) // 65535; every other 16-bit "
        "sample (grey+alpha, RGB, RGBA) as its high byte v >> 8; float samples in [0, 1] as round(v * 255), "
        "others refused",
        "convert": f"to {mode!r}: palette entries looked up (their tRNS alpha is alpha); CMYK to RGB as "
        "floor((255 - C) * (255 - K) / 255) per channel (C, M, Y, K the file's non-inverted ink, as browsers "
        "convert it); grey to RGB by copying",
        "resize": {
            "when": f"the converted image is not already {s}x{s}",
            "scale": f"{s} / min(width, height)",
            "new_size": f"each side round(side * scale) (halves to even, as Python's round), at least {s}",
            "filter": "bicubic (cubic convolution a = -0.5, support 2; when shrinking, the kernel is widened "
            "by the scale factor, i.e. antialiased) in 8-bit integer arithmetic with 22-bit fixed-point "
            "weights, the width pass first then the height pass, each rounded and clipped to 0..255; a pass "
            "whose size does not change is skipped. Exactly: vqkit.resample's docstring (Pillow's Resample.c "
            "with the pass order fixed)",
            "pass_order": "width then height, always",
            "weights": "per axis: scale = in / out, filterscale = max(scale, 1), support = 2 * filterscale; "
            "for output i: center = (i + 0.5) * scale, lo = max(trunc(center - support + 0.5), 0), hi = "
            "min(trunc(center + support + 0.5), in); w_j = cubic(((j - lo) + lo - center + 0.5) / filterscale)"
            " for j in lo..hi-1, in float64; total summed left to right; k_j = trunc(w_j / total * 2^22 + 0.5) "
            "(or - 0.5 when negative); out = clip((2^21 + sum k_j p_j) >> 22, 0, 255)",
            "crop": f"centre: left = (new_width - {s}) // 2, top = (new_height - {s}) // 2, then {s}x{s}",
        },
        "pixel_mapping": "x / 127.5 - 1",
        "arithmetic": "float32: x converted to float32, divided by float32 127.5 (rounded to nearest even), "
        "then float32 1 subtracted (rounded); the same as the uint8 encoder graph computes",
        "scale": 1 / 127.5,
        "offset": -1.0,
        "value_range": [-1.0, 1.0],
        "input": {"dtype": "float32", "layout": "NCHW", "shape": ["batch", channels, s, s]},
        "invalid_input": "the float encoder graph gives code -1 at every position of an image holding NaN, "
        "infinity or a value outside [-1.001, 1.001] (it cannot refuse); vqkit.runtime refuses such input",
    }
    if channels == 1:
        steps["grey_conversion"] = (
            "L = R * 299/1000 + G * 587/1000 + B * 114/1000 (ITU-R 601-2 luma), computed as Pillow's "
            "convert('L') does: (19595 R + 38470 G + 7471 B + 32768) >> 16, from RGB (any other mode goes "
            "to RGB first)"
        )
    if channels in (1, 3):
        steps["alpha"] = (
            "dropped, not composited over a background: the colour samples are kept as stored, even where "
            "alpha is 0 (palette tRNS and PNG tRNS colour keys included)"
        )
    if channels == 4:
        steps["alpha"] = (
            "kept (palette tRNS and tRNS colour keys give alpha); the resize works on premultiplied colour: "
            "c' = (c * a + 128 + ((c * a + 128) >> 8)) >> 8 before, c = min(255, 255 * c' // a) after for "
            "0 < a < 255"
        )
    return steps


def codes_description(model: VQVAE, codes_dtype: str) -> dict[str, Any]:
    h, w = model.grid
    s = model.num_codebooks
    k = int(model.quantizer.codebook_size)
    axes = ["image in the batch", f"grid row, top to bottom ({h})", f"grid column, left to right ({w})"]
    if s > 1:
        axes.append(
            f"codebook ({s}): the {s} codes of one grid position, one per codebook, in the quantizer's order "
            "(residual stage for rvq, channel group for gvq)"
        )
    return {
        "dtype": codes_dtype,
        "shape": ["batch", h, w] + ([s] if s > 1 else []),
        "axes": axes,
        "last_axis": axes[-1],
        "range": [0, k - 1],
        "codebook_size": k,
        "num_codebooks": s,
        "grid": [h, w],
        "cell_pixels": [model.spec.image_size // h, model.spec.image_size // w],
        "out_of_range": (
            f"codes outside [0, {k - 1}] are not valid: the decoder graph returns NaN for every pixel of an "
            f"image holding one; vqkit.runtime refuses them before running it"
        ),
    }


def postprocessing() -> dict[str, Any]:
    return {
        "output": "float32 NCHW in [-1, 1] (NaN for an image with an out-of-range code)",
        "to_uint8": "clip(round((y + 1) * 127.5), 0, 255), channels in the input's order",
    }


def describe(model: VQVAE, codes_dtype: str) -> dict[str, Any]:
    """The format-neutral facts both ``vqkit.json`` and each graph's own metadata carry."""
    spec = model.spec
    return {
        "format": METADATA_FORMAT,
        "vqkit_version": __version__,
        "channels": spec.channels,
        "image_size": spec.image_size,
        "value_range": list(spec.value_range),
        "preprocessing": preprocessing(spec.channels, spec.image_size),
        "codes": codes_description(model, codes_dtype),
        "postprocessing": postprocessing(),
    }


def graph_properties(description: dict[str, Any], graph: str, extra: dict[str, Any]) -> dict[str, str]:
    """String key/values for a graph's own metadata (ONNX ``metadata_props``): a few readable keys, and the
    whole description as JSON under ``vqkit_json`` for a program that ships only the graph files."""
    codes, pre = description["codes"], description["preprocessing"]
    props = {
        "vqkit_version": __version__,
        "vqkit_graph": graph,
        "vqkit_channels": str(description["channels"]),
        "vqkit_image_size": str(description["image_size"]),
        "vqkit_channel_order": pre["channel_order"],
        "vqkit_value_range": json.dumps(description["value_range"]),
        "vqkit_pixel_mapping": pre["pixel_mapping"],
        "vqkit_resize": f"{pre['resize']['new_size']} by {pre['resize']['scale']}; {pre['resize']['crop']}",
        "vqkit_codebook_size": str(codes["codebook_size"]),
        "vqkit_num_codebooks": str(codes["num_codebooks"]),
        "vqkit_grid": json.dumps(codes["grid"]),
        "vqkit_codes_dtype": codes["dtype"],
        "vqkit_codes_last_axis": codes["last_axis"],
        "vqkit_out_of_range": codes["out_of_range"],
        "vqkit_json": json.dumps({**description, **extra, "graph": graph}),
    }
    if "grey_conversion" in pre:
        props["vqkit_grey_conversion"] = pre["grey_conversion"]
    return props


def _io(name: str, dtype: str, shape: list[Any], layout: str | None = None, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "dtype": dtype, "shape": shape}
    if layout:
        out["layout"] = layout
    return {**out, **more}


def export_metadata(model: VQVAE, fmt: str, written: dict[str, Any]) -> dict[str, Any]:
    """``vqkit.json``: the description, each graph's file and signature, the exporter's own details."""
    spec = model.spec
    codes_dtype = str(written.get("codes_dtype", "int64"))
    desc = describe(model, codes_dtype)
    codes_shape = desc["codes"]["shape"]
    images_shape = ["batch", spec.channels, spec.image_size, spec.image_size]
    value_range = list(spec.value_range)
    files = written.get("files", {})
    meta: dict[str, Any] = {
        "format": METADATA_FORMAT,
        "format_version": METADATA_VERSION,
        "exporter": fmt,
        "vqkit_version": __version__,
        "channels": spec.channels,
        "image_size": spec.image_size,
        "value_range": value_range,
        "grid": list(model.grid),
        "codebook_size": int(model.quantizer.codebook_size),
        "num_codebooks": model.num_codebooks,
        "codes_dtype": codes_dtype,
        "encoder": {
            "file": files.get("encoder"),
            "input": _io("images", "float32", images_shape, "NCHW", value_range=value_range),
            "output": _io("codes", codes_dtype, codes_shape),
        },
        "decoder": {
            "file": files.get("decoder"),
            "input": _io("codes", codes_dtype, codes_shape),
            "output": _io("images", "float32", images_shape, "NCHW", value_range=value_range),
        },
    }
    if "encoder_uint8" in files:
        pixels_shape = ["batch", spec.image_size, spec.image_size, spec.channels]
        meta["encoder_uint8"] = {
            "file": files["encoder_uint8"],
            "input": _io("pixels", "uint8", pixels_shape, "NHWC", value_range=[0, 255]),
            "output": _io("codes", codes_dtype, codes_shape),
        }
    meta.update({k: v for k, v in written.items() if k not in ("files", "codes_dtype")})
    meta.update(
        preprocessing=desc["preprocessing"],
        codes=desc["codes"],
        postprocessing=desc["postprocessing"],
        model=json.loads(spec.to_json()),
        parity=None,
    )
    return meta
