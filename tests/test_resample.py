"""vqkit's own resize (vqkit.resample): Pillow's bicubic arithmetic with the pass order fixed (width, then
height), so the pixels -- and the codes made from them -- do not depend on the installed Pillow."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vqkit.images import read_image
from vqkit.resample import centre_square, coefficients, resize


def _pillow_width_then_height(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """The reference: two one-axis Pillow resizes. A one-axis resize has no pass order to choose, so this is
    the same in every Pillow release."""
    c = a.shape[2]
    im = Image.fromarray(a[..., 0] if c == 1 else a, {1: "L", 3: "RGB", 4: "RGBA"}[c])
    if c == 4:
        im = im.convert("RGBa")  # what Pillow's resize does to RGBA
    im = im.resize((width, a.shape[0]), Image.BICUBIC).resize((width, height), Image.BICUBIC)
    if c == 4:
        im = im.convert("RGBA")
    return np.asarray(im).reshape(height, width, c)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_resize_is_pillows_bicubic_with_the_width_pass_first(channels: int) -> None:
    rng = np.random.default_rng(channels)
    for _ in range(25):
        w, h = (int(v) for v in rng.integers(1, 80, 2))
        nw, nh = (int(v) for v in rng.integers(1, 100, 2))
        a = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        if channels == 4:
            a[..., 3] = rng.choice([0, 1, 77, 128, 255], (h, w))
        want = _pillow_width_then_height(a, nw, nh)
        assert np.array_equal(resize(a, nw, nh), want), (w, h, nw, nh)
        left, top = int(rng.integers(0, nw)), int(rng.integers(0, nh))
        box = (left, top, int(rng.integers(left + 1, nw + 1)), int(rng.integers(top + 1, nh + 1)))
        assert np.array_equal(resize(a, nw, nh, box), want[box[1] : box[3], box[0] : box[2]])


def test_tall_images_no_longer_depend_on_pillows_pass_order(tmp_path) -> None:
    """A tall picture, where a Pillow that resamples the height first gives other pixels: vqkit's reader
    gives the width-first result whatever Pillow does in one call."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (97, 29, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "tall.png")
    nh = round(97 * 32 / 29)
    want = _pillow_width_then_height(a, 32, nh)
    top = (nh - 32) // 2
    assert np.array_equal(read_image(tmp_path / "tall.png", 3, 32).transpose(1, 2, 0), want[top : top + 32])
    assert np.array_equal(centre_square(a, 32), want[top : top + 32])


def test_weights_are_the_documented_fixed_point_numbers() -> None:
    lo, k = coefficients(4, 2)  # shrinking by 2: the kernel widened to 8 taps, clipped to the 4 inputs
    assert lo.tolist() == [0, 0] and (k.sum(axis=1) == 1 << 22).all()
    lo, k = coefficients(2, 4)  # enlarging: taps straddle each output's centre
    assert lo.tolist() == [0, 0, 0, 0] and abs(int(k.sum(axis=1)[0]) - (1 << 22)) <= 2


def test_bad_sizes_are_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="cannot resize"):
        resize(np.zeros((0, 3, 1), np.uint8), 2, 2)
    with pytest.raises(ValueError, match="H, W, C"):
        resize(np.zeros((3, 3), np.uint8), 2, 2)
