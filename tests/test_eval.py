"""`vqkit eval` and `vqkit reconstruct`, and the library function the quality benchmark calls."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vqkit
from vqkit.cli.main import cli
from vqkit.data import load_mnist5k
from vqkit.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    model = vqkit.build_model(channels=1, image_size=32, codebook_size=16, seed=0)
    return vqkit.save(model, tmp_path / "model.safetensors")


def test_evaluate_matches_a_direct_computation(model_file: Path) -> None:
    model = vqkit.load(model_file)
    images = load_mnist5k("test")[0][:40]
    report = evaluate(model, images, batch_size=16)  # several batches
    x = torch.from_numpy(images).float() / 127.5 - 1
    codes = model.encode(x)
    mse = float(((model.decode(codes) - x) ** 2).mean())
    assert report["images"] == 40
    assert math.isclose(report["mse"], mse, rel_tol=1e-5)
    assert math.isclose(report["psnr"], 10 * math.log10(4 / mse), rel_tol=1e-5)
    assert report["codes_used"] == len(torch.unique(codes))
    assert 1 <= report["perplexity"] <= report["codes_used"] + 1e-6
    assert report["bits_per_image"] == 16 * 4  # 4x4 grid of log2(16) bits


def test_cli_eval_prints_and_writes_json(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        cli, ["eval", str(model_file), "--limit", "50", "--device", "cpu", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == json.loads(out.read_text())
    assert printed["images"] == 50 and printed["split"] == "test" and printed["data"] == "mnist5k"
    assert {"mse", "psnr", "codes_used", "perplexity", "bits_per_image"} <= printed.keys()
    bad = CliRunner().invoke(cli, ["eval", str(tmp_path / "missing.safetensors")])
    assert bad.exit_code == 1 and "no such model file" in bad.output


def test_cli_reconstruct_puts_originals_above_reconstructions(model_file: Path, tmp_path: Path) -> None:
    digits = load_mnist5k("test")[0][:3]
    paths = []
    for i, d in enumerate(digits):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray(d[0]).save(p)
        paths.append(str(p))
    grid = tmp_path / "grid.png"
    result = CliRunner().invoke(
        cli, ["reconstruct", str(model_file), *paths, "-o", str(grid), "--device", "cpu", "--scale", "1"]
    )
    assert result.exit_code == 0, result.output
    picture = np.asarray(Image.open(grid))
    assert picture.shape == (2 * 34 + 2, 3 * 34 + 2)
    for i, d in enumerate(digits):  # top row: the files as they were
        np.testing.assert_array_equal(picture[2:34, 2 + 34 * i : 34 + 34 * i], d[0])
    model = vqkit.load(model_file)
    x = torch.from_numpy(digits).float() / 127.5 - 1
    expect = ((model.decode(model.encode(x))[0, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(picture[36:68, 2:34], expect)  # bottom row: their reconstructions

    # a folder stands for the images under it; the default sheet is enlarged 3x
    folder = tmp_path / "folder" / "nested"
    folder.mkdir(parents=True)
    for i, d in enumerate(digits):
        Image.fromarray(d[0]).save(folder / f"{i}.png")
    whole = CliRunner().invoke(
        cli, ["reconstruct", str(model_file), str(tmp_path / "folder"), "-o", str(grid)]
    )
    assert whole.exit_code == 0 and "over 3 image(s)" in whole.output, whole.output
    assert np.asarray(Image.open(grid)).shape == (3 * (2 * 34 + 2), 3 * (3 * 34 + 2))
    empty = CliRunner().invoke(cli, ["reconstruct", str(model_file), str(tmp_path / "none"), "-o", str(grid)])
    assert empty.exit_code == 1 and "no such image file or folder" in empty.output

    Image.new("L", (20, 20)).save(tmp_path / "small.png")
    small = CliRunner().invoke(
        cli, ["reconstruct", str(model_file), str(tmp_path / "small.png"), "-o", str(grid)]
    )
    assert small.exit_code == 1 and "smaller than the model's 32x32" in small.output
