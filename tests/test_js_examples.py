"""The JavaScript examples: examples/node (onnxruntime-node) and examples/web (onnxruntime-web in headless
Chromium) read only the .onnx files, preprocess from the graphs' own metadata, and give PyTorch's codes.

They need Node.js with ``npm ci`` run in each example folder, and Chromium for the page; ``.ci/run`` installs
all of it. Without them the tests are skipped, saying what is missing.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vqkit
from vqkit.data import load_mnist5k
from vqkit.export import export
from vqkit.images import read_images
from vqkit.runtime import Tokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NODE = shutil.which("node")
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
SMALL = {"encoder_options": {"widths": [8, 16, 32]}, "decoder_options": {"widths": [32, 16, 8]}}

needs_node = pytest.mark.skipif(
    NODE is None or not (EXAMPLES / "node" / "node_modules" / "onnxruntime-node").is_dir(),
    reason="needs Node.js and `npm ci` in examples/node (.ci/run does both)",
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or not (EXAMPLES / "web" / "node_modules" / "onnxruntime-web").is_dir(),
    reason="needs Chromium (apt-get install chromium) and `npm ci` in examples/web (.ci/run does both)",
)
pytestmark = pytest.mark.slow


def _graphs_only(channels: int, root: Path) -> tuple[vqkit.VQVAE, Path]:
    """A model whose codebook is made of its own latents on digits (so images use many codes, as a trained
    model's do), exported; and a folder holding only its two .onnx files (no vqkit.json)."""
    model = vqkit.build_model(
        "conv3", "vq", channels=channels, codebook_size=64, latent_dim=8, seed=0, **SMALL
    )
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.repeat(load_mnist5k("train")[0][:64], channels, axis=1)).float() / 127.5 - 1
        z = model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 8)
        pick = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))[:64]
        model.quantizer.embedding.weight.copy_(z[pick])
    export(model, root / f"full{channels}", validate=False)
    graphs = root / f"graphs{channels}"
    graphs.mkdir()
    for name in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(root / f"full{channels}" / name, graphs / name)
    return model, graphs


