from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_run import run
from torch import nn

import vqkit
from vqkit.contracts import Quantized
from vqkit.data import load_mnist5k
from vqkit.export import ExportError, check_parity, export
from vqkit.exporters.onnx import OnnxExporter
from vqkit.exporters.subpixel import rewrite_conv_transpose
from vqkit.images import write_images
from vqkit.registry import exporters, quantizers
from vqkit.runtime import Tokenizer

vqkit.load_plugins()  # parametrize over every registered quantizer, including ones added after this file
SMALL = {"encoder_options": {"widths": [8, 16, 32]}, "decoder_options": {"widths": [32, 16, 8]}}


def _digits(n: int, channels: int = 3) -> np.ndarray:
    x = load_mnist5k("train")[0][:n]
    return np.repeat(x, channels, axis=1) if channels > 1 else x


def _trained_step(model: vqkit.VQVAE) -> vqkit.VQVAE:
    """Bring a fresh model closer to a trained one: latents scaled to unit spread (a fresh encoder's are tiny,
    so every latent sits near the same few codes in float-precision ties no runtime can break alike), then one
    training-mode pass on real digits, so data-initialised codebooks (k-means, EMA) are set."""
    x = torch.from_numpy(_digits(64, model.spec.channels)).float() / 127.5 - 1
    with torch.no_grad():
        last = model.encoder.net[-1]
        scale = 1.0 / model.encoder(x).std()
        last.weight.mul_(scale)
        last.bias.mul_(scale)
        model.train()
        model(x)
    return model.eval()


