"""The photo32 benchmark set (benchmarks/data/photo32.npz, see data/PHOTO32.md): 32x32 RGB patches of five
photos to train on, and patches of two other photos no model trains on (``unseen``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PATH = Path(__file__).resolve().parent / "data" / "photo32.npz"


def load(split: str) -> np.ndarray:
    """uint8 ``[N, 3, 32, 32]`` patches: ``train`` or ``unseen``."""
    with np.load(PATH, allow_pickle=False) as z:
        return z[f"{split}_images"]


def write_folder(folder: Path) -> Path:
    """The training patches as PNG files, so ``vqkit train --data FOLDER`` (and ``TrainConfig(data=...)``)
    reads them like any folder: its own hash split holds about one patch in ten out (``split="test"``)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, patch in enumerate(load("train")):
        Image.fromarray(patch.transpose(1, 2, 0)).save(folder / f"p{i:05d}.png")
    return folder
