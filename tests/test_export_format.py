"""What an exported tokenizer tells an app, and what it accepts: old runtimes, self-describing graphs, int32
codes, out-of-range codes that cannot pass for valid ones, and a parity check that counts codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cli_run import run

import vqkit
from vqkit.data import load_mnist5k
from vqkit.export import check_parity, export
from vqkit.exporters.onnx import min_ir_version, min_onnxruntime
from vqkit.runtime import Tokenizer

SMALL = {"encoder_options": {"widths": [8, 16, 32]}, "decoder_options": {"widths": [32, 16, 8]}}


def _digits(n: int, channels: int = 1) -> np.ndarray:
    x = load_mnist5k("test")[0][:n]
    return np.repeat(x, channels, axis=1) if channels > 1 else x


@pytest.fixture(scope="module")
def fsq_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[vqkit.VQVAE, Path, object]:
    model = vqkit.build_model("conv3", "fsq", channels=1, seed=0, **SMALL).eval()
    folder = tmp_path_factory.mktemp("fsq") / "tok"
    report = export(model, folder)  # every default: opset, IR version, codes dtype, held-out images
    return model, folder, report


def test_default_export_loads_in_old_runtimes_and_describes_itself(fsq_export) -> None:
    model, folder, report = fsq_export
    assert report.parity.passed and report.parity.images == 500  # all of mnist5k's held-out digits
    info = json.loads((folder / "vqkit.json").read_text())
    assert info["opset"] == 18 and info["ir_version"] == 8 and info["min_onnxruntime"] == "1.16"
    assert info["codes_dtype"] == "int32" and info["codes"]["range"] == [0, 999]
    pre = info["preprocessing"]
    assert pre["pixel_mapping"] == "x / 127.5 - 1" and pre["channel_order"] == "L (grey)"
    assert (
        "19595 R + 38470 G + 7471 B" in pre["grey_conversion"]
        and "width then height" in pre["resize"]["pass_order"]
    )
    assert "(new_width - 32) // 2" in pre["resize"]["crop"]
    for role in ("encoder", "decoder"):
        proto = onnx.load(str(folder / f"{role}.onnx"))
        assert proto.ir_version == 8 and [(o.domain, o.version) for o in proto.opset_import] == [("", 18)]
        props = {p.key: p.value for p in proto.metadata_props}
        assert props["vqkit_graph"] == role and props["vqkit_codebook_size"] == "1000"
        assert props["vqkit_pixel_mapping"] == "x / 127.5 - 1" and props["vqkit_grid"] == "[4, 4]"
        assert "grid column" in props["vqkit_codes_last_axis"] and "NaN" in props["vqkit_out_of_range"]
        described = json.loads(props["vqkit_json"])
        assert described["preprocessing"] == pre and described["codes"] == info["codes"]
        assert described["min_onnxruntime"] == "1.16"
    enc = onnx.load(str(folder / "encoder.onnx")).graph
    dec = onnx.load(str(folder / "decoder.onnx")).graph
    assert enc.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert dec.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_decoder_takes_int32_and_int64_and_nans_out_of_range_codes(fsq_export) -> None:
    model, folder, _ = fsq_export
    tok = Tokenizer(folder)
    codes = tok.encode(np.repeat(_digits(3), 1, axis=1).transpose(0, 2, 3, 1).copy())
    assert codes.dtype == np.int64  # the runtime's encode keeps giving int64
    want = model.decode(torch.from_numpy(codes)).numpy()
    for dtype in (np.int32, np.int64):
        assert np.abs(tok.decode(codes.astype(dtype)) - want).max() <= 1e-5
    raw = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
    bad = codes.astype(np.int32).copy()
    bad[0, 1, 2] = 1000  # fsq's codebook is 1000 codes: 1000 would otherwise decode as something
    bad[1, 0, 0] = -1  # and a negative code would wrap around
    out = raw.run(None, {"codes": bad})[0]
    assert np.isnan(out[0]).all() and np.isnan(out[1]).all()
    assert np.abs(out[2] - want[2]).max() <= 1e-5
    with pytest.raises(vqkit.VQKitError, match=r"codes must lie in \[0, 999\]"):
        tok.decode(bad)


def test_uint8_encoder_and_codes_counted_per_codebook(tmp_path: Path) -> None:
    model = vqkit.build_model("conv3", "rvq", channels=3, seed=0, **SMALL).eval()
    s = model.num_codebooks
    assert s > 1
    report = export(model, tmp_path / "tok", num_images=24, options={"uint8_encoder": True})
    p = report.parity
    assert p.passed and p.num_codebooks == s and len(p.distinct_codes) == s
    assert p.positions_compared == 24 * 16 and p.codes_compared == 24 * 16 * s
    assert f"({24 * 16} positions x {s} codebooks)" in p.format()
    info = json.loads((tmp_path / "tok" / "vqkit.json").read_text())
    assert info["encoder_uint8"]["input"] == {
        "name": "pixels", "dtype": "uint8", "shape": ["batch", 32, 32, 3], "layout": "NHWC", "value_range": [0, 255],
    }  # fmt: skip
    assert "codebook" in info["codes"]["last_axis"]
    pixels = _digits(8, 3).transpose(0, 2, 3, 1).copy()
    session = ort.InferenceSession(
        str(tmp_path / "tok" / "encoder_uint8.onnx"), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {"pixels": pixels})[0]
    want = model.encode(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1).numpy()
    assert got.dtype == np.int32 and np.array_equal(got, want)


class _Exact:
    def __init__(self, model: vqkit.VQVAE) -> None:
        self.model = model

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.model.encode(torch.from_numpy(images)).numpy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.model.decode(torch.from_numpy(codes)).numpy()


def test_parity_warns_when_the_model_uses_too_few_codes() -> None:
    model = vqkit.build_model("conv3", "vq", channels=1, seed=0, **SMALL).eval()
    with torch.no_grad():  # a collapsed encoder: every latent the same, so one code everywhere
        model.encoder.net[-1].weight.zero_()
        model.encoder.net[-1].bias.zero_()
    report = check_parity(model, _Exact(model), _digits(32))
    assert report.passed and report.distinct_codes == [1] and report.few_codes
    assert "WARNING" in report.format() and "only 1 distinct codes of 512" in report.format()
    assert report.to_dict()["warning"] == report.warning


def test_ir_version_follows_the_opset_and_is_checked(tmp_path: Path) -> None:
    assert [min_ir_version(o) for o in (18, 19, 20, 21)] == [8, 9, 9, 10]
    assert min_onnxruntime(18, 8) == "1.16" and min_onnxruntime(18, 10) == "1.18"
    assert min_onnxruntime(21, 10) == "1.18"
    path = vqkit.save(
        vqkit.build_model("conv3", "vq", channels=1, seed=0, **SMALL), tmp_path / "m.safetensors"
    )
    code, text = run("export", str(path), "-o", str(tmp_path / "t"), "--opset", "21", "--ir-version", "9")
    assert code == 1 and "ir_version must be between 10" in text and text.strip().count("\n") == 0, text
    code, text = run("export", str(path), "-o", str(tmp_path / "t"), "--codes-dtype", "int16")
    assert code == 2 and "int16" in text
    assert not (tmp_path / "t").exists()
