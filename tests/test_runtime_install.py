"""The runtime-only install: ``vqkit-runtime`` (built from ``runtime/``) in a fresh environment without torch,
with the oldest ONNX Runtime the exports claim (1.16), runs a default export and gives PyTorch's codes.

The environment comes from ``VQKIT_RUNTIME_PYTHON`` (an interpreter where ``pip install ./runtime`` was run
with ``onnxruntime==1.16.3``); ``.ci/run`` makes one. Without it the test is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import vqkit
from vqkit.data import load_mnist5k
from vqkit.export import export
from vqkit.images import write_images

PYTHON = os.environ.get("VQKIT_RUNTIME_PYTHON")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not PYTHON,
        reason="set VQKIT_RUNTIME_PYTHON to a torch-free interpreter with vqkit-runtime and onnxruntime 1.16 "
        "installed (.ci/run makes one)",
    ),
]

CLIENT = """
import json, sys
import numpy as np
import onnxruntime, vqkit
from vqkit.runtime import Tokenizer
try:
    import torch
    has_torch = True
except ImportError:
    has_torch = False
folder, images, out, files = sys.argv[1:5]
tok = Tokenizer(folder, threads=1)
codes = tok.encode(np.load(images))
np.save(out + "/codes.npy", codes)
np.save(out + "/decoded.npy", tok.decode(codes[:16]))
np.save(out + "/file_codes.npy", tok.encode_files(sorted(__import__("glob").glob(files + "/*.png"))))
print(json.dumps({"ort": onnxruntime.__version__, "torch": has_torch, "vqkit": vqkit.__file__}))
"""


def test_runtime_only_install_runs_a_default_export_with_onnxruntime_1_16(tmp_path: Path) -> None:
    model = vqkit.build_model(seed=0).eval()  # the default model, 3 channels
    with torch.no_grad():  # latents at unit spread, like a trained model's (no float near-ties)
        x = torch.from_numpy(np.repeat(load_mnist5k("train")[0][:64], 3, axis=1)).float() / 127.5 - 1
        scale = 1.0 / model.encoder(x).std()
        model.encoder.net[-1].weight.mul_(scale)
        model.encoder.net[-1].bias.mul_(scale)
    export(model, tmp_path / "tok", validate=False)  # default options
    held_out = np.repeat(load_mnist5k("test")[0], 3, axis=1)  # all 500 held-out digits, uint8 NCHW
    np.save(tmp_path / "images.npy", held_out.transpose(0, 2, 3, 1))
    write_images(held_out[:5], tmp_path / "photos")
    proc = subprocess.run(
        [PYTHON, "-c", CLIENT, str(tmp_path / "tok"), str(tmp_path / "images.npy"), str(tmp_path), str(tmp_path / "photos")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["ort"].startswith("1.16.") and not seen["torch"]
    # the installed copy (in the runtime environment's site-packages), not this checkout's vqkit/ folder
    installed = Path(seen["vqkit"]).resolve().parent
    assert installed != Path(vqkit.__file__).resolve().parent and installed.parent.name == "site-packages"
    with torch.no_grad():
        x = torch.from_numpy(held_out).float() / 127.5 - 1
        want = model.encode(x).numpy()
        decoded = model.decode(torch.from_numpy(want[:16])).numpy()
    assert np.array_equal(np.load(tmp_path / "codes.npy"), want)
    assert np.abs(np.load(tmp_path / "decoded.npy") - decoded).max() <= 1e-5
    assert np.array_equal(np.load(tmp_path / "file_codes.npy"), want[:5])