def _small_model(quantizer: str = "vq", **kw: object) -> vqkit.VQVAE:
    return vqkit.build_model("conv3", quantizer, seed=0, **{**SMALL, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("quantizer", quantizers.names())
def test_every_quantizer_exports_with_exact_parity(quantizer: str, tmp_path: Path) -> None:
    model = _trained_step(_small_model(quantizer))
    report = export(model, tmp_path / "tok", num_images=16)
    assert report.parity is not None and report.parity.passed, report.parity.format()
    # Codes agree, except float32 near-ties (each listed with its margin); decoders within 1e-5.
    assert (
        report.parity.codes_mismatched == report.parity.codes_tied and report.parity.decoder_max_abs <= 1e-5
    )
    info = json.loads((tmp_path / "tok" / "vqkit.json").read_text())
    assert info["encoder"]["output"]["shape"][1:] == list(model.codes_shape)
    assert info["num_codebooks"] == model.num_codebooks and info["parity"]["passed"] is True
    # The files where they landed, through the public runtime, agree with PyTorch on other images too.
    other = check_parity(model, Tokenizer(tmp_path / "tok"), _digits(4))
    assert other.passed, other.format()


def test_cli_export_writes_self_contained_graphs_and_metadata(tmp_path: Path) -> None:
    model = _small_model(decoder_options={"widths": [32, 16, 8], "head": "transpose"}, channels=1)
    path = vqkit.save(model, tmp_path / "m.safetensors")
    folder = tmp_path / "photos"
    write_images(_digits(30, 1), folder)
    code, text = run(
        "export", str(path), "-o", str(tmp_path / "tok"), "--opset", "20", "--data", str(folder),
        "--set", "subpixel=true", "--codes-dtype", "int64",
    )  # fmt: skip
    assert code == 0, text
    assert "PASSED" in text and "photos" in text and "identical" in text
    out = tmp_path / "tok"
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", "vqkit.json"]
    info = json.loads((out / "vqkit.json").read_text())
    assert info["opset"] == 20 and info["vqkit_version"] == vqkit.__version__
    assert info["ir_version"] == 9 and info["min_onnxruntime"] == "1.17"  # the lowest IR opset 20 allows
    assert info["channels"] == 1 and info["image_size"] == 32 and info["grid"] == [4, 4]
    assert info["codebook_size"] == 512 and info["codes_dtype"] == "int64" and info["value_range"] == [-1, 1]
    assert info["model"]["decoder_options"]["head"] == "transpose"
    assert info["graph_rewrites"]["conv_transpose_to_subpixel"] == 4  # the 1x1 head and three 4x4 layers
    assert info["parity"]["passed"] and info["parity"]["data"].startswith(str(folder))
    for name in ("encoder.onnx", "decoder.onnx"):
        proto = onnx.load(str(out / name))
        assert proto.opset_import[0].version == 20
        assert proto.ir_version == 9
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.dim_value  # dynamic batch axis
    ops = {n.op_type for n in onnx.load(str(out / "decoder.onnx")).graph.node}
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops


def test_subpixel_rewrite_computes_the_same_map() -> None:
    torch.manual_seed(0)
    for k, s, p in [(4, 2, 1), (1, 1, 0), (8, 4, 2), (3, 1, 1)]:
        layer = nn.ConvTranspose2d(5, 7, k, s, p)
        new, count = rewrite_conv_transpose(layer)
        x = torch.randn(3, 5, 6, 6)
        assert count == 1 and not isinstance(new, nn.ConvTranspose2d)
        assert torch.allclose(new(x), layer(x), atol=1e-5)
    odd = nn.ConvTranspose2d(5, 7, 3, 2, 1)  # output 2n-1: no sub-pixel form, left alone
    assert rewrite_conv_transpose(odd)[1] == 0


class _SkewedExporter(OnnxExporter):
    """Writes graphs of a slightly different model: what a broken exporter or graph rewrite would do."""

    def export(self, model: vqkit.VQVAE, folder: Path) -> dict:
        import copy

        other = copy.deepcopy(model)
        with torch.no_grad():
            other.encoder.net[-1].bias.add_(0.3)
            other.decoder.net[-1].bias.add_(1e-3)
        return super().export(other, folder)


def test_failed_parity_exits_1_reports_margins_and_keeps_the_old_export(tmp_path: Path) -> None:
    path = vqkit.save(_trained_step(_small_model(codebook_size=32, latent_dim=8)), tmp_path / "m.safetensors")
    out = tmp_path / "tok"
    out.mkdir()
    (out / "vqkit.json").write_text('{"format": "vqkit.export", "mine": 1}')  # an earlier export
    exporters.add("skewed", _SkewedExporter)
    try:
        code, text = run("export", str(path), "-o", str(out), "--format", "skewed", "--num-images", "8")
    finally:
        exporters.remove("skewed")
    assert code == 1
    assert "FAILED" in text and "codes differ" in text and "margin" in text and "too large" in text
    assert text.strip().splitlines()[-1].startswith("Error: parity check failed")
    assert sorted(p.name for p in out.iterdir()) == ["vqkit.json"]
    assert json.loads((out / "vqkit.json").read_text())["mine"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "tflite"], "unknown exporter 'tflite'"),
        (["--opset", "9"], "opset must be between 18 and 23"),
        (["--set", "subpixle=false"], "Did you mean 'subpixel'?"),
        (["--data", "nosuchdata"], "no data source 'nosuchdata'"),
    ],
)
def test_export_mistakes_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    path = vqkit.save(_small_model(), tmp_path / "m.safetensors")
    code, text = run("export", str(path), "-o", str(tmp_path / "tok"), *args)
    assert code == 1 and message in text and text.strip().count("\n") == 0, text
    assert not (tmp_path / "tok").exists()


def test_export_refuses_a_folder_holding_other_files(tmp_path: Path) -> None:
    path = vqkit.save(_small_model(), tmp_path / "m.safetensors")
    (tmp_path / "notes.txt").write_text("keep me")
    code, text = run("export", str(path), "-o", str(tmp_path), "--no-validate")
    assert code == 1 and "other files in it" in text
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    code, text = run("export", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "t"))
    assert code == 1 and "no such model file" in text


