"""Make benchmarks/data/photo32.npz: 32x32 RGB patches cut from scikit-image's bundled sample photos.

    pip install scikit-image==0.26.0 && python benchmarks/make_photo_patches.py

Every photo used is public domain or CC0 (see benchmarks/data/PHOTO32.md). Each photo is taken at full size
and at half size (box filter; the large retina photo at half and quarter size), cut into non-overlapping
32x32 patches on a fixed grid, and patches that are almost flat (pixel standard deviation under 4 of 255:
black sky, the retina's border) are dropped. Five photos give the training patches; two other photos, never
trained on, give the ``unseen`` patches.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

TRAIN_PHOTOS = {
    "astronaut.png": (1, 0.5),
    "coffee.png": (1, 0.5),
    "hubble_deep_field.jpg": (1, 0.5),
    "retina.jpg": (0.5, 0.25),
    "rocket.jpg": (1, 0.5),
}
UNSEEN_PHOTOS = {"chelsea.png": (1, 0.5), "ihc.png": (1, 0.5)}
SIZE = 32
MIN_STD = 4.0


def patches(path: str, scales: tuple[float, ...]) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    out = []
    for s in scales:
        w, h = image.size
        a = np.asarray(image if s == 1 else image.resize((round(w * s), round(h * s)), Image.BOX))
        for y in range(0, a.shape[0] - SIZE + 1, SIZE):
            for x in range(0, a.shape[1] - SIZE + 1, SIZE):
                p = a[y : y + SIZE, x : x + SIZE]
                if p.std() >= MIN_STD:
                    out.append(p.transpose(2, 0, 1))
    return np.stack(out)


def main() -> int:
    import skimage

    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    parts = {}
    for split, photos in (("train", TRAIN_PHOTOS), ("unseen", UNSEEN_PHOTOS)):
        arrays = [patches(os.path.join(folder, name), scales) for name, scales in photos.items()]
        parts[f"{split}_images"] = np.ascontiguousarray(np.concatenate(arrays), dtype=np.uint8)
        parts[f"{split}_source"] = np.concatenate(
            [np.full(len(a), i, np.uint8) for i, a in enumerate(arrays)]
        )
        parts[f"{split}_photos"] = np.array(list(photos))
        print(split, {n: len(a) for n, a in zip(photos, arrays)}, "total", len(parts[f"{split}_images"]))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "photo32.npz")
    np.savez_compressed(out, **parts)
    print(out, os.path.getsize(out) // 1024, "KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
