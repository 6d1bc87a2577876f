"""Run an exported tokenizer (``vqkit export``) with ONNX Runtime and numpy alone: no torch import.

    from vqkit.runtime import Tokenizer
    tok = Tokenizer("tokenizer/")                   # providers=["CUDAExecutionProvider", ...] or "cuda"
    codes = tok.encode(images)                      # int64 [N, h, w] (or [N, h, w, S])
    images = tok.decode(codes)                      # float32 [N, C, H, W] in [-1, 1]; uint8=True: [N, H, W, C]

Image inputs ``encode`` accepts (the layout follows the dtype):

- ``uint8``, channels last, values 0..255: ``[H, W, C]`` or ``[N, H, W, C]`` (what Pillow and OpenCV give;
  for one-channel models also ``[H, W]``);
- ``float16/32/64``, channels first, values in [-1, 1]: ``[C, H, W]`` or ``[N, C, H, W]`` (what the model sees).

One image in gives codes without the batch axis; a batch gives a batch. ``decode`` mirrors it. A Tokenizer holds
no mutable state, so one instance may serve ``encode``/``decode`` calls from many threads at once (ONNX Runtime
sessions are thread-safe for ``run``).
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
_PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class TokenizerError(VQKitError):
    """An exported tokenizer folder that cannot be used (missing, corrupt, not a vqkit export)."""


def _resolve_providers(providers: str | Sequence[str] | None) -> list[str]:
    import onnxruntime as ort

    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    available = ort.get_available_providers()
    out = []
    for p in providers:
        name = _PROVIDER_ALIASES.get(p.lower(), p)
        if name not in available:
            raise TokenizerError(
                f"ONNX Runtime provider {p!r} is not available here; available: {', '.join(available)}"
            )
        out.append(name)
    return out


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
        info_path = self.path / METADATA_FILE
        if not self.path.is_dir():
            raise TokenizerError(
                f"no exported tokenizer folder at {self.path} (make one with `vqkit export`)"
            )
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError:
            raise TokenizerError(
                f"{self.path} has no {METADATA_FILE}; is it a `vqkit export` folder?"
            ) from None
        except (OSError, ValueError) as exc:
            raise TokenizerError(f"{info_path} is not readable JSON ({exc})") from exc
        if not isinstance(info, dict) or info.get("format") != "vqkit.export":
            raise TokenizerError(f"{info_path} does not describe a vqkit export")
        self.info: dict[str, Any] = info
        try:
            self.channels = int(info["channels"])
            self.image_size = int(info["image_size"])
            self.grid = (int(info["grid"][0]), int(info["grid"][1]))
            self.codebook_size = int(info["codebook_size"])
            self.num_codebooks = int(info.get("num_codebooks", 1))
            files = {role: info[role]["file"] for role in ("encoder", "decoder")}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise TokenizerError(f"{info_path} lacks a field it needs ({exc!r})") from exc
        h, w = self.grid
        self.codes_shape: tuple[int, ...] = (h, w) if self.num_codebooks == 1 else (h, w, self.num_codebooks)
        self.providers = _resolve_providers(providers)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self._sessions = {}
        for role, name in files.items():
            file = self.path / str(name)
            if not file.is_file():
                raise TokenizerError(f"{self.path} lacks its {role} graph {name}")
            try:
                self._sessions[role] = ort.InferenceSession(str(file), options, providers=self.providers)
            except Exception as exc:  # onnxruntime raises its own types for corrupt or unsupported files
                raise TokenizerError(f"ONNX Runtime cannot load {file}: {exc}") from exc
        self._names = {
            role: (s.get_inputs()[0].name, s.get_outputs()[0].name) for role, s in self._sessions.items()
        }

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
        """Codes -> int64 ``[N, h, w(, S)]`` after checking shape, dtype and range; and whether unbatched."""
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
        return np.ascontiguousarray(x, dtype=np.int64), single

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
