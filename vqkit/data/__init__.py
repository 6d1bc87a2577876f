"""Image data for vqkit. The built-in dataset ``mnist5k`` ships inside the package (no download)."""

from __future__ import annotations

from importlib import resources

import numpy as np

BUILTIN = ("mnist5k",)


def load_mnist5k(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The built-in MNIST subset: uint8 images ``[N, 1, 32, 32]`` (28x28 digits padded by 2) and labels ``[N]``.

    ``split`` is ``"train"`` (4,500 images) or ``"test"`` (500, held out; fixed split). See ``MNIST5K.md``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with (
        resources.files(__name__).joinpath("mnist5k.npz").open("rb") as f,
        np.load(f, allow_pickle=False) as z,
    ):
        return z[f"{split}_images"], z[f"{split}_labels"]
