from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import run
from generation_fixture import (
    held_out_images,
    tiny_model,
    tiny_model_file,
)
from PIL import Image

from vqkit.errors import OptionError, ShapeError
from vqkit.generation.prior import CodePrior, PriorSpec, model_fingerprint, save_prior
from vqkit.generation.sampling import interpolate, sample_codes, sample_images, uniform_codes
from vqkit.images import to_uint8, write_image

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_prior(model) -> CodePrior:
    torch.manual_seed(0)
    spec = PriorSpec(grid=model.grid, codebook_size=32, width=16, layers=1, heads=2, dropout=0.0)
    spec.model_fingerprint = model_fingerprint(model)
    return CodePrior(spec).eval()


def test_sampling_is_reproducible_with_a_seed() -> None:
    model = tiny_model()
    prior = tiny_prior(model)
    a = sample_images(model, prior, 6, seed=3, temperature=0.9)
    b = sample_images(model, prior, 6, seed=3, temperature=0.9)
    c = sample_images(model, prior, 6, seed=4, temperature=0.9)
    assert a.shape == (6, 1, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    u1, u2 = sample_images(model, "uniform", 4, seed=1), sample_images(model, "uniform", 4, seed=1)
    assert torch.equal(u1, u2)


def test_uniform_codes_use_the_models_real_grid() -> None:
    model = tiny_model()
    codes = uniform_codes(model, 200, seed=0)
    assert codes.shape == (200, 4, 4)  # the model's real grid, not a fixed 32x32
    assert len(codes.unique()) == 32  # every code of the book is drawn


def test_top_k_and_temperature_shape_the_draw() -> None:
    model = tiny_model()
    prior = tiny_prior(model)
    greedy = [sample_codes(prior, 3, top_k=1, seed=s) for s in range(3)]
    assert all(torch.equal(greedy[0], g) for g in greedy)  # top-1 is the likeliest code, whatever the seed
    assert torch.equal(greedy[0][0], greedy[0][1])
    hot = sample_codes(prior, 64, temperature=5.0, seed=0)
    cold = sample_codes(prior, 64, temperature=0.05, seed=0)
    assert len(hot.unique()) > len(cold.unique())
    with pytest.raises(OptionError, match="temperature"):
        sample_codes(prior, 2, temperature=0)
    with pytest.raises(OptionError, match="top_k"):
        sample_codes(prior, 2, top_k=33)


def test_a_prefix_keeps_its_codes_and_the_prior_completes_the_rest() -> None:
    model = tiny_model()
    prior = tiny_prior(model)
    rows = model.encode(held_out_images(1))[:, :2].expand(5, 2, 4)
    codes = sample_codes(prior, 5, prefix=rows, seed=0)
    assert codes.shape == (5, 4, 4) and torch.equal(codes[:, :2], rows)
    assert len({tuple(c[2:].flatten().tolist()) for c in codes}) > 1


def test_interpolation_ends_reconstruct_the_inputs() -> None:
    model = tiny_model()
    x = held_out_images(2)
    steps = interpolate(model, x[0], x[1], steps=7)
    assert steps.shape == (7, 1, 32, 32)
    recon = model.decode(model.encode(x))
    # Equal up to float rounding: the strip is decoded as one batch of 7 and the convolutions may take another
    # path than for a batch of 2.
    assert torch.allclose(steps[0], recon[0], atol=1e-5) and torch.allclose(steps[-1], recon[1], atol=1e-5)
    assert not torch.equal(steps[0], steps[-1])
    # On the way the codes change: some middle step differs from both ends.
    assert any(not torch.equal(s, steps[0]) and not torch.equal(s, steps[-1]) for s in steps[1:-1])
    with pytest.raises(OptionError, match="steps must be at least 2"):
        interpolate(model, x[0], x[1], steps=1)
    with pytest.raises(ShapeError, match=r"expected images \[B, 1, H, W\]"):
        interpolate(model, torch.zeros(3, 32, 32), x[1])


def test_cli_sample_and_interpolate_write_pngs(tmp_path: Path) -> None:
    model_file = str(tiny_model_file())
    model = tiny_model()
    prior_dir = tmp_path / "prior"
    save_prior(tiny_prior(model), prior_dir / "prior.safetensors")
    out = tmp_path / "samples.png"
    code, text = run(
        "sample",
        model_file,
        "--prior",
        str(prior_dir),
        "-n",
        "6",
        "-o",
        str(out),
        "--seed",
        "0",
        "--scale",
        "1",
    )
    assert code == 0, text
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 + 2 * 34, 2 + 3 * 34)  # 6 grey 32x32 images, 3 per row, 2-pixel gaps
    again = tmp_path / "again.png"
    run(
        "sample",
        model_file,
        "--prior",
        str(prior_dir / "prior.safetensors"),
        "-n",
        "6",
        "-o",
        str(again),
        "--seed",
        "0",
        "--scale",
        "1",
    )
    assert np.array_equal(grid, np.asarray(Image.open(again)))
    code, text = run(
        "sample", model_file, "--prior", "uniform", "-n", "16", "-o", str(tmp_path / "noise.png")
    )
    # by default a sheet of 32x32 tiles is enlarged 3x (nearest neighbour): 138 -> 414 pixels
    assert code == 0 and np.asarray(Image.open(tmp_path / "noise.png")).shape == (3 * 138, 3 * 138)

    x = to_uint8(held_out_images(2).numpy())
    write_image(x[0].transpose(1, 2, 0), tmp_path / "a.png")
    write_image(x[1].transpose(1, 2, 0), tmp_path / "b.png")
    code, text = run("sample", model_file, "--prior", str(prior_dir), "-n", "4", "-o", str(tmp_path / "p.png"),
                     "--prefix", str(tmp_path / "a.png"), "--prefix-rows", "2", "--scale", "1")  # fmt: skip
    assert code == 0, text
    sheet = np.asarray(Image.open(tmp_path / "p.png"))
    assert sheet.shape == (2 + 2 * 34, 2 + 3 * 34)  # the prefix image, then the 4 completions
    first = sheet[2:34, 2:34]
    assert np.array_equal(first[:16], x[0, 0, :16])  # the 2 code rows given (16 pixels) as they are
    assert np.array_equal(first[16:], x[0, 0, 16:] // 4)  # the rest dimmed
    lerp = tmp_path / "lerp.png"
    code, text = run("interpolate", model_file, str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                     "--steps", "5", "-o", str(lerp), "--with-inputs", "--scale", "1")  # fmt: skip
    assert code == 0, text
    strip = np.asarray(Image.open(lerp))
    assert strip.shape == (36, 2 + 7 * 34)
    first_step = strip[2:34, 36:68]
    expected = to_uint8(model.decode(model.encode(held_out_images(1))).numpy())[0, 0]
    assert np.array_equal(first_step, expected)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prior", "uniform", "--prefix", "{a}"], "a prefix needs a trained prior"),
        (["--prior", "{missing}"], "no such prior"),
        (["--prior", "{model}"], "is a vqkit model, not a prior"),
        (["--prior", "{prior}", "--prefix", "{a}", "--prefix-rows", "4"], "--prefix-rows must lie in 1..3"),
        (["--prior", "{prior}", "--top-k", "99"], "top-k must lie in 1..32"),
        (["--prior", "{prior}", "--prefix-rows", "2"], "--prefix-rows needs --prefix"),
    ],
)
def test_cli_sample_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    model_file = str(tiny_model_file())
    save_prior(tiny_prior(tiny_model()), tmp_path / "prior.safetensors")
    write_image(np.zeros((32, 32, 1), np.uint8), tmp_path / "a.png")
    names = {"a": tmp_path / "a.png", "missing": tmp_path / "nope", "model": model_file, "prior": tmp_path}
    args = [a.format(**names) for a in args]
    code, text = run("sample", model_file, *args, "-n", "2", "-o", str(tmp_path / "s.png"))
    assert code == 1 and text.startswith("Error: ") and message in text, text
    assert not (tmp_path / "s.png").exists()


def test_cli_prefix_rows_help_matches_what_it_accepts(tmp_path: Path) -> None:
    code, text = run("sample", "--help")
    assert "--prefix-rows INTEGER RANGE" in text and "x>=1" in text
    code, text = run(
        "sample", str(tiny_model_file()), "--prior", "uniform", "--prefix-rows", "0", "-o", "x.png"
    )
    assert code == 2 and "0 is not in the range x>=1" in text


def test_cli_interpolate_a_bad_image_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"nope")
    write_image(np.zeros((32, 32, 1), np.uint8), tmp_path / "a.png")
    code, text = run("interpolate", str(tiny_model_file()), str(tmp_path / "a.png"), str(tmp_path / "bad.png"),
                     "-o", str(tmp_path / "l.png"))  # fmt: skip
    assert code == 1 and "cannot read image" in text


def test_the_generation_commands_load_without_torch() -> None:
    """`vqkit encode/decode` must start torch-free, so the generation commands import torch only when run."""
    import subprocess
    import sys

    code = "import sys, vqkit.cli.generate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
