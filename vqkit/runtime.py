"""Run an exported tokenizer (``vqkit export``) with ONNX Runtime and numpy alone: no torch import.

    from vqkit.runtime import Tokenizer
    tok = Tokenizer("tokenizer/")                   # providers=["cuda", "cpu"]: the first available
    codes = tok.encode(images)                      # int64 [N, h, w] (or [N, h, w, S])
    images = tok.decode(codes)                      # float32 [N, C, H, W] in [-1, 1]; uint8=True: [N, H, W, C]

``threads``: ONNX Runtime's intra-op thread count for each graph (``SessionOptions.intra_op_num_threads``);
``None`` lets ONNX Runtime choose (one per physical core). Set ``threads=1`` when many threads or processes each
hold a Tokenizer (a web server's workers), so they do not oversubscribe the cores; a larger value speeds up
large batches in a single caller.

This module (with ``vqkit.images`` and ``vqkit.errors``) is also the whole of the ``vqkit-runtime``
distribution (``runtime/`` in the repository), which installs numpy, ONNX Runtime and Pillow but not torch.

Image inputs ``encode`` accepts (the layout follows the dtype):

- ``uint8``, channels last, values 0..255: ``[H, W, C]`` or ``[N, H, W, C]`` (what Pillow and OpenCV give;
  for one-channel models also ``[H, W]``);
- ``float16/32/64``, channels first, values in [-1, 1]: ``[C, H, W]`` or ``[N, C, H, W]`` (what the model sees).

This numpy side keeps the image layout of numpy's image libraries (uint8 channels last), on purpose: its callers
hold Pillow or OpenCV arrays. The torch side (``VQVAE.encode``) is channels first for every dtype, as torchvision
is, and takes channels-last uint8 as well where the shape tells the two apart.

One image in gives codes without the batch axis; a batch gives a batch. ``decode`` mirrors it; it takes int32
or int64 codes (whatever the export's ``codes_dtype``) and refuses codes outside the codebook with one error.
A Tokenizer holds no mutable state, so one instance may serve ``encode``/``decode`` calls from many threads at
once (ONNX Runtime sessions are thread-safe for ``run``).

A tokenizer folder someone hands you is checked before use: ``vqkit.json`` may only name graph files inside
the folder (no absolute paths, ``..`` or symlinks out), and so may the graphs' external-data references; the
graphs' input and output signatures (and their own metadata) must match what ``vqkit.json`` says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vqkit.errors import ShapeError, VQKitError
from vqkit.images import read_images

METADATA_FILE = "vqkit.json"  # the same name vqkit.export writes; kept here so this module stays torch-free
# The newest export format this module reads (vqkit.export.metadata.METADATA_VERSION; a test keeps them equal).
# Formats 1 and 2 read too: their graphs are the same; their preprocessing text predates the stated contract.
FORMAT_VERSION = 3
_PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class TokenizerError(VQKitError):
    """An exported tokenizer folder that cannot be used (missing, corrupt, not a vqkit export)."""


def _resolve_providers(providers: str | Sequence[str] | None) -> list[str]:
    """``None``: the CPU. One name: that provider, or an error if this ONNX Runtime lacks it. A list: an order
    of preference, of which the ones this ONNX Runtime has are used (``["cuda", "cpu"]`` runs on the CPU with
    the CPU-only onnxruntime package, on the GPU with onnxruntime-gpu); an error only if it has none of them."""
    import onnxruntime as ort

    if providers is None:
        return ["CPUExecutionProvider"]
    single = isinstance(providers, str)
    names = [providers] if single else list(providers)
    if not names or not all(isinstance(p, str) for p in names):
        raise TokenizerError(f"providers must be a name or a list of names, got {providers!r}")
    available = ort.get_available_providers()
    wanted = [_PROVIDER_ALIASES.get(p.lower(), p) for p in names]
    out = [name for name in dict.fromkeys(wanted) if name in available]
    if not out or (single and wanted[0] not in available):
        asked = ", ".join(map(repr, names))
        noun = "provider {} is" if single else "providers {} are"
        raise TokenizerError(
            f"ONNX Runtime {noun.format(asked)} not available here; available: {', '.join(available)}"
            + (" (CUDA needs the onnxruntime-gpu package)" if "CUDAExecutionProvider" in wanted else "")
        )
    return out


# Sizes a real tokenizer stays far below. vqkit.json is read from a folder someone handed us: a larger value is
# an edited or broken file, refused before it sizes anything (a codebook of 2**31 codes already needs 8 GiB).
# The codebook's cap also keeps every valid code within int32, so narrowing checked codes never wraps one.
_MAX_SIZES = {
    "channels": 1024,
    "image_size": 1 << 16,
    "grid": 1 << 16,
    "codebook_size": 1 << 31,
    "num_codebooks": 1024,
}


def _size(value: Any, name: str, info_path: Path) -> int:
    """One size field of vqkit.json, checked as a Python int (no narrowing) against its sane range."""
    top = _MAX_SIZES[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenizerError(f"{info_path}: {name} must be a whole number, got {value!r}")
    if not 1 <= value <= top:
        raise TokenizerError(f"{info_path}: {name} must lie in [1, {top}], got {value}")
    return value


# How an ONNX file names an external-data file: a StringStringEntryProto {key: "location", value: PATH}, i.e.
# field 1 = the 8 bytes "location", then field 2 = the path, length-prefixed (protobuf wire format).
_LOCATION_ENTRY = b"\n\x08location\x12"
_CODES_DTYPES = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}


def _inside(folder: Path, name: Any) -> Path | None:
    """``folder / name`` if ``name`` is a plain relative path that stays inside ``folder`` once symlinks are
    resolved; else None."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name:
        return None
    if any(part == ".." for part in Path(name).parts):
        return None
    path = folder / name
    try:
        if not path.resolve().is_relative_to(folder.resolve()):
            return None
    except (OSError, RuntimeError):
        return None
    return path


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    return -1, at


