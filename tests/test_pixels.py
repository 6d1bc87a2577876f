"""uint8 <-> float pixel conversion and PSNR, written once for numpy and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vqkit import pixels


def test_every_uint8_value_round_trips_in_numpy_and_torch() -> None:
    values = np.arange(256, dtype=np.uint8)
    f = pixels.to_float(values)
    assert f.dtype == np.float32 and f[0] == -1 and f[-1] == 1
    assert np.array_equal(pixels.to_uint8(f), values)
    t = pixels.to_float(torch.from_numpy(values))
    assert t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(f))
    assert torch.equal(pixels.to_uint8(t), torch.from_numpy(values))


def test_to_uint8_clamps_and_rounds() -> None:
    x = np.array([-3.0, -1.0, 0.0, 0.999, 1.0, 7.0], dtype=np.float32)
    assert pixels.to_uint8(x).tolist() == [0, 0, 128, 255, 255, 255]
    assert pixels.to_uint8(torch.from_numpy(x)).tolist() == [0, 0, 128, 255, 255, 255]


def test_psnr() -> None:
    assert pixels.psnr(4.0) == pytest.approx(0.0)  # an error as large as the whole [-1, 1] range squared
    assert pixels.psnr(0.04) == pytest.approx(20.0)
    assert pixels.psnr(0.01, value_range=(0, 1)) == pytest.approx(20.0)
    assert pixels.psnr(0.0) == math.inf and pixels.psnr(math.inf) == -math.inf
    assert math.isnan(pixels.psnr(math.nan))
    with pytest.raises(ValueError, match="value_range"):
        pixels.psnr(1.0, value_range=(1, 1))
