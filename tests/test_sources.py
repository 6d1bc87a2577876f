"""Every command that reads images takes the same data forms: a folder, tar shards, mnist5k, a dataset name;
a folder or shards is read a batch at a time, never held whole."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_run import run
from PIL import Image

import vqkit
from vqkit.data import DataWarning, load_images
from vqkit.data.imageset import StreamedImages, open_images
from vqkit.data.pack import pack_folder
from vqkit.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def _folder(root: Path, n: int = 80) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        path = root / f"c{i % 2}" / f"im{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (18, 20, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    folder = _folder(root / "imgs")
    pack_folder(folder, root / "shards", shard_size=30)
    model = vqkit.build_model(channels=3, image_size=16, codebook_size=16, seed=0)
    vqkit.save(model, root / "model.safetensors")
    return {"folder": folder, "shards": root / "shards", "model": root / "model.safetensors", "root": root}


def test_folder_and_shards_read_the_loaders_pixels_in_order(data: dict[str, Path]) -> None:
    want = load_images(str(data["folder"]), split="test", channels=3, image_size=16)
    for source in (data["folder"], data["shards"], f"{data['shards']}/shard-{{000000..000002}}.tar"):
        found = open_images(source, split="test", channels=3, image_size=16)
        assert isinstance(found, StreamedImages)  # read from disk a batch at a time
        batches = list(found.batches(3))
        assert max(len(b) for b in batches) == 3
        assert np.array_equal(np.concatenate(batches), want), source
        assert np.array_equal(found.read(4), want[:4])
    mnist = open_images("mnist5k", split="test", channels=1, image_size=32)
    assert np.array_equal(mnist.read(7), load_images("mnist5k", split="test")[:7])


def test_eval_reconstruct_and_prior_train_read_shards(data: dict[str, Path], tmp_path: Path) -> None:
    model, shards = str(data["model"]), str(data["shards"])
    reports = []
    for source in (str(data["folder"]), shards):
        code, text = run("eval", model, "--data", source, "--device", "cpu")
        assert code == 0, text
        reports.append(json.loads(text))
    assert (
        reports[0]["images"]
        == reports[1]["images"]
        == len(open_images(shards, split="test", channels=3, image_size=16))
    )
    assert reports[0]["psnr"] == pytest.approx(reports[1]["psnr"])
    images = load_images(str(data["folder"]), split="test", channels=3, image_size=16)
    same = evaluate(vqkit.load(model), images, lpips=None)
    assert same["psnr"] == pytest.approx(reports[0]["psnr"], rel=1e-6)
    code, text = run("eval", model, "--data", shards, "--limit", "3", "--batch-size", "2", "--device", "cpu")
    assert code == 0 and json.loads(text)["images"] == 3, text

    grid = tmp_path / "grid.png"
    code, text = run(
        "reconstruct", model, "--data", shards, "--limit", "5", "-o", str(grid), "--device", "cpu"
    )
    assert code == 0 and "over 5 image(s)" in text and grid.is_file(), text
    code, text = run("reconstruct", model, "-o", str(grid))
    assert code != 0 and "IMAGES" in text and "--data" in text

    out = tmp_path / "prior"
    args = [
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--eval-every",
        "2",
        "--width",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
    ]
    code, text = run(
        "prior", "train", model, "--data", shards, "-o", str(out), "--device", "cpu", "--no-progress", *args
    )
    assert code == 0 and (out / "prior.safetensors").is_file(), text


def test_export_validation_reads_shards(data: dict[str, Path]) -> None:
    from vqkit.export import validation_images

    images, where = validation_images(3, 16, str(data["shards"]), count=4)
    assert images.shape == (4, 3, 16, 16) and "test split" in where
    want = load_images(str(data["folder"]), split="test", channels=3, image_size=16)[:4]
    assert np.array_equal(images, want)


def test_unreadable_images_are_an_error_or_left_out_and_counted(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "imgs", n=30)
    (folder / "c0" / "im000.png").write_bytes(b"broken")
    with pytest.raises(vqkit.VQKitError, match="im000.png"):
        open_images(folder, split="all", channels=3, image_size=16).read()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = open_images(folder, split="all", channels=3, image_size=16, skip_bad=True).read()
    assert len(images) == 29 and any("skipped 1" in str(w.message) for w in caught)
    with pytest.warns(DataWarning, match="skipped 1"):
        held = load_images(str(folder), split="all", image_size=16, skip_bad=True)
    assert np.array_equal(images, held)
