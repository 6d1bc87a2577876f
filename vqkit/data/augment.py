"""Training augmentations that tokenizer recipes use: random resized crop and horizontal flip.

Every random choice comes from a generator seeded by (seed, epoch, sample index), never from a stream that
advances with the data: the crop of an image in an epoch is the same whichever process decodes it, in
whatever order, and a resumed run redoes exactly the crops the interrupted one would have made.

One function does the pixels, :func:`augment_image`, on the uint8 square every path holds (the image resized
and centre-cropped to the run's size): a decoding worker calls it on the square it just decoded, a run that
holds its images in memory on the stored square. So both residencies give the same augmented pixels, and
switching between them changes speed only. Torch-free (numpy + Pillow): the decoding workers run it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vqkit.data.common import DataError

# A tag mixed into the seed so that augmentation draws never coincide with other uses of the same seed.
_STREAM_TAG = 0xA06


@dataclass(frozen=True)
class Augment:
    """``scale``: the range of the crop's area as a fraction of the image (``(1, 1)``: the whole image,
    the usual centre square); ``ratio``: the range of the crop's aspect ratio (width / height), as
    torchvision's ``RandomResizedCrop``; ``flip``: mirror left-right with probability 1/2."""

    scale: tuple[float, float] = (1.0, 1.0)
    flip: bool = False
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.scale)
        if not (0 < lo <= hi <= 1):
            raise DataError(f"augment scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        rlo, rhi = (float(v) for v in self.ratio)
        if not (0 < rlo <= rhi):
            raise DataError(f"augment ratio must satisfy 0 < min <= max, got {self.ratio}")
        object.__setattr__(self, "scale", (lo, hi))
        object.__setattr__(self, "ratio", (rlo, rhi))

    @property
    def crops(self) -> bool:
        return self.scale != (1.0, 1.0)

    @property
    def active(self) -> bool:
        return self.crops or self.flip

    def describe(self) -> str:
        parts = []
        if self.crops:
            parts.append(f"random resized crop (area {self.scale[0]:g}-{self.scale[1]:g})")
        if self.flip:
            parts.append("horizontal flip")
        return " + ".join(parts) or "none"

    def draw(
        self, seed: int, epoch: int, index: int, width: int, height: int
    ) -> tuple[tuple[int, ...], bool]:
        """The crop box ``(left, top, right, bottom)`` in the image's pixels and whether to flip, for sample
        ``index`` in ``epoch``: a pure function of its arguments."""
        rng = np.random.default_rng([_STREAM_TAG, seed & 0xFFFFFFFF, epoch, index])
        box = self._box(rng, width, height) if self.crops else _centre_box(width, height)
        flip = bool(self.flip and rng.random() < 0.5)
        return box, flip

    def _box(self, rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
        # torchvision's RandomResizedCrop: ten tries at a random area and aspect ratio, else a centre crop.
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return left, top, left + w, top + h
        return _centre_box(width, height)


def _centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


NO_AUGMENT = Augment()


def augment_image(square: np.ndarray, augment: Augment, seed: int, epoch: int, index: int) -> np.ndarray:
    """A uint8 ``[C, S, S]`` image -> the same, cropped (and resized back to ``S x S``, bicubic) and flipped
    as drawn for sample ``index`` in ``epoch``."""
    c, h, w = square.shape
    box, flip = augment.draw(seed, epoch, index, w, h)
    if augment.crops:
        from PIL import Image

        im = Image.fromarray(square[0] if c == 1 else np.ascontiguousarray(square.transpose(1, 2, 0)))
        out = np.asarray(im.resize((w, h), Image.BICUBIC, box=box), dtype=np.uint8)
        square = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
    return np.ascontiguousarray(square[:, :, ::-1] if flip else square)


def augment_images(
    images: np.ndarray, samples: list[tuple[int, int]], augment: Augment, seed: int
) -> np.ndarray:
    """:func:`augment_image` over a uint8 batch ``[B, C, S, S]`` whose images are ``samples`` (epoch, index)."""
    if not augment.active:
        return images
    return np.stack(
        [augment_image(x, augment, seed, e, i) for x, (e, i) in zip(images, samples, strict=True)]
    )
