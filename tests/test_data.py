"""The data API every command uses: ``vqkit.data.load_images`` over mnist5k, folders and torchvision names."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqkit.data import DataError, DataWarning, load_images, load_mnist5k
from vqkit.data.folder import is_held_out


def test_mnist5k_splits_and_conversions() -> None:
    train = load_images("mnist5k")
    test = load_images("mnist5k", split="test")
    assert train.shape == (4500, 1, 32, 32) and test.shape == (500, 1, 32, 32) and train.dtype == np.uint8
    np.testing.assert_array_equal(train, load_mnist5k("train")[0])
    assert load_images("mnist5k", split="all").shape == (5000, 1, 32, 32)
    rgb = load_images("mnist5k", split="test", channels=3, image_size=16)
    assert rgb.shape == (500, 3, 16, 16)
    np.testing.assert_array_equal(rgb[:, 0], rgb[:, 2])  # grey repeated into every channel


def test_unknown_source_suggests_the_closest_name() -> None:
    with pytest.raises(DataError, match="Did you mean 'mnist5k'"):
        load_images("mnsit5k")
    with pytest.raises(DataError, match="split must be one of"):
        load_images("mnist5k", split="validation")


def _write(path: Path, size: tuple[int, int], mode: str = "RGB", value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 20, 200)).save(path)


def test_folder_is_recursive_and_follows_the_images(tmp_path: Path) -> None:
    for i in range(30):
        _write(tmp_path / f"sub{i % 3}" / f"img{i}.png", (20, 20), "L", value=i)
    everything = load_images(str(tmp_path), split="all")
    assert everything.shape == (30, 1, 20, 20)  # greyscale files -> 1 channel, their own size
    train, test = load_images(str(tmp_path)), load_images(str(tmp_path), split="test")
    assert len(train) + len(test) == 30 and len(test) >= 1
    held = sum(is_held_out(f"sub{i % 3}/img{i}.png") for i in range(30))
    assert len(test) == held
    # the same pixels, no image in both splits
    values = sorted(int(v) for v in np.concatenate([train, test])[:, 0, 0, 0])
    assert values == list(range(30))
    rgb = load_images(str(tmp_path), split="all", channels=3, image_size=8)
    assert rgb.shape == (30, 3, 8, 8)


def test_folder_of_mixed_sizes_needs_an_image_size(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", (40, 40))
    _write(tmp_path / "b.jpg", (64, 48))
    with pytest.raises(DataError, match="differ in size.*--image-size"):
        load_images(str(tmp_path), split="all")
    out = load_images(str(tmp_path), split="all", image_size=32)
    assert out.shape == (2, 3, 32, 32)


def test_folder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images under"):
        load_images(str(tmp_path))
    for i in range(4):
        _write(tmp_path / f"ok{i}.png", (32, 32))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"broken\.png.*--skip-bad"):
        load_images(str(tmp_path), split="all")
    with pytest.warns(DataWarning, match="skipped 1 of 5"):
        ok = load_images(str(tmp_path), split="all", skip_bad=True)
    assert ok.shape == (4, 3, 32, 32)
    (tmp_path / "broken.png").unlink()
    _write(tmp_path / "tiny.png", (16, 16))
    with pytest.raises(DataError, match=r"tiny\.png is 16x16, smaller than the model's 32x32"):
        load_images(str(tmp_path), split="all", image_size=32)
    with pytest.raises(DataError, match="is a file"):
        load_images(str(tmp_path / "ok0.png"))


def test_tiny_folder_has_no_held_out_split(tmp_path: Path) -> None:
    name = next(f"x{i}.png" for i in range(100) if not is_held_out(f"x{i}.png"))
    _write(tmp_path / name, (8, 8))
    with pytest.raises(DataError, match="split 'all'"):
        load_images(str(tmp_path), split="test")


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_dataset_offline_and_present(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not in .*add --download"):
        load_images("fashion-mnist", data_root=tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28))
    for prefix in ("train", "t10k"):
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(3))
    out = load_images("MNIST", data_root=tmp_path)
    assert out.shape == (3, 1, 32, 32)  # padded like mnist5k
    np.testing.assert_array_equal(out[:, 0, 2:30, 2:30], images)
    assert load_images("mnist", data_root=tmp_path, image_size=28, split="all").shape == (6, 1, 28, 28)


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    from vqkit.data.sources import open_source
    from vqkit.data.stream import StreamingData
    from vqkit.errors import VQKitError
    from vqkit.images import read_image

    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I;16")  # a real 16-bit PNG, which Pillow's convert() clips at 255
    expected = np.rint(ramp / 257).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png", 1)[0], expected)
    assert len(np.unique(expected)) > 200  # a ramp, not a binary picture
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png", 3)[1], expected)
    np.testing.assert_array_equal(load_images(str(tmp_path), split="all")[0, 0], expected)  # folders
    stream = StreamingData(open_source(tmp_path, "all"), channels=1, image_size=32, batch_size=1, workers=0)
    np.testing.assert_array_equal(((stream.get(0)[0, 0] + 1) * 127.5).round().byte().numpy(), expected)
    (tmp_path / "deep.png").unlink()

    unit = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(unit).save(tmp_path / "float.tif")
    np.testing.assert_array_equal(
        read_image(tmp_path / "float.tif", 1)[0], np.rint(unit * 255).astype(np.uint8)
    )
    Image.fromarray(unit * 1000).save(tmp_path / "float.tif")
    with pytest.raises(VQKitError, match=r"float\.tif.*floating-point pixels outside \[0, 1\]"):
        read_image(tmp_path / "float.tif", 1)
    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(VQKitError, match=r"wide\.tif.*32-bit integer pixels"):
        read_image(tmp_path / "wide.tif", 3)
