"""Every built-in quantizer trains from its own defaults: behind a tiny encoder, through ``vqkit train``'s
loop on the built-in digits, a short run lowers the loss and keeps more than a quarter of its codes in use on
held-out images, without collapsing to one picture. (The full matrix, every quantizer x encoder x recipe at
real budgets, is ``benchmarks/quality.py --suite matrix``.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import vqkit
from vqkit.data import load_mnist5k
from vqkit.evaluate import evaluate
from vqkit.registry import quantizers
from vqkit.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

vqkit.load_plugins()
NAMES = [e.name for e in quantizers.entries() if e.origin == "built-in"]
# A small codebook a short run can fill; quantizers that fix their own size get the same number of codes.
CODES = 32
SIZES = {"fsq": {"levels": [4, 4, 2]}}
TINY = {"encoder": "conv3", "encoder_options": {"widths": [16, 32]}, "decoder_options": {"widths": [32, 16]}}
ALL_BACKGROUND_MSE = 0.3373  # mnist5k's held-out digits against a black image


def _train(name: str, tmp: Path) -> tuple[Path, list[dict]]:
    options = SIZES.get(name, {})
    sizes = {} if name in SIZES else {"codebook_size": CODES}
    if name not in ("lfq", "fsq"):  # lfq's latent dim is its number of bits, fsq's its number of levels
        sizes["latent_dim"] = 8
    config = TrainConfig(
        model={**TINY, "quantizer": name, "quantizer_options": options, **sizes},
        data="mnist5k",
        image_size=16,
        out=str(tmp / "run"),
        steps=150,
        batch_size=32,
        log_every=10,
        eval_every=0,
        checkpoint_every=0,
        device="cpu",
        progress=False,
        seed=0,
    )
    result = vqkit.training.train(config)
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    return result.model_path, [json.loads(line) for line in lines]


def _held_out_16() -> np.ndarray:
    images = load_mnist5k("test")[0][:256]
    return images[:, :, ::2, ::2]  # 16x16, as the run's data


@pytest.mark.parametrize("name", NAMES)
def test_each_quantizer_trains_from_its_defaults(name: str, tmp_path: Path) -> None:
    path, metrics = _train(name, tmp_path)
    mse = [m["mse"] for m in metrics if "mse" in m]
    assert len(mse) >= 10
    first, last = np.mean(mse[:2]), np.mean(mse[-3:])
    assert last < 0.5 * first, f"{name}: training MSE {first:.3f} -> {last:.3f}"
    model = vqkit.load(path).eval()
    result = evaluate(model, _held_out_16(), lpips=False)
    assert result["usage"] > 0.25, f"{name}: {result['codes_used']} of {result['codebook_size']} codes in use"
    assert result["mse"] < 0.6 * ALL_BACKGROUND_MSE, f"{name}: held-out MSE {result['mse']:.3f}"
