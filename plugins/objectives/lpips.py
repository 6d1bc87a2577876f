"""LPIPS, the learned perceptual distance of Zhang et al. 2018 (VGG16 variant), as a frozen loss.

The network is torchvision's VGG16 feature stack (built without downloading anything) and LPIPS's five
linear heads. Weights come from one safetensors file (nothing is downloaded and nothing is unpickled):

- tensors ``features.N.weight`` / ``features.N.bias`` for VGG16's 13 convolutions (N = 0, 2, 5, 7, 10, 12,
  14, 17, 19, 21, 24, 26, 28: torchvision's ``vgg16().features`` numbering), and
- ``lin.K.weight`` of shape ``[1, C_K, 1, 1]`` for the five heads (C = 64, 128, 256, 512, 512).

Make it once from torchvision's ImageNet VGG16 and the ``lpips`` package's ``weights/v0.1/vgg.pth``::

    import torch, torchvision
    from vqkit.plugins.objectives.lpips import save_lpips_weights, default_weights_path
    vgg = torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict()
    lin = torch.load("lpips/weights/v0.1/vgg.pth", weights_only=True)
    save_lpips_weights(vgg, lin, default_weights_path())
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from vqkit.errors import ShapeError, VQKitError
from vqkit.objectives import Objective
from vqkit.registry import objectives

FILE_NAME = "lpips_vgg16.safetensors"
CHANNELS = (64, 128, 256, 512, 512)
# torchvision vgg16().features: the layer index after which each LPIPS feature is taken (relu1_2 ... relu5_3)
SLICE_ENDS = (4, 9, 16, 23, 30)
# VGG16 ("D") convolutions: (features index, in channels, out channels)
CONVS = tuple(
    zip(
        (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        (3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512),
        (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512),
    )
)
# LPIPS's input scaling (from its ImageNet-normalised VGG): (x - shift) / scale on [-1, 1] images.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def default_weights_path() -> Path:
    """Where the weights are looked for when no path is given: torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FILE_NAME


def expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, cin, cout in CONVS:
        shapes[f"features.{i}.weight"] = (cout, cin, 3, 3)
        shapes[f"features.{i}.bias"] = (cout,)
    for k, c in enumerate(CHANNELS):
        shapes[f"lin.{k}.weight"] = (1, c, 1, 1)
    return shapes


def read_lpips_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The checked tensors of an LPIPS weight file: every name present with its shape, nothing else, all
    floating point and finite. Shapes are checked from the header before any tensor is read."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise VQKitError(
            f"LPIPS weights not found at {path}: put a safetensors file of VGG16 + LPIPS linear weights "
            f"there (or name one with the lpips option weights=PATH); "
            "vqkit.plugins.objectives.lpips explains how to make it"
        )
    want = expected_shapes()
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            missing = sorted(set(want) - names)
            extra = sorted(names - set(want))
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
                if extra:
                    parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
                raise VQKitError(f"{path} is not an LPIPS VGG16 weight file: {'; '.join(parts)}")
            for name, shape in want.items():
                got = tuple(f.get_slice(name).get_shape())
                if got != shape:
                    raise VQKitError(f"{path}: tensor {name} has shape {list(got)}, expected {list(shape)}")
            tensors = {name: f.get_tensor(name) for name in want}
    except (SafetensorError, OSError) as exc:  # a truncated or foreign file
        raise VQKitError(f"{path} is not a readable safetensors file: {exc}") from None
    for name, t in tensors.items():
        if not t.dtype.is_floating_point:
            raise VQKitError(f"{path}: tensor {name} is {t.dtype}, expected floating point")
        if not torch.isfinite(t).all():
            raise VQKitError(f"{path}: tensor {name} holds NaN or infinite values")
    return {name: t.float() for name, t in tensors.items()}


def save_lpips_weights(
    vgg_state: Mapping[str, torch.Tensor],
    lin_state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
) -> Path:
    """Write the weight file :class:`LPIPS` reads from torchvision's VGG16 state dict (``features.N.*``;
    other keys ignored) and LPIPS's linear heads (``linK.model.1.weight`` as in the ``lpips`` package, or
    ``lin.K.weight``)."""
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    for i, _, _ in CONVS:
        for kind in ("weight", "bias"):
            out[f"features.{i}.{kind}"] = vgg_state[f"features.{i}.{kind}"]
    for k in range(len(CHANNELS)):
        key = f"lin{k}.model.1.weight" if f"lin{k}.model.1.weight" in lin_state else f"lin.{k}.weight"
        out[f"lin.{k}.weight"] = lin_state[key]
    out = {k: v.detach().float().contiguous().cpu() for k, v in out.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(out, str(tmp))
    os.replace(tmp, path)
    return path


def _vgg16_features() -> nn.Sequential:
    """VGG16's convolutional stack up to relu5_3, with torchvision's layer numbering, built untrained."""
    from torchvision.models import vgg

    return vgg.make_layers(vgg.cfgs["D"], batch_norm=False)[: SLICE_ENDS[-1]]


def _unit(t: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return t / (torch.sqrt((t * t).sum(dim=1, keepdim=True)) + eps)


@objectives.register("lpips")
class LPIPS(Objective):
    """LPIPS perceptual distance (VGG16 + learned linear heads), frozen; weights from a safetensors file.

    Options: ``weights``: path of the safetensors weight file (default: ``lpips_vgg16.safetensors`` in torch's
    hub cache, ``$TORCH_HOME/hub/checkpoints``). Gray images are repeated to three channels.
    """

    @staticmethod
    def weights_available() -> bool:
        """Whether the default weight file is in place (``vqkit eval`` then measures LPIPS unasked)."""
        return default_weights_path().is_file()

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        tensors = read_lpips_weights(weights or default_weights_path())  # checked before building anything
        self.features = _vgg16_features()
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        self.load_state_dict(tensors)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # frozen: always in evaluation mode

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ShapeError(f"lpips compares 1- or 3-channel images, got {x.shape[1]} channels")
        if min(x.shape[-2:]) < 16:
            raise ShapeError(f"lpips needs images of at least 16x16 pixels, got {list(x.shape[-2:])}")
        h = (x - self.shift) / self.scale
        feats, start = [], 0
        for end in SLICE_ENDS:
            h = self.features[start:end](h)
            feats.append(h)
            start = end
        return feats

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS of each image pair, ``[B]`` in fp32."""
        fx, fy = self._feats(x.float()), self._feats(y.float())
        total = torch.zeros(x.shape[0], device=x.device)
        for lin, a, b in zip(self.lin, fx, fy):
            total = total + lin((_unit(a) - _unit(b)) ** 2).mean(dim=(1, 2, 3))
        return total

    def forward(
        self, x: torch.Tensor, recon: torch.Tensor, *, step: int, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        return self.distance(x, recon).mean()
