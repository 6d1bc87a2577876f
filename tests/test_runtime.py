from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import run

import vqkit
from vqkit.data import load_mnist5k
from vqkit.errors import VQKitError
from vqkit.export import export
from vqkit.images import write_images
from vqkit.runtime import Tokenizer


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[vqkit.VQVAE, Path]:
    model = vqkit.build_model(
        "conv3", "vq", channels=3, codebook_size=64, latent_dim=8, seed=0,
        encoder_options={"widths": [8, 16, 32]}, decoder_options={"widths": [32, 16, 8]},
    ).eval()  # fmt: skip
    with torch.no_grad():  # latents at unit spread, like a trained model's: no float near-ties between codes
        x = torch.from_numpy(np.repeat(load_mnist5k("train")[0][:64], 3, axis=1)).float() / 127.5 - 1
        scale = 1.0 / model.encoder(x).std()
        model.encoder.net[-1].weight.mul_(scale)
        model.encoder.net[-1].bias.mul_(scale)
    folder = tmp_path_factory.mktemp("rt") / "tok"
    export(model, folder, num_images=16)
    return model, folder


def _digits(n: int) -> np.ndarray:
    """uint8 [N, 32, 32, 3]: held-out digits as RGB, channels last (how images come from files)."""
    x = load_mnist5k("test")[0][-n:]
    return np.repeat(x, 3, axis=1).transpose(0, 2, 3, 1).copy()


