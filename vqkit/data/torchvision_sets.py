"""torchvision datasets by name. Downloaded only when asked; stored under a root folder (default
``~/.cache/vqkit``, or ``$VQKIT_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vqkit.data.common import DataError

# name -> (torchvision class, how it picks a split: "train" flag or "split" string, native size)
DATASETS: dict[str, tuple[str, str, int]] = {
    "mnist": ("MNIST", "train", 28),
    "fashion-mnist": ("FashionMNIST", "train", 28),
    "kmnist": ("KMNIST", "train", 28),
    "cifar10": ("CIFAR10", "train", 32),
    "cifar100": ("CIFAR100", "train", 32),
    "svhn": ("SVHN", "split", 32),
    "stl10": ("STL10", "split", 96),
}


def default_root() -> Path:
    return Path(os.environ.get("VQKIT_DATA") or Path.home() / ".cache" / "vqkit").expanduser()


def _as_nchw(data: Any) -> np.ndarray:
    arr = np.asarray(data.numpy() if hasattr(data, "numpy") else data, dtype=np.uint8)
    if arr.ndim == 3:  # MNIST family: [N, H, W]
        return arr[:, None]
    if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):  # CIFAR: [N, H, W, C]
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    return arr  # SVHN, STL10: already [N, C, H, W]


def _load_one(name: str, train: bool, root: Path, download: bool) -> np.ndarray:
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DataError(f"dataset {name!r} needs torchvision: pip install torchvision") from exc
    cls_name, how, _ = DATASETS[name]
    cls = getattr(tvd, cls_name)
    split_kw: dict[str, Any] = {"train": train} if how == "train" else {"split": "train" if train else "test"}
    try:
        ds = cls(str(root), download=download, **split_kw)
    except Exception as exc:  # torchvision raises RuntimeError when absent, URLError/OSError offline, ...
        if download:
            raise DataError(
                f"could not download {name!r} into {root} ({type(exc).__name__}: {exc}); check the network, "
                f"or download it on another machine and copy it into {root}"
            ) from exc
        raise DataError(
            f"dataset {name!r} is not in {root}; add --download to fetch it (needs the network), "
            f"or point --data-root at a folder that has it"
        ) from exc
    return _as_nchw(ds.data)


def load_torchvision(
    name: str, split: str, root: str | os.PathLike[str] | None, download: bool
) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` of a torchvision dataset at its native size and channels."""
    base = Path(root).expanduser() if root is not None else default_root()
    parts = [True, False] if split == "all" else [split == "train"]
    return np.concatenate([_load_one(name, train, base, download) for train in parts])