class _DataDependent(nn.Module):
    """A quantizer whose quantize branches in Python on tensor values: torch.export cannot trace it."""

    def __init__(self, dim: int | None = None, codebook_size: int | None = None) -> None:
        super().__init__()
        self.dim, self.codebook_size, self.num_codebooks = int(dim or 8), int(codebook_size or 16), 1
        self.codebook = nn.Parameter(torch.randn(self.codebook_size, self.dim))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        if z.abs().max() > 100:  # data-dependent Python control flow
            z = z / 100
        return torch.zeros(z.shape[0], z.shape[2], z.shape[3], dtype=torch.long) + z.mean().long()

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook[codes].permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> Quantized:
        codes = self.quantize(z)
        z_q = self.dequantize(codes)
        return Quantized(z + (z_q - z).detach(), codes, z_q.new_zeros(()), {})


def test_untraceable_quantizer_fails_with_a_clear_error(tmp_path: Path) -> None:
    quantizers.add("datadep", _DataDependent)
    try:
        model = _small_model("datadep")
        with pytest.raises(ExportError, match="cannot export the encoder graph to ONNX"):
            export(model, tmp_path / "tok", validate=False)
    finally:
        quantizers.remove("datadep")
    assert not (tmp_path / "tok").exists()


class _TorchRunner:
    """Runs the model itself, except that the encoder answers ``swap[torch_code]`` instead of the true code."""

    def __init__(self, model: vqkit.VQVAE, swap: dict[int, int]) -> None:
        self.model, self.swap = model, swap

    def encode(self, images: np.ndarray) -> np.ndarray:
        codes = self.model.encode(torch.from_numpy(images)).numpy().copy()
        for a, b in self.swap.items():
            codes[codes == a] = b
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.model.decode(torch.from_numpy(codes)).numpy()


def test_parity_tells_float_ties_from_real_mismatches() -> None:
    model = _trained_step(_small_model(latent_dim=8))
    images = _digits(16)
    codes = model.encode(torch.from_numpy(images).float() / 127.5 - 1)
    # spare > used: argmin keeps answering the lower index, the runner answers the other one
    used, spare = int(codes.flatten()[0]), max(set(range(512)) - set(codes.flatten().tolist()))
    with torch.no_grad():  # a duplicate code: choosing either one is a tie, whatever the runtime
        model.quantizer.embedding.weight[spare] = model.quantizer.embedding.weight[used]
    tied = check_parity(model, _TorchRunner(model, {used: spare}), images)
    n = int((codes == used).sum())
    # An exact tie (both codes exactly as near) is named as such, counted, and never a failure.
    assert tied.passed and tied.codes_mismatched == tied.codes_tied == tied.codes_exact_ties == n
    assert all(m.tie and m.exact_tie and m.margin == 0 for m in tied.mismatches)
    assert f"{n} differ by an exact tie" in tied.format() and "exact tie image" in tied.format()
    strict = check_parity(model, _TorchRunner(model, {used: spare}), images, tie_tolerance=0.0)
    assert strict.passed and strict.codes_exact_ties == n
    with torch.no_grad():  # a hair further: a float32 near-tie, tolerated by default, not at tolerance 0
        model.quantizer.embedding.weight[spare] *= 1 + 1e-7
    m = int((model.encode(torch.from_numpy(images).float() / 127.5 - 1) == used).sum())
    near = check_parity(model, _TorchRunner(model, {used: spare}), images)
    assert m > 0 and near.passed and near.codes_tied == m and near.codes_exact_ties == 0
    assert f"{m} differ by a float32 near-tie" in near.format() and "near-tie image" in near.format()
    strict = check_parity(model, _TorchRunner(model, {used: spare}), images, tie_tolerance=0.0)
    assert not strict.passed and strict.codes_tied == 0 and "MISMATCH" in strict.format()
    with torch.no_grad():
        model.quantizer.embedding.weight[spare] += 3.0  # now far away: a real mismatch
    wrong = check_parity(model, _TorchRunner(model, {used: spare}), images)
    assert not wrong.passed and wrong.codes_tied == 0 and wrong.codes_mismatched == n
    assert all(m.margin is not None and m.margin > 1 for m in wrong.mismatches)
    assert "MISMATCH image" in wrong.format()
