from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_run import run
from generation_fixture import (
    tiny_model,
    tiny_model_file,
)
from safetensors.torch import load_file

import vqkit
from vqkit.errors import ModelFileError, OptionError, ShapeError
from vqkit.generation.prior import (
    CodePrior,
    PriorSpec,
    PriorWarning,
    check_prior_fits,
    load_prior,
    save_prior,
)
from vqkit.generation.training import PriorTrainConfig, encode_images, train_prior

SMALL = dict(width=32, layers=1, heads=2, dropout=0.0, batch_size=64, lr=3e-3, warmup=10)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_briefly_trained_prior_beats_the_uniform_prior_on_held_out_codes(tmp_path: Path) -> None:
    model = tiny_model()
    out = tmp_path / "prior"
    result = train_prior(
        model, out, PriorTrainConfig(steps=150, eval_every=75, **SMALL), device="cpu", progress=False
    )
    assert result.uniform_bits == 16 * 5  # 4x4 grid, log2(32) bits each
    assert result.test_bits < 0.75 * result.uniform_bits, result
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [75, 150]
    assert lines[-1]["test_bits_per_image"] == pytest.approx(result.test_bits, abs=1e-3)
    # The saved prior scores the held-out codes exactly as reported.
    from vqkit.data import load_mnist5k

    codes = encode_images(model, load_mnist5k("test")[0], torch.device("cpu"))
    prior = load_prior(out)
    assert float(prior.bits_per_image(codes).mean()) == pytest.approx(result.test_bits, rel=1e-4)


def test_an_interrupted_run_resumes_exactly_where_it_stopped(tmp_path: Path) -> None:
    cfg = dict(steps=30, eval_every=10, **{**SMALL, "dropout": 0.1})
    train_prior(
        tiny_model_file(), tmp_path / "straight", PriorTrainConfig(**cfg), device="cpu", progress=False
    )

    def crash_at_step_24(step: int) -> None:  # a crash between the checkpoints at 20 and 30
        if step == 24:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_prior(
            tiny_model_file(),
            tmp_path / "resumed",
            PriorTrainConfig(**cfg),
            device="cpu",
            progress=False,
            callback=crash_at_step_24,
        )
    with pytest.raises(OptionError, match="`resume`"):
        train_prior(
            tiny_model_file(), tmp_path / "resumed", PriorTrainConfig(**cfg), device="cpu", progress=False
        )
    train_prior(
        tiny_model_file(),
        tmp_path / "resumed",
        PriorTrainConfig(**cfg),
        device="cpu",
        progress=False,
        resume=True,
    )

    a = load_file(str(tmp_path / "straight" / "prior.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "prior.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]


def test_the_prior_is_causal_and_handles_several_codebooks() -> None:
    torch.manual_seed(0)
    spec = PriorSpec(grid=(3, 2), num_codebooks=2, codebook_size=7, width=16, layers=2, heads=2, dropout=0.0)
    prior = CodePrior(spec).eval()
    codes = torch.randint(7, (5, 3, 2, 2))
    seq = prior.flatten(codes)
    assert seq.shape == (5, 12) and torch.equal(prior.unflatten(seq), codes)
    assert torch.equal(seq[:, :2], codes[:, 0, 0, :])  # a cell's codebook levels are neighbours
    logits = prior.logits(seq[:, :-1])
    assert logits.shape == (5, 12, 7)
    changed = seq.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 7
    # Predictions for codes 0..6 read codes 0..5 only: changing later codes leaves them alone.
    assert torch.allclose(prior.logits(changed[:, :-1])[:, :7], logits[:, :7])
    assert not torch.allclose(prior.logits(changed[:, :-1])[:, 7:], logits[:, 7:])
    bits = prior.bits_per_image(codes)
    assert bits.shape == (5,) and torch.all(bits > 0)
    drawn = prior.sample(4, generator=torch.Generator().manual_seed(1))
    assert drawn.shape == (4, 3, 2, 2) and int(drawn.min()) >= 0 and int(drawn.max()) < 7
    with pytest.raises(ShapeError, match=r"codes \[B, 3, 2, 2\]"):
        prior.bits_per_image(torch.zeros(2, 3, 2, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"in \[0, 6\]"):
        prior.bits_per_image(torch.full((1, 3, 2, 2), 7))


def test_a_prior_learns_dependencies_between_codebook_levels() -> None:
    """Level 1 repeats level 0: a prior that reads the levels right learns it, and beats uniform."""
    torch.manual_seed(0)
    spec = PriorSpec(grid=(2, 2), num_codebooks=2, codebook_size=16, width=32, layers=1, heads=2, dropout=0.0)
    prior = CodePrior(spec)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(150):
        first = torch.randint(16, (64, 2, 2, 1))
        loss = prior(torch.cat([first, first], dim=-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    first = torch.randint(16, (256, 2, 2, 1))
    bits = float(prior.eval().bits_per_image(torch.cat([first, first], dim=-1)).mean())
    # Uniform: 8 codes x 4 bits = 32; the true entropy is 4 x 4 = 16 bits (level 0 random, level 1 copied).
    assert bits < 19, bits


def test_prior_file_round_trip_and_mistakes(tmp_path: Path) -> None:
    model = tiny_model()
    spec = PriorSpec(grid=model.grid, num_codebooks=1, codebook_size=32, width=16, layers=1, heads=2)
    prior = CodePrior(spec).eval()
    path = save_prior(prior, tmp_path / "p.safetensors")
    again = load_prior(path)
    codes = torch.randint(32, (3, 4, 4))
    assert torch.equal(prior.bits_per_image(codes), again.bits_per_image(codes))
    check_prior_fits(again, model)  # no fingerprint: nothing to warn about

    with pytest.raises(ModelFileError, match="a vqkit model, not a prior"):
        load_prior(tiny_model_file())
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(ModelFileError, match="not a readable"):
        load_prior(tmp_path / "junk.safetensors")
    with pytest.raises(ModelFileError, match="no such prior"):
        load_prior(tmp_path / "missing")

    other = CodePrior(PriorSpec(grid=(2, 2), codebook_size=32, width=16, layers=1, heads=2))
    with pytest.raises(ShapeError, match="2x2 grid .* but the model makes a 4x4 grid"):
        check_prior_fits(other, model)
    stale = CodePrior(
        PriorSpec(grid=(4, 4), codebook_size=32, width=16, layers=1, heads=2, model_fingerprint="0" * 16)
    )
    with pytest.warns(PriorWarning, match="another model"):
        check_prior_fits(stale, model)


def test_cli_prior_train_reports_bits_and_refuses_to_overwrite(tmp_path: Path) -> None:
    model = str(tiny_model_file())
    out = str(tmp_path / "prior")
    args = ["prior", "train", model, "--out", out, "--steps", "20", "--eval-every", "10", "--width", "16"]
    args += ["--layers", "1", "--heads", "2", "--device", "cpu", "--no-progress"]
    code, text = run(*args)
    assert code == 0, text
    assert "80.0 bits per image (log2 32 x 16)" in text and "held-out" in text and "of uniform" in text
    assert (tmp_path / "prior" / "prior.safetensors").exists()
    assert vqkit.load(model)  # the model file is untouched
    code, text = run(*args)
    assert code == 1 and "already holds a prior run; pass --resume" in text
    code, text = run(*args, "--resume", "--steps", "30")
    assert code == 0, text
    assert json.loads((tmp_path / "prior" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 30
    code, text = run("prior", "train", str(tmp_path / "nope.safetensors"), "--out", out + "2")
    assert code == 1 and "no such model file" in text
