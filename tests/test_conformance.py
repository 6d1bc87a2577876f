"""Every registered encoder, decoder and quantizer passes vqkit.testing, the kit plugin authors run; and the
kit catches components that break the contract, saying what the contract wanted."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vqkit
from vqkit.contracts import Quantized
from vqkit.registry import decoders, encoders, quantizers
from vqkit.testing import check_decoder, check_encoder, check_quantizer

# Collected from the registries, so a new built-in (or an installed plugin) is checked without editing this.
vqkit.load_plugins()
ENCODERS, DECODERS, QUANTIZERS = encoders.names(), decoders.names(), quantizers.names()

# Narrow networks keep the run fast; the checks do not depend on width.
FAST_OPTIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("encoder", "conv3"): {"widths": (8, 16, 16)},
    ("decoder", "conv3"): {"widths": (16, 16, 8)},
    ("encoder", "tiny"): {"width": 16},
    ("decoder", "tiny"): {"width": 16},
    ("encoder", "vqgan"): {
        "ch": 8,
        "ch_mult": (1, 2),
        "num_res_blocks": 1,
        "z_channels": 4,
        "norm_groups": 4,
    },
    ("decoder", "vqgan"): {
        "ch": 8,
        "ch_mult": (1, 2),
        "num_res_blocks": 1,
        "z_channels": 4,
        "norm_groups": 4,
    },
}


# ONNX export parity (the kit's last check) is left out here only because tests/test_export.py already runs
# that same export and parity check for every registered quantizer; doing it twice would double this file's
# time. test_the_kit_checks_onnx_export_parity below covers the kit's own ONNX path.
@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_conforms(name: str) -> None:
    check_encoder(encoders.get(name), latent_dim=8, onnx=False, **FAST_OPTIONS.get(("encoder", name), {}))


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_conforms(name: str) -> None:
    check_decoder(
        decoders.get(name), latent_dim=8, grid=2, onnx=False, **FAST_OPTIONS.get(("decoder", name), {})
    )


@pytest.mark.parametrize("name", QUANTIZERS)
def test_quantizer_conforms(name: str) -> None:
    check_quantizer(quantizers.get(name), dim=8, codebook_size=32, onnx=False)


# --- the kit catches what breaks the contract ----------------------------------------------------------
class GoodVQ(nn.Module):
    """A minimal correct quantizer; the broken ones below each change one thing."""

    num_codebooks = 1

    def __init__(self, dim: int | None = None, codebook_size: int | None = None) -> None:
        super().__init__()
        self.dim, self.codebook_size = int(dim or 8), int(codebook_size or 16)
        self.codebook = nn.Parameter(torch.randn(self.codebook_size, self.dim))

    def forward(self, z: torch.Tensor) -> Quantized:
        codes = self.quantize(z)
        z_q = self.dequantize(codes)
        return Quantized(z + (z_q - z).detach(), codes, F.mse_loss(z, z_q.detach()), {})

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, enabled=False):  # the search in fp32, also under bf16 autocast
            return self._search(z.float(), self.codebook.float())

    @staticmethod
    def _search(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)
        return dist.argmin(1).reshape(b, h, w)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook[codes].permute(0, 3, 1, 2)


class Int32Codes(GoodVQ):
    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        return super().quantize(z).int()


class NoStraightThrough(GoodVQ):
    def forward(self, z: torch.Tensor) -> Quantized:
        out = super().forward(z)
        return Quantized(self.dequantize(out.indices), out.indices, out.loss, {})


class CountsInQuantize(GoodVQ):
    def __init__(self, dim: int | None = None, codebook_size: int | None = None) -> None:
        super().__init__(dim, codebook_size)
        self.register_buffer("calls", torch.zeros(()))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().quantize(z)


class StateOutsideTheStateDict(GoodVQ):
    def __init__(self, dim: int | None = None, codebook_size: int | None = None) -> None:
        super().__init__(dim, codebook_size)
        self.shift = torch.randn(self.dim)  # a plain attribute: the model file does not store it

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return super().dequantize(codes) + self.shift.view(1, -1, 1, 1)


class BatchMixing(GoodVQ):
    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        return super().quantize(z - z.mean(dim=0, keepdim=True))


class ExportsOtherCodes(GoodVQ):
    """Trains on one search and exports another (here: shifted by one code)."""

    def forward(self, z: torch.Tensor) -> Quantized:
        codes = GoodVQ.quantize(self, z)
        z_q = self.dequantize(codes)
        return Quantized(z + (z_q - z).detach(), codes, F.mse_loss(z, z_q.detach()), {})

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        return (super().quantize(z) + 1) % self.codebook_size


class Bf16Search(GoodVQ):
    """Searches in whatever precision autocast picks: bf16 distances under bf16 training."""

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        return self._search(z, self.codebook)


class OneCodebookAxis(GoodVQ):
    """One codebook, but codes [B, h, w, 1]."""

    def forward(self, z: torch.Tensor) -> Quantized:
        out = super().forward(z)
        return Quantized(out.z_q, out.indices.unsqueeze(-1), out.loss, {})


class WrongZqShape(GoodVQ):
    def forward(self, z: torch.Tensor) -> Quantized:
        out = super().forward(z)
        return Quantized(out.z_q.transpose(2, 3), out.indices, out.loss, {})


class TwoCodebooks(nn.Module):
    """Product quantization: each half of the channels picks from its own codebook; codes [B, h, w, 2]."""

    num_codebooks = 2

    def __init__(self, dim: int | None = None, codebook_size: int | None = None) -> None:
        super().__init__()
        self.dim, self.codebook_size = int(dim or 8), int(codebook_size or 16)
        self.books = nn.ModuleList(GoodVQ(self.dim // 2, self.codebook_size) for _ in range(2))

    def forward(self, z: torch.Tensor) -> Quantized:
        codes = self.quantize(z)
        z_q = self.dequantize(codes)
        used = [float(torch.unique(codes[..., i]).numel()) for i in range(2)]
        return Quantized(
            z + (z_q - z).detach(), codes, F.mse_loss(z, z_q.detach()), {"codes_used": self.usage(used)}
        )

    def usage(self, used: list[float]) -> torch.Tensor:
        return torch.tensor(sum(used) / len(used))  # the mean over codebooks, as the contract says

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        halves = z.chunk(2, dim=1)
        return torch.stack([book.quantize(half) for book, half in zip(self.books, halves)], dim=-1)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.cat([book.dequantize(codes[..., i]) for i, book in enumerate(self.books)], dim=1)


class SummedUsage(TwoCodebooks):
    def usage(self, used: list[float]) -> torch.Tensor:
        return torch.tensor(sum(used))


def test_a_correct_quantizer_passes() -> None:
    check_quantizer(GoodVQ, dim=8, codebook_size=16, onnx=False)


@pytest.mark.parametrize(
    "cls, message",
    [
        (
            Int32Codes,
            r"forward\(z\).indices is \[2, 4, 8\] torch.int32; the contract wants \[2, 4, 8\] torch.int64",
        ),
        (NoStraightThrough, r"no gradient flows from forward\(z\).z_q back to its input"),
        (CountsInQuantize, r"quantize in train mode changed state \['calls'\]; it must be pure"),
        (
            StateOutsideTheStateDict,
            r"decodes differently; all state .* must be parameters or registered buffers",
        ),
        (BatchMixing, r"different codes for a sample alone than in a batch"),
        (ExportsOtherCodes, r"in eval mode forward\(z\).indices must equal quantize\(z\)"),
        (Bf16Search, r"under torch.autocast\(dtype=torch.bfloat16\), quantize\(z\) gives other codes"),
        (
            OneCodebookAxis,
            r"forward\(z\).indices is \[2, 4, 8, 1\] torch.int64; the contract wants \[2, 4, 8\] torch.int64 "
            r"\(int64 \[B, h, w\]: one codebook, so no codebook axis \(not \[B, h, w, 1\]\)\)",
        ),
        (
            WrongZqShape,
            r"forward\(z\).z_q is \[2, 8, 8, 4\] torch.float32; the contract wants \[2, 8, 4, 8\] torch.float32",
        ),
        (
            SummedUsage,
            r"stats\['codes_used'\] is \d+ but its indices give [\d.]+ \(the mean over its codebooks\)",
        ),
    ],
)
def test_a_broken_quantizer_fails_with_what_the_contract_wants(cls: type, message: str) -> None:
    with pytest.raises(AssertionError, match=rf"^check_quantizer\({cls.__name__}\): .*{message}"):
        check_quantizer(cls, dim=8, codebook_size=16, onnx=False)


class PatchEncoder(nn.Module):
    def __init__(self, in_channels: int, latent_dim: int, factor: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, latent_dim, factor, stride=factor)
        self.downsample = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class NoDownsample(PatchEncoder):
    def __init__(self, in_channels: int, latent_dim: int) -> None:
        super().__init__(in_channels, latent_dim)
        del self.downsample


class TextLr(PatchEncoder):
    recommended_lr = "fast"


class WrongDownsample(PatchEncoder):
    def __init__(self, in_channels: int, latent_dim: int) -> None:
        super().__init__(in_channels, latent_dim)
        self.downsample = 2


class RGBOnly(PatchEncoder):
    def __init__(self, in_channels: int, latent_dim: int) -> None:
        super().__init__(3, latent_dim)


class PatchDecoder(nn.Module):
    def __init__(self, latent_dim: int, out_channels: int, squash: bool = True) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(latent_dim, out_channels, 4, stride=4)
        self.upsample, self.squash = 4, squash

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.conv(z) * 10
        return torch.tanh(y) if self.squash else y


def test_several_codebooks_pass_with_codes_per_codebook() -> None:
    check_quantizer(TwoCodebooks, dim=8, codebook_size=16, onnx=False)


def test_correct_encoder_and_decoder_pass() -> None:
    check_encoder(PatchEncoder, latent_dim=4, image_size=16, onnx=False)
    check_decoder(PatchDecoder, latent_dim=4, grid=2, onnx=False)


@pytest.mark.parametrize(
    "cls, message",
    [
        (NoDownsample, r"downsample factor as a positive int attribute `downsample`, got None"),
        (WrongDownsample, r"its output is \[2, 4, 4, 4\] torch.float32; the contract wants \[2, 4, 8, 8\]"),
        (RGBOnly, r"forward raised RuntimeError for input \[2, 1, 16, 16\]"),
        (TextLr, r"`recommended_lr` must be None or a positive number \(a peak Adam lr\), got 'fast'"),
    ],
)
def test_a_broken_encoder_fails_with_what_the_contract_wants(cls: type, message: str) -> None:
    with pytest.raises(AssertionError, match=rf"^check_encoder\({cls.__name__}\): .*{message}"):
        check_encoder(cls, latent_dim=4, image_size=16, onnx=False)


def test_a_decoder_outside_the_value_range_fails() -> None:
    with pytest.raises(AssertionError, match=r"the contract wants values in \[-1, 1\] \(end with tanh"):
        check_decoder(PatchDecoder, latent_dim=4, grid=2, squash=False, onnx=False)


def test_rejected_options_are_reported() -> None:
    with pytest.raises(
        AssertionError, match=r"vqkit.build_model could not use it: .*has no option 'bogus'|bogus"
    ):
        check_quantizer(GoodVQ, dim=8, bogus=1, onnx=False)


def test_the_kit_leaves_the_registries_as_they_were() -> None:
    before = {kind: reg.names() for kind, reg in vqkit.registry.REGISTRIES.items()}
    check_quantizer(GoodVQ, dim=8, codebook_size=16, onnx=False)
    assert {kind: reg.names() for kind, reg in vqkit.registry.REGISTRIES.items()} == before


class Untraceable(GoodVQ):
    """Python control flow on a tensor's value: fine in eager PyTorch, impossible to put in a graph."""

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        codes = super().quantize(z)
        return codes if int(codes.max()) < self.codebook_size else codes.clamp(max=0)


def test_the_kit_checks_onnx_export_parity() -> None:
    from vqkit.registry import exporters

    if "onnx" not in exporters:
        pytest.skip("no 'onnx' exporter is registered")
    check_quantizer(GoodVQ, dim=8, codebook_size=16, onnx=True)
    with pytest.raises(
        AssertionError, match=r"check_quantizer\(Untraceable\): the ONNX export failed: .*traceable"
    ):
        check_quantizer(Untraceable, dim=8, codebook_size=16, onnx=True)
