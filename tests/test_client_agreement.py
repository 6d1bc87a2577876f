"""One preprocessing contract, every client: awkward image files (tall and wide, odd sizes, 16-bit grey and
colour, palettes with transparency, EXIF-rotated JPEGs and PNGs, CMYK) give the same codes in vqkit
(PyTorch), the torch-free runtime (onnxruntime 1.16, with the newest and the oldest Pillow vqkit supports),
the Node example and the web page (headless Chromium), for conv3 and resnet exports.

The JPEGs are made of flat 8x8 blocks at 4:4:4: JPEG decoders (libjpeg-turbo in Pillow and Chromium,
jpeg-js in Node) round their inverse DCTs differently on texture, which no contract can pin; on flat blocks
they all give the stored values exactly, so what is tested is the orientation, colour conversion and resize.

``python -m pytest -q -s tests/test_client_agreement.py`` prints the per-image agreement table. Each client
that is not installed is skipped by name (``.ci/run`` installs them all).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vqkit
from vqkit.data import load_mnist5k
from vqkit.export import export
from vqkit.images import read_images

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NODE = shutil.which("node")
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
RUNTIMES = {
    "runtime": os.environ.get("VQKIT_RUNTIME_PYTHON"),
    "runtime-oldest-pillow": os.environ.get("VQKIT_RUNTIME_OLD_PILLOW_PYTHON"),
}
pytestmark = pytest.mark.slow


# --- the awkward images -----------------------------------------------------------------------------------------
def _texture(h: int, w: int, c: int, seed: int) -> np.ndarray:
    """A digit, stretched and tinted, with noise: enough structure that images use many codes."""
    rng = np.random.default_rng(seed)
    digit = load_mnist5k("test")[0][seed % 500, 0]
    im = np.asarray(Image.fromarray(digit).resize((w, h), Image.BILINEAR)).astype(np.int64)
    tint = rng.integers(60, 256, c)
    return (im[..., None] * tint // 255 + rng.integers(0, 70, (h, w, c))).clip(0, 255).astype(np.uint8)


def _blocks(h: int, w: int, c: int, seed: int) -> np.ndarray:
    """Flat 8x8 blocks (h, w multiples of 8): what every JPEG decoder reproduces exactly."""
    small = _texture(h // 8, w // 8, c, seed)
    return small.repeat(8, axis=0).repeat(8, axis=1)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png16(path: Path, samples: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG (Pillow writes none in colour), every scanline with a different filter type."""
    h, w = samples.shape[:2]
    flat = samples.reshape(h, -1).astype(">u2")
    bpp = flat.shape[1] * 2 // w
    rows, previous = [], np.zeros(flat.shape[1] * 2, dtype=np.int64)
    for y in range(h):
        raw = np.frombuffer(flat[y].tobytes(), dtype=np.uint8).astype(np.int64)
        kind = y % 3  # none, sub, up
        if kind == 1:
            left = np.concatenate([np.zeros(bpp, dtype=np.int64), raw[:-bpp]])
            out = (raw - left) % 256
        elif kind == 2:
            out = (raw - previous) % 256
        else:
            out = raw
        rows.append(bytes([kind]) + out.astype(np.uint8).tobytes())
        previous = raw
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + _png_chunk(b"IEND", b"")
    )


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def make_awkward_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    out: list[Path] = []

    def save(name: str, im: Image.Image, **kw: object) -> None:
        im.save(folder / name, **kw)
        out.append(folder / name)

    save("wide_rgb_45x37.png", Image.fromarray(_texture(37, 45, 3, 1)))
    save("tall_rgb_23x71.png", Image.fromarray(_texture(71, 23, 3, 2)))
    save("tall_rgb_37x130.png", Image.fromarray(_texture(130, 37, 3, 3)))
    save("wide_grey_131x33.png", Image.fromarray(_texture(33, 131, 1, 4)[..., 0]))
    save("odd_small_13x9.png", Image.fromarray(_texture(9, 13, 3, 5)))
    save("exact_32x32.png", Image.fromarray(_texture(32, 32, 3, 6)))
    grey16 = _texture(61, 40, 1, 7)[..., 0].astype(np.uint16) * 257 + rng.integers(0, 257, (61, 40))
    _png16(folder / "grey16_tall_40x61.png", grey16.astype(np.uint16), 0)
    out.append(folder / "grey16_tall_40x61.png")
    rgb16 = _texture(38, 53, 3, 8).astype(np.uint16) * 257 + rng.integers(0, 257, (38, 53, 3))
    _png16(folder / "rgb16_wide_53x38.png", rgb16.astype(np.uint16), 2)
    out.append(folder / "rgb16_wide_53x38.png")
    rgba16 = np.concatenate([_texture(47, 30, 3, 9), rng.integers(0, 256, (47, 30, 1))], axis=2)
    _png16(folder / "rgba16_tall_30x47.png", (rgba16.astype(np.uint16) * 257).astype(np.uint16), 6)
    out.append(folder / "rgba16_tall_30x47.png")
    # Palettes whose transparent entries hide colour: the colour is what counts (alpha is dropped).
    pal = Image.fromarray(_texture(33, 50, 3, 10)).quantize(64)
    trns = bytes(rng.choice([0, 90, 255], 64).astype(np.uint8))
    save("palette_trns_50x33.png", pal, transparency=trns)
    pal4 = Image.fromarray(_texture(44, 29, 3, 11)).quantize(16)
    save("palette4_trns_tall_29x44.png", pal4, transparency=0, bits=4)
    rgba = np.concatenate([_texture(64, 31, 3, 12), rng.choice([0, 255, 40], (64, 31, 1))], axis=2)
    save("rgba_alpha0_tall_31x64.png", Image.fromarray(rgba.astype(np.uint8), "RGBA"))
    la = np.concatenate([_texture(35, 35, 1, 13), rng.integers(0, 256, (35, 35, 1))], axis=2)
    save("grey_alpha_35x35.png", Image.fromarray(la.astype(np.uint8), "LA"))
    two_bit = (_texture(27, 35, 1, 14)[..., 0] // 64).astype(np.uint8) * 85
    save("grey_2bit_35x27.png", Image.fromarray(two_bit).convert("L"), bits=2)
    save("png_exif8_48x30.png", Image.fromarray(_texture(30, 48, 3, 15)), exif=_exif(8))
    jpeg = {"quality": 100, "subsampling": 0}
    save("jpeg_grey_exif6_48x32.jpg", Image.fromarray(_blocks(32, 48, 1, 16)[..., 0]), exif=_exif(6), **jpeg)
    save("jpeg_rgb_exif3_40x56.jpg", Image.fromarray(_blocks(56, 40, 3, 17)), exif=_exif(3), **jpeg)
    save("jpeg_rgb_exif5_64x40.jpg", Image.fromarray(_blocks(40, 64, 3, 18)), exif=_exif(5), **jpeg)
    save("jpeg_cmyk_40x48.jpg", Image.fromarray(_blocks(48, 40, 4, 19), "CMYK"), quality=100)
    return out


# --- models and clients -----------------------------------------------------------------------------------------
MODELS = {
    "conv3-rgb": ("conv3", 3, {"widths": [8, 16, 32]}, {"widths": [32, 16, 8]}),
    "conv3-grey": ("conv3", 1, {"widths": [8, 16, 32]}, {"widths": [32, 16, 8]}),
    "resnet-rgb": (
        "resnet",
        3,
        {"downsample": 4, "widths": [8, 16], "attention": False, "norm_groups": 4},
        {"downsample": 4, "widths": [16, 8], "attention": False, "norm_groups": 4},
    ),
}


def _model(name: str, folder: Path) -> vqkit.VQVAE:
    """A model whose codebook is made of its own latents on digits (so images use many codes, as a trained
    model's do), exported to ``folder``."""
    arch, channels, enc, dec = MODELS[name]
    model = vqkit.build_model(
        arch, "vq", channels=channels, codebook_size=64, latent_dim=8, seed=0,
        encoder_options=enc, decoder_options=dec,
    ).eval()  # fmt: skip
    with torch.no_grad():
        x = torch.from_numpy(np.repeat(load_mnist5k("train")[0][:64], channels, axis=1)).float() / 127.5 - 1
        z = model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 8)
        pick = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))[:64]
        model.quantizer.embedding.weight.copy_(z[pick])
    export(model, folder, validate=False)
    return model