def _torch_codes(model: vqkit.VQVAE, nhwc: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(nhwc.transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1
    return model.encode(x).numpy()


def test_encode_accepts_every_documented_layout(exported: tuple[vqkit.VQVAE, Path]) -> None:
    model, folder = exported
    tok = Tokenizer(folder)
    images = _digits(6)
    want = _torch_codes(model, images)
    nchw = images.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1
    assert tok.encode(images).dtype == np.int64
    assert np.array_equal(tok.encode(images), want)  # uint8 NHWC
    assert np.array_equal(tok.encode(images[2]), want[2])  # uint8 HWC -> one image's codes [h, w]
    assert np.array_equal(tok.encode(nchw), want)  # float NCHW in [-1, 1] (float64 is converted)
    assert np.array_equal(tok.encode(nchw[3].astype(np.float32)), want[3])  # float CHW
    assert np.array_equal(tok.encode(images, batch_size=4), want)  # split into runs of 4 and 2
    assert tok.encode(images[:0]).shape == (0, 4, 4)


def test_decode_matches_pytorch_and_gives_uint8_pictures(exported: tuple[vqkit.VQVAE, Path]) -> None:
    model, folder = exported
    tok = Tokenizer(folder)
    codes = np.random.default_rng(0).integers(0, 64, size=(5, 4, 4)).astype(np.int32)
    want = model.decode(torch.from_numpy(codes).long()).numpy()
    got = tok.decode(codes)
    assert got.shape == (5, 3, 32, 32) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5
    assert tok.decode(codes[1]).shape == (3, 32, 32)
    pictures = tok.decode(codes, uint8=True)
    assert pictures.shape == (5, 32, 32, 3) and pictures.dtype == np.uint8
    assert np.abs(pictures.astype(int) - np.rint((want.transpose(0, 2, 3, 1) + 1) * 127.5)).max() <= 1


@pytest.mark.parametrize(
    "what, make, message",
    [
        ("images", lambda x: x[0, :, :, 0], "must be [H, W, C] or [N, H, W, C]"),  # 2-D grey for an RGB model
        ("images", lambda x: x[None], "must be [H, W, C] or [N, H, W, C]"),
        ("images", lambda x: x[..., :1], "expected 3-channel uint8 images"),
        ("images", lambda x: x.transpose(0, 3, 1, 2), "channels-last"),
        ("images", lambda x: x[:, :16, :16], "takes 32x32 images, got 16x16"),
        ("images", lambda x: x.astype(np.int32), "must be uint8"),
        ("images", lambda x: x.transpose(0, 3, 1, 2).astype(np.float32), "must lie in [-1, 1]"),
        ("images", lambda x: x.astype(np.float32) / 255, "channels-first"),
        ("codes", lambda c: c + 64, "codes must lie in [0, 63]"),
        ("codes", lambda c: c - 100, "got values from -"),
        ("codes", lambda c: c.astype(np.float32), "codes must be integers"),
        ("codes", lambda c: c[:, :2], "expected codes [N, 4, 4]"),
        ("codes", lambda c: c[None], "expected codes [N, 4, 4]"),
    ],
)
def test_bad_inputs_raise_one_clear_error(
    exported: tuple[vqkit.VQVAE, Path], what: str, make, message: str
) -> None:
    tok = Tokenizer(exported[1])
    with pytest.raises(VQKitError) as info:
        if what == "images":
            tok.encode(make(_digits(2)))
        else:
            tok.decode(make(np.zeros((2, 4, 4), dtype=np.int64)))
    assert message in str(info.value)


def test_bad_tokenizer_folders(tmp_path: Path, exported: tuple[vqkit.VQVAE, Path]) -> None:
    with pytest.raises(VQKitError, match="no exported tokenizer folder"):
        Tokenizer(tmp_path / "missing")
    with pytest.raises(VQKitError, match="has no vqkit.json"):
        Tokenizer(tmp_path)
    (tmp_path / "vqkit.json").write_text("{not json")
    with pytest.raises(VQKitError, match="not readable JSON"):
        Tokenizer(tmp_path)
    info = json.loads((exported[1] / "vqkit.json").read_text())
    (tmp_path / "vqkit.json").write_text(json.dumps(info))
    with pytest.raises(VQKitError, match="lacks its encoder graph encoder.onnx"):
        Tokenizer(tmp_path)
    (tmp_path / "encoder.onnx").write_bytes(b"garbage")
    (tmp_path / "decoder.onnx").write_bytes(b"garbage")
    with pytest.raises(VQKitError, match="ONNX Runtime cannot load"):
        Tokenizer(tmp_path)
    with pytest.raises(VQKitError, match="providers 'tpu' are not available"):
        Tokenizer(exported[1], providers=["tpu"])


def test_concurrent_encode_calls_share_one_tokenizer(exported: tuple[vqkit.VQVAE, Path]) -> None:
    model, folder = exported
    tok = Tokenizer(folder, threads=1)
    images = _digits(64)
    want = [_torch_codes(model, images[i::8]) for i in range(8)]
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            start.wait()
            results[i] = [tok.encode(images[i::8]) for _ in range(5)]
        except BaseException as exc:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(8):
        assert all(np.array_equal(r, want[i]) for r in results[i])


NO_TORCH = """
import sys
from pathlib import Path
import numpy as np
from vqkit.runtime import Tokenizer
tok = Tokenizer(sys.argv[1])
codes = tok.encode(np.zeros((2, 32, 32, 3), dtype=np.uint8))
tok.decode(codes, uint8=True)
from vqkit.cli.main import cli
out = Path(sys.argv[2])
cli(["encode", sys.argv[1], sys.argv[3], "-o", str(out / "codes.npy")], standalone_mode=False)
cli(["decode", sys.argv[1], str(out / "codes.npy"), "-o", str(out / "decoded")], standalone_mode=False)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH MODULES:", loaded)
assert not loaded, loaded
"""


def test_runtime_and_encode_decode_commands_never_import_torch(
    exported: tuple[vqkit.VQVAE, Path], tmp_path: Path
) -> None:
    write_images(_digits(3).transpose(0, 3, 1, 2), tmp_path / "photos")
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(exported[1]), str(tmp_path), str(tmp_path / "photos")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TORCH MODULES: []" in proc.stdout
    assert len(list((tmp_path / "decoded").glob("*.png"))) == 3


def test_cli_encode_then_decode(exported: tuple[vqkit.VQVAE, Path], tmp_path: Path) -> None:
    model, folder = exported
    images = _digits(4)
    write_images(images.transpose(0, 3, 1, 2), tmp_path / "photos")
    paths = sorted((tmp_path / "photos").glob("*.png"))
    code, text = run(
        "encode", str(folder), str(paths[3]), str(tmp_path / "photos"), "-o", str(tmp_path / "c.npy")
    )
    assert code == 0, text
    assert "encoded    5 images" in text
    codes = np.load(tmp_path / "c.npy")
    assert codes.dtype == np.int64 and codes.shape == (5, 4, 4)
    assert np.array_equal(codes[1:], _torch_codes(model, images)) and np.array_equal(codes[0], codes[4])
    code, text = run("decode", str(folder), str(tmp_path / "c.npy"), "-o", str(tmp_path / "out"), "--grid",
                     str(tmp_path / "grid.png"))  # fmt: skip
    assert code == 0, text
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[:2] == ["000000.png", "000001.png"]
    assert len(list((tmp_path / "out").iterdir())) == 5 and (tmp_path / "grid.png").is_file()


def test_cli_mistakes_are_one_line(exported: tuple[vqkit.VQVAE, Path], tmp_path: Path) -> None:
    folder = str(exported[1])
    np.save(tmp_path / "bad.npy", np.full((2, 4, 4), 99))
    (tmp_path / "empty").mkdir()
    cases = [
        (["encode", str(tmp_path / "nope"), folder, "-o", "x.npy"], "no exported tokenizer folder"),
        (["encode", folder, str(tmp_path / "missing.png"), "-o", "x.npy"], "no such image file"),
        (["encode", folder, str(tmp_path / "empty"), "-o", "x.npy"], "no image files in folder"),
        (
            ["decode", folder, str(tmp_path / "bad.npy"), "-o", str(tmp_path / "o")],
            "codes must lie in [0, 63]",
        ),
        (["decode", folder, str(tmp_path / "none.npy"), "-o", str(tmp_path / "o")], "no such codes file"),
    ]
    for args, message in cases:
        code, text = run(*args)
        assert code == 1 and message in text and text.strip().count("\n") == 0, text


def test_provider_lists_are_an_order_of_preference(exported: tuple[vqkit.VQVAE, Path]) -> None:
    import onnxruntime as ort

    tok = Tokenizer(exported[1], providers=["cuda", "cpu"])  # the README's line, with whichever onnxruntime
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert tok.providers == (["CUDAExecutionProvider"] if has_cuda else []) + ["CPUExecutionProvider"]
    if not has_cuda:
        with pytest.raises(VQKitError, match="'cuda' is not available.*onnxruntime-gpu"):
            Tokenizer(exported[1], providers="cuda")  # one name asked for: that one or an error
    with pytest.raises(VQKitError, match="'tpu', 'npu' are not available"):
        Tokenizer(exported[1], providers=["tpu", "npu"])


def test_exports_of_a_newer_format_are_refused_older_ones_load(
    tmp_path: Path, exported: tuple[vqkit.VQVAE, Path]
) -> None:
    import shutil

    from vqkit.export import METADATA_VERSION
    from vqkit.runtime import FORMAT_VERSION

    assert FORMAT_VERSION == METADATA_VERSION == 3
    folder = tmp_path / "tok"
    shutil.copytree(exported[1], folder)
    info = json.loads((folder / "vqkit.json").read_text())
    for version, ok in ((2, True), (1, True), (4, False), ("3", False)):
        (folder / "vqkit.json").write_text(json.dumps({**info, "format_version": version}))
        if ok:
            assert Tokenizer(folder).encode(_digits(2)).shape == (2, 4, 4)
        else:
            with pytest.raises(VQKitError, match="export format .* reads formats up to 3"):
                Tokenizer(folder)


def test_float_encoder_graph_flags_nan_and_out_of_range_images(exported: tuple[vqkit.VQVAE, Path]) -> None:
    """An ONNX graph cannot refuse input: an image with NaN, infinity or values outside [-1, 1] gets code -1
    everywhere (a NaN pixel used to turn every code into 0); the others in the batch are unaffected. The
    runtime refuses such input before the graph sees it."""
    import onnxruntime as ort

    model, folder = exported
    session = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    x = np.repeat(load_mnist5k("test")[0][:5], 3, axis=1).astype(np.float32) / np.float32(127.5) - 1
    x[1, 0, 3, 3] = np.nan
    x[2, 2, 0, 0] = np.inf
    x[3] = (x[3] + 1) * 127.5  # 0..255 passed as floats
    x[4, 1, 5, 5] = 1.0009  # within the slack: a valid image
    codes = session.run(None, {"images": x})[0]
    want = model.encode(torch.from_numpy(np.clip(x[[0, 4]], -1, 1))).numpy()
    assert (codes[1:4] == -1).all()
    assert np.array_equal(codes[[0, 4]], want)
    with pytest.raises(VQKitError, match="NaN or infinity"):
        Tokenizer(folder).encode(x[1])


@pytest.mark.parametrize("arch", ["conv3", "resnet"])
def test_graphs_take_an_empty_batch(tmp_path: Path, arch: str) -> None:
    """The graphs themselves, not only the runtime, accept a batch of 0 (resnet's GroupNorm used to export as
    a reshape ONNX Runtime refuses then); the export's parity check still passes."""
    import onnxruntime as ort

    options = {"downsample": 4, "widths": [8, 16], "norm_groups": 4} if arch == "resnet" else {}
    mirror = {**options, "widths": [16, 8]} if arch == "resnet" else {}
    model = vqkit.build_model(
        arch, "vq", channels=3, codebook_size=32, latent_dim=8, seed=0,
        encoder_options=options, decoder_options=mirror,
    ).eval()  # fmt: skip
    report = export(model, tmp_path / "tok", num_images=16)
    assert report.parity.passed
    h, w = model.grid
    for graph, x in (
        ("encoder", np.zeros((0, 3, 32, 32), np.float32)),
        ("decoder", np.zeros((0, h, w), np.int32)),
    ):
        session = ort.InferenceSession(
            str(tmp_path / "tok" / f"{graph}.onnx"), providers=["CPUExecutionProvider"]
        )
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert out.shape[0] == 0
    assert Tokenizer(tmp_path / "tok").encode(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, h, w)