def external_data_paths(file: Path) -> list[str]:
    """Every external-data location an ONNX file names (read from the protobuf bytes, without the onnx
    package). A false hit would need those 11 exact bytes inside a weight, and would only refuse the file."""
    import mmap

    found = []
    with open(file, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return found
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = data.find(_LOCATION_ENTRY)
            while at >= 0:
                length, start = _varint(data, at + len(_LOCATION_ENTRY))
                if 0 <= length <= 4096:
                    found.append(bytes(data[start : start + length]).decode("utf-8", "replace"))
                at = data.find(_LOCATION_ENTRY, at + 1)
    return found


class Tokenizer:
    """An exported vqkit encoder + decoder pair, run by ONNX Runtime. See the module docstring for inputs."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: str | Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        info = self._read_info()
        self.info: dict[str, Any] = info
        info_path = self.path / METADATA_FILE
        try:
            self.channels = _size(info["channels"], "channels", info_path)
            self.image_size = _size(info["image_size"], "image_size", info_path)
            grid = info["grid"]
            if not isinstance(grid, list) or len(grid) != 2:
                raise TokenizerError(f"{info_path}: grid must be [rows, columns], got {grid!r}")
            self.grid = (_size(grid[0], "grid", info_path), _size(grid[1], "grid", info_path))
            self.codebook_size = _size(info["codebook_size"], "codebook_size", info_path)
            self.num_codebooks = _size(info.get("num_codebooks", 1), "num_codebooks", info_path)
            files = {role: info[role]["file"] for role in ("encoder", "decoder")}
        except (KeyError, TypeError) as exc:
            raise TokenizerError(f"{info_path} lacks a field it needs ({exc!r})") from exc
        h, w = self.grid
        self.codes_shape: tuple[int, ...] = (h, w) if self.num_codebooks == 1 else (h, w, self.num_codebooks)
        self.providers = _resolve_providers(providers)
        options = ort.SessionOptions()
        if threads is not None:
            if int(threads) < 0:
                raise TokenizerError(f"threads must be 0 (ONNX Runtime chooses) or more, got {threads}")
            options.intra_op_num_threads = int(threads)
        self._sessions = {role: self._open(role, name, options) for role, name in files.items()}
        self._names = {
            role: (s.get_inputs()[0].name, s.get_outputs()[0].name) for role, s in self._sessions.items()
        }
        self._check_signatures()
        self.codes_dtype = _CODES_DTYPES[self._sessions["decoder"].get_inputs()[0].type]

    def _read_info(self) -> dict[str, Any]:
        info_path = self.path / METADATA_FILE
        if not self.path.is_dir():
            raise TokenizerError(
                f"no exported tokenizer folder at {self.path} (make one with `vqkit export`)"
            )
        if info_path.is_symlink() and _inside(self.path, METADATA_FILE) is None:
            raise TokenizerError(
                f"{info_path} links outside {self.path}; a tokenizer folder may only use its own files"
            )
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError:
            raise TokenizerError(
                f"{self.path} has no {METADATA_FILE}; is it a `vqkit export` folder?"
            ) from None
        except RecursionError:  # nesting no export writes
            raise TokenizerError(f"{info_path} nests too deeply to be a vqkit export") from None
        except (OSError, ValueError) as exc:
            raise TokenizerError(f"{info_path} is not readable JSON ({exc})") from exc
        if not isinstance(info, dict) or info.get("format") != "vqkit.export":
            raise TokenizerError(f"{info_path} does not describe a vqkit export")
        version = info.get("format_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
            raise TokenizerError(
                f"{info_path} is export format {version!r}; this vqkit reads formats up to {FORMAT_VERSION} "
                "(upgrade vqkit / vqkit-runtime to use it)"
            )
        return info

    def _open(self, role: str, name: Any, options: Any) -> Any:
        """One graph's session, after checking that it and its external data lie inside the folder."""
        import onnxruntime as ort

        file = _inside(self.path, name)
        if file is None:
            raise TokenizerError(
                f"{self.path / METADATA_FILE} names {role} graph {name!r}, which is not a file inside "
                f"{self.path}; a tokenizer folder may only use its own files"
            )
        if not file.is_file():
            raise TokenizerError(f"{self.path} lacks its {role} graph {name}")
        for location in external_data_paths(file):
            if _inside(file.parent, location) is None:
                raise TokenizerError(
                    f"{file} points at external data {location!r} outside {self.path}; refusing to load it"
                )
        try:
            return ort.InferenceSession(str(file), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own types for corrupt or unsupported files
            raise TokenizerError(f"ONNX Runtime cannot load {file}: {exc}") from exc

    def _check_signatures(self) -> None:
        """The graphs must take and give what ``vqkit.json`` says: a swapped, edited or mismatched folder fails
        here with one message instead of inside ONNX Runtime."""
        c, s = self.channels, self.image_size
        images = [("tensor(float)",), (c, s, s)]
        codes = [tuple(_CODES_DTYPES), self.codes_shape]
        want = {"encoder": (images, codes), "decoder": (codes, images)}
        for role, session in self._sessions.items():
            ins, outs = session.get_inputs(), session.get_outputs()
            if len(ins) != 1 or len(outs) != 1:
                raise self._mismatch(role, f"has {len(ins)} inputs and {len(outs)} outputs, not 1 and 1")
            for what, arg, (dtypes, shape) in (
                ("input", ins[0], want[role][0]),
                ("output", outs[0], want[role][1]),
            ):
                dims = list(arg.shape)[1:]
                fits = len(dims) == len(shape) and all(
                    not isinstance(d, int) or d == e for d, e in zip(dims, shape)
                )
                if arg.type not in dtypes or not fits:
                    expect = f"{' or '.join(dtypes)} [N, {', '.join(map(str, shape))}]"
                    raise self._mismatch(
                        role, f"{what} is {arg.type} {list(arg.shape)}, {METADATA_FILE} says {expect}"
                    )
            props = session.get_modelmeta().custom_metadata_map
            for key, value in (("vqkit_codebook_size", self.codebook_size), ("vqkit_graph", role)):
                if key in props and props[key] != str(value):
                    raise self._mismatch(
                        role, f"was exported with {key[6:]} {props[key]}, {METADATA_FILE} says {value}"
                    )

    def _mismatch(self, role: str, what: str) -> TokenizerError:
        return TokenizerError(
            f"{self.path} does not match its {METADATA_FILE}: the {role} graph {what} "
            f"(an edited {METADATA_FILE} or swapped files? export the model again)"
        )

    def __repr__(self) -> str:
        c, s = self.channels, self.image_size
        return (
            f"Tokenizer({str(self.path)!r}, images {c}x{s}x{s}, codes {'x'.join(map(str, self.codes_shape))} "
            f"of {self.codebook_size}, providers={self.providers})"
        )

    # --- input checks ---------------------------------------------------------------------------------------
    def images_to_model(self, images: Any) -> tuple[np.ndarray, bool]:
        """Any accepted image input -> float32 ``[N, C, H, W]`` in [-1, 1], and whether it was one image."""
        x = np.asarray(images)
        c, s = self.channels, self.image_size
        if x.dtype == np.uint8:
            if x.ndim == 2 and c == 1:
                x = x[:, :, None]
            if x.ndim not in (3, 4):
                raise ShapeError(f"uint8 images must be [H, W, C] or [N, H, W, C], got shape {list(x.shape)}")
            single = x.ndim == 3
            x = x[None] if single else x
            if x.shape[-1] != c:
                hint = " (uint8 images are channels-last; transpose CHW to HWC)" if x.shape[1] == c else ""
                raise ShapeError(
                    f"expected {c}-channel uint8 images [..., H, W, {c}], got shape {list(x.shape)}{hint}"
                )
            x = x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        elif np.issubdtype(x.dtype, np.floating):
            if x.ndim not in (3, 4):
                raise ShapeError(f"float images must be [C, H, W] or [N, C, H, W], got shape {list(x.shape)}")
            single = x.ndim == 3
            x = x[None] if single else x
            if x.shape[1] != c:
                hint = " (float images are channels-first; transpose HWC to CHW)" if x.shape[-1] == c else ""
                raise ShapeError(
                    f"expected {c}-channel float images [..., {c}, H, W], got shape {list(x.shape)}{hint}"
                )
            x = np.ascontiguousarray(x, dtype=np.float32)
            if x.size:
                lo, hi = float(np.min(x)), float(np.max(x))
                if not (np.isfinite(lo) and np.isfinite(hi)):
                    raise ShapeError("float images contain NaN or infinity")
                if lo < -1.001 or hi > 1.001:
                    raise ShapeError(
                        f"float images must lie in [-1, 1], got values from {lo:g} to {hi:g} "
                        f"(pass uint8 for 0..255 pixels)"
                    )
        else:
            raise ShapeError(
                f"images must be uint8 (0..255, [N,] H, W, C) or float ([-1, 1], [N,] C, H, W), got {x.dtype}"
            )
        if x.shape[2:] != (s, s):
            raise ShapeError(
                f"this tokenizer takes {s}x{s} images, got {x.shape[2]}x{x.shape[3]} (resize them first)"
            )
        return np.ascontiguousarray(x), single

    def check_codes(self, codes: Any) -> tuple[np.ndarray, bool]:
        """Codes -> ``[N, h, w(, S)]`` in the decoder's dtype (int32 or int64) after checking shape, dtype and
        range; and whether unbatched."""
        x = np.asarray(codes)
        want = self.codes_shape
        shape = "[N, " + ", ".join(map(str, want)) + "]"
        if not (np.issubdtype(x.dtype, np.integer)):
            raise ShapeError(f"codes must be integers, got {x.dtype}")
        if x.ndim == len(want):
            x, single = x[None], True
        elif x.ndim == len(want) + 1:
            single = False
        else:
            raise ShapeError(
                f"expected codes {shape} (or one image's {list(want)}), got shape {list(x.shape)}"
            )
        if tuple(x.shape[1:]) != want:
            raise ShapeError(f"expected codes {shape}, got shape {list(x.shape)}")
        if x.size:
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= self.codebook_size:
                raise ShapeError(
                    f"codes must lie in [0, {self.codebook_size - 1}] (codebook size {self.codebook_size}), "
                    f"got values from {lo} to {hi}"
                )
        return np.ascontiguousarray(x, dtype=self.codes_dtype), single

    # --- running --------------------------------------------------------------------------------------------
    def _run(self, role: str, x: np.ndarray, batch_size: int) -> np.ndarray:
        session = self._sessions[role]
        name_in, name_out = self._names[role]
        if len(x) == 0:
            empty = np.zeros((1, *x.shape[1:]), dtype=x.dtype)  # run once for the output's shape and dtype
            out = session.run([name_out], {name_in: empty})[0]
            return out[:0]
        parts = [
            session.run([name_out], {name_in: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def encode(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Images (see the module docstring) -> int64 codes ``[N, h, w]`` (``[h, w]`` for one image)."""
        x, single = self.images_to_model(images)
        codes = self._run("encoder", x, max(1, int(batch_size))).astype(np.int64, copy=False)
        if codes.size and codes.min() < 0:  # the graph's flag for input outside [-1, 1] (or NaN)
            raise ShapeError("the encoder graph flagged an image as invalid input (NaN or outside [-1, 1])")
        return codes[0] if single else codes

    def decode(self, codes: Any, batch_size: int = 256, uint8: bool = False) -> np.ndarray:
        """Codes ``[N, h, w]`` (or one image's ``[h, w]``) -> float32 images ``[N, C, H, W]`` in [-1, 1];
        with ``uint8=True``, uint8 ``[N, H, W, C]`` (0..255) ready to save."""
        x, single = self.check_codes(codes)
        out = self._run("decoder", x, max(1, int(batch_size)))
        if uint8:
            out = np.clip(np.rint((out + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return out[0] if single else out

    def encode_files(self, paths: Sequence[str | os.PathLike[str]], batch_size: int = 256) -> np.ndarray:
        """Image files -> codes ``[N, h, w]``; each is converted to the tokenizer's channels and resized
        (shorter side) and centre-cropped to its size."""
        images = read_images(paths, self.channels, self.image_size)  # uint8 [N, C, H, W]
        return self.encode(images.transpose(0, 2, 3, 1), batch_size=batch_size)