def _vqkit_codes(model: vqkit.VQVAE, paths: list[Path]) -> np.ndarray:
    x = np.stack([read_images([p], model.spec.channels, model.spec.image_size)[0] for p in paths])
    with torch.no_grad():
        return model.encode(torch.from_numpy(x).float() / 127.5 - 1).numpy()


RUNTIME_CLIENT = """
import json, sys
import PIL
from vqkit.runtime import Tokenizer
tok = Tokenizer(sys.argv[1], threads=1)
codes = [tok.encode_files([p]).reshape(-1).tolist() for p in sys.argv[2:]]
print(json.dumps({"pillow": PIL.__version__, "codes": codes}))
"""


def _runtime_codes(python: str, folder: Path, paths: list[Path]) -> tuple[str, np.ndarray]:
    proc = subprocess.run(
        [python, "-c", RUNTIME_CLIENT, str(folder), *map(str, paths)],
        capture_output=True, text=True, timeout=300, cwd=folder,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["pillow"], np.array(out["codes"])


def _node_codes(folder: Path, paths: list[Path]) -> np.ndarray:
    proc = subprocess.run(
        [NODE, "encode.mjs", str(folder), *map(str, paths)],
        cwd=EXAMPLES / "node", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.array(json.loads(proc.stdout)["codes"])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def log_message(self, *args: object) -> None:
        pass


def _web_codes(folder: Path, paths: list[Path], site: Path) -> np.ndarray:
    site.mkdir()
    (site / "web").symlink_to(EXAMPLES / "web")
    (site / "tok").symlink_to(folder)
    (site / "img").symlink_to(paths[0].parent)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    query = "&".join(f"image=../img/{p.name}" for p in paths)
    url = f"http://127.0.0.1:{server.server_port}/web/index.html?tokenizer=../tok/&{query}"
    try:
        for _ in range(3):  # a loaded machine may not finish within Chromium's virtual time budget
            with tempfile.TemporaryDirectory() as profile:
                proc = subprocess.run(
                    [
                        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=100000000",
                        "--dump-dom", url,
                    ],
                    capture_output=True, text=True, timeout=240,
                )  # fmt: skip
            found = re.search(r'<pre id="results">(.+?)</pre>', proc.stdout)
            if found:
                break
    finally:
        server.shutdown()
    assert found, proc.stderr[-3000:]
    results = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    errors = [r for r in results if "error" in r]
    assert not errors, errors
    return np.array([r["codes"] for r in results])


def _ties(model: vqkit.VQVAE, paths: list[Path], other: np.ndarray) -> np.ndarray:
    """Per image, how many of ``other``'s differing codes are exact ties in PyTorch's distances (the other
    code is exactly as near as PyTorch's)."""
    x = np.stack([read_images([p], model.spec.channels, model.spec.image_size)[0] for p in paths])
    with torch.no_grad():
        z = model.encoder(torch.from_numpy(x).float() / 127.5 - 1).permute(0, 2, 3, 1)
        e = model.quantizer.embedding.weight
        d = (z * z).sum(-1, keepdim=True) - 2 * z @ e.T + (e * e).sum(-1)
    want = d.argmin(-1).numpy().reshape(len(paths), -1)
    dist = d.numpy().reshape(len(paths), -1, d.shape[-1])
    rows = np.arange(dist.shape[1])
    tied = np.zeros(len(paths), dtype=int)
    for i in range(len(paths)):
        diff = other[i] != want[i]
        same = dist[i, rows, other[i].clip(0)] == dist[i, rows, want[i]]
        tied[i] = int((diff & same).sum())
    return tied


@pytest.fixture(scope="module")
def agreement(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("agree")
    paths = make_awkward_images(root / "images")
    clients: dict[str, str] = {}
    table: dict[str, dict[str, np.ndarray]] = {}
    for name in MODELS:
        folder = root / name
        model = _model(name, folder)
        want = _vqkit_codes(model, paths).reshape(len(paths), -1)
        got: dict[str, np.ndarray] = {"vqkit": want}
        for label, python in RUNTIMES.items():
            if python:
                pillow, got[label] = _runtime_codes(python, folder, paths)
                clients[label] = f"{label} (onnxruntime 1.16, Pillow {pillow})"
        if NODE and (EXAMPLES / "node" / "node_modules" / "onnxruntime-node").is_dir():
            got["node"] = _node_codes(folder, paths)
            clients["node"] = "node (onnxruntime-node)"
        if CHROMIUM and (EXAMPLES / "web" / "node_modules" / "onnxruntime-web").is_dir():
            got["web"] = _web_codes(folder, paths, root / f"site-{name}")
            clients["web"] = "web (onnxruntime-web in Chromium)"
        table[name] = {k: (v, _ties(model, paths, v)) for k, v in got.items()}
    _print_table(paths, table)
    return {"paths": paths, "table": table, "clients": clients}


def _print_table(paths: list[Path], table: dict) -> None:
    for model, got in table.items():
        want = got["vqkit"][0]
        others = [k for k in got if k != "vqkit"]
        print(f"\n{model}: codes equal to vqkit's / codes per image (ties in brackets)")
        print(f"  {'image':32s}" + "".join(f"{k:>24s}" for k in others))
        for i, p in enumerate(paths):
            cells = []
            for k in others:
                codes, ties = got[k]
                same = int((codes[i] == want[i]).sum())
                cells.append(f"{same}/{want.shape[1]}" + (f" [{ties[i]} ties]" if ties[i] else ""))
            print(f"  {p.name:32s}" + "".join(f"{c:>24s}" for c in cells))


def test_every_client_gives_vqkits_codes_on_awkward_images(agreement: dict) -> None:
    if not agreement["clients"]:
        pytest.skip("no client installed: set VQKIT_RUNTIME_PYTHON, run `npm ci` in examples/ (.ci/run)")
    for model, got in agreement["table"].items():
        want = got["vqkit"][0]
        assert len(np.unique(want)) > 16, model  # enough codes in use for the agreement to mean something
        for client, (codes, ties) in got.items():
            differ = (codes != want).sum(axis=1)
            real = differ - ties
            assert (real == 0).all(), (
                model,
                client,
                {p.name: int(n) for p, n in zip(agreement["paths"], real) if n},
            )


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")
def test_vqkit_reads_the_awkward_images_as_the_contract_says(tmp_path: Path) -> None:
    """The contract's decode rules, checked on vqkit's own reader: EXIF orientation applied, 16-bit grey
    rounded and 16-bit colour by its high byte, palette colour kept under transparency, CMYK by its (browsers') formula."""
    paths = {p.name: p for p in make_awkward_images(tmp_path)}
    rgb16 = read_images([paths["rgb16_wide_53x38.png"]], 3)[0].transpose(1, 2, 0)
    grey16 = read_images([paths["grey16_tall_40x61.png"]], 1)[0, 0]
    raw = np.asarray(Image.open(paths["jpeg_grey_exif6_48x32.jpg"]))
    oriented = read_images([paths["jpeg_grey_exif6_48x32.jpg"]], 1)[0, 0]
    assert oriented.shape == (48, 32) and np.array_equal(
        oriented, np.rot90(raw, -1)
    )  # 6: 90 degrees clockwise
    assert rgb16.shape == (38, 53, 3) and grey16.shape == (61, 40)
    # The bit-depth rules on known samples: 16-bit grey rounded, 16-bit colour by its high byte.
    samples = np.array([[0, 255, 256, 383, 384, 65535]], dtype=np.uint16)
    _png16(tmp_path / "g.png", samples, 0)
    assert read_images([tmp_path / "g.png"], 1)[0, 0].tolist() == [[0, 1, 1, 1, 1, 255]]
    _png16(tmp_path / "c.png", np.repeat(samples[..., None], 3, axis=2), 2)
    assert read_images([tmp_path / "c.png"], 3)[0, 0].tolist() == [[0, 0, 1, 1, 1, 255]]
    with Image.open(paths["palette_trns_50x33.png"]) as im:
        palette = np.asarray(im.convert("RGB"))
    assert np.array_equal(read_images([paths["palette_trns_50x33.png"]], 3)[0].transpose(1, 2, 0), palette)
    cmyk = np.asarray(Image.open(paths["jpeg_cmyk_40x48.jpg"])).astype(np.int64)
    c, k = 255 - cmyk[..., :3], 255 - cmyk[..., 3:]
    want = (c * k // 255).astype(np.uint8)  # floored, as browsers do (Pillow's convert rounds)
    assert np.array_equal(read_images([paths["jpeg_cmyk_40x48.jpg"]], 3)[0].transpose(1, 2, 0), want)