def _pictures(folder: Path) -> list[Path]:
    """Colour digits at sizes that need the resize (up, down, odd), an exact-size one, a grey PNG and an
    RGBA PNG: every path of the preprocessing."""
    folder.mkdir()
    digits = load_mnist5k("test")[0][:7, 0]
    rng = np.random.default_rng(0)
    out = []
    sizes = [(45, 37), (32, 32), (20, 50), (100, 64), (33, 32), (31, 31), (64, 48)]
    for i, (w, h) in enumerate(sizes):
        tint = rng.integers(0, 256, 3)
        rgb = (digits[i][..., None].astype(int) * tint // 255 + rng.integers(0, 60, (32, 32, 3))).clip(0, 255)
        im = Image.fromarray(rgb.astype(np.uint8)).resize((w, h), Image.BILINEAR)
        if i == 5:
            im = im.convert("L")
        if i == 6:
            im = im.convert("RGBA")
            im.putalpha(128)
        path = folder / f"pic{i}.png"
        im.save(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("js")
    models = {c: _graphs_only(c, root) for c in (1, 3)}
    return {"root": root, "models": models, "pictures": _pictures(root / "pictures")}


def _torch_codes(model: vqkit.VQVAE, paths: list[Path]) -> np.ndarray:
    x = read_images(paths, model.spec.channels, model.spec.image_size)
    return model.encode(torch.from_numpy(x).float() / 127.5 - 1).numpy()


PREPROCESS = """
import { readFileSync } from "node:fs";
import { PNG } from "pngjs";
import { describeGraph, preprocess } from "./vqkit.mjs";
const [encoder, ...paths] = process.argv.slice(1);
const desc = describeGraph(readFileSync(encoder));
const out = paths.map((p) => {
  const png = PNG.sync.read(readFileSync(p));
  return Array.from(preprocess(png.data, png.width, png.height, desc).uint8);
});
console.log(JSON.stringify(out));
"""


def _node(*args: str) -> str:
    proc = subprocess.run([NODE, *args], cwd=EXAMPLES / "node", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@needs_node
@pytest.mark.parametrize("channels", [1, 3])
def test_node_example_gives_pytorchs_codes_from_the_graph_files_alone(setup: dict, channels: int) -> None:
    model, graphs = setup["models"][channels]
    paths = setup["pictures"]
    names = [str(p) for p in paths]
    # The preprocessing, done in JavaScript from the graph's metadata, is Pillow's to the last pixel.
    pixels = json.loads(_node("--input-type=module", "-e", PREPROCESS, str(graphs / "encoder.onnx"), *names))
    want_pixels = read_images(paths, channels, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(np.array(pixels, dtype=np.uint8).reshape(want_pixels.shape), want_pixels)
    result = json.loads(_node("encode.mjs", str(graphs), *names))
    want = _torch_codes(model, paths)
    assert result["shape"] == list(want.shape) and result["images"] == names
    assert np.array_equal(np.array(result["codes"]).reshape(want.shape), want)
    assert len(np.unique(want)) > 8  # enough codes in use for the agreement to mean something
    (setup["root"] / f"codes{channels}.json").write_text(json.dumps(result))
    out = setup["root"] / f"decoded{channels}"
    _node("decode.mjs", str(graphs), str(setup["root"] / f"codes{channels}.json"), str(out))
    decoded = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(out.glob("*.png"))])
    expect = Tokenizer(graphs.parent / f"full{channels}").decode(want, uint8=True)
    assert np.abs(decoded.astype(int) - np.broadcast_to(expect, decoded.shape)).max() <= 1


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def log_message(self, *args: object) -> None:
        pass


def _chromium(url: str, *flags: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--virtual-time-budget=60000", *flags, url,
            ],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@needs_chromium
def test_web_page_shows_codes_and_reconstruction_in_headless_chromium(setup: dict, tmp_path: Path) -> None:
    model, graphs = setup["models"][3]
    picture = setup["pictures"][0]  # 45x37 colour: resized, cropped, RGB order
    site = tmp_path / "site"
    site.mkdir()
    (site / "web").symlink_to(EXAMPLES / "web")
    (site / "tok").symlink_to(graphs)
    shutil.copy(picture, site / "picture.png")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/web/index.html?tokenizer=../tok/&image=../picture.png"
        # Chromium stops at the end of its virtual time budget; on a loaded machine the page may not have
        # finished by then, so each capture is tried a few times until the page says it is done.
        for _ in range(3):
            dom = _chromium(url, "--dump-dom")
            if "<title>done</title>" in dom or "<title>error</title>" in dom:
                break
        shot = tmp_path / "page.png"
        for _ in range(3):
            _chromium(url, "--window-size=640,300", "--force-device-scale-factor=1", "--hide-scrollbars",
                      f"--screenshot={shot}")  # fmt: skip
            page = np.asarray(Image.open(shot).convert("RGB")).astype(int)
            if page[80:208:4, 336:464:4].std() > 1:  # the reconstruction is drawn
                break
    finally:
        server.shutdown()
    assert "<title>done</title>" in dom, re.findall(r'<p id="status">(.*?)</p>', dom)
    shown = json.loads(re.search(r'<pre id="codes">(.*?)</pre>', dom).group(1))
    want = _torch_codes(model, [picture])[0]
    assert shown["shape"] == [4, 4] and np.array_equal(np.array(shown["codes"]).reshape(4, 4), want)
    # The screenshot: the model input and the reconstruction drawn 4x at their fixed places on the page.
    seen_input = page[80:208:4, 16:144:4]
    seen_recon = page[80:208:4, 336:464:4]
    assert np.abs(seen_input - read_images([picture], 3, 32)[0].transpose(1, 2, 0)).max() <= 2
    recon = Tokenizer(graphs.parent / "full3").decode(want, uint8=True)
    assert np.abs(seen_recon - recon).max() <= 2
    assert seen_recon.std() > 1  # a picture, not a blank panel
