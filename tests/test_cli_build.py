from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_run import run

import vqkit


def test_build_prints_summary_and_writes_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    code, text = run("build", "--encoder", "conv3", "--quantizer", "vq", "-o", str(out))
    assert code == 0, text
    assert "4x4 grid" in text and "512 codes" in text and "144 bits per image" in text and "params" in text
    built = vqkit.build_model("conv3", "vq", seed=0).eval()
    loaded = vqkit.load(out)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(built.encode(x), loaded.encode(x))
    assert torch.equal(built(x).reconstruction, loaded(x).reconstruction)


def test_build_options_reach_the_model(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    code, text = run(
        "build",
        "--channels", "1", "--image-size", "64", "--latent-dim", "16", "--codebook-size", "128",
        "--set", "quantizer.beta=0.5", "--set", "encoder.widths=16,32,64", "--set", "decoder.widths=64,32,16",
        "-o", str(out),
    )  # fmt: skip
    assert code == 0, text
    m = vqkit.load(out)
    assert m.spec.channels == 1 and m.spec.image_size == 64 and m.grid == (8, 8)
    assert m.quantizer.dim == 16 and m.quantizer.codebook_size == 128 and m.quantizer.beta == 0.5
    assert m.spec.encoder_options == {"widths": (16, 32, 64)} or m.spec.encoder_options == {
        "widths": [16, 32, 64]
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "--encoder", "conv4"], "unknown encoder 'conv4'. Did you mean 'conv3'?"),
        (["build", "--quantizer", "nope"], "unknown quantizer 'nope'"),
        (["build", "--set", "quantizer.bta=1"], "has no option 'bta'. Did you mean 'beta'?"),
        (["build", "--set", "beta=1"], "expected PART.KEY=VALUE"),
        (["build", "--set", "model.beta=1"], "PART must be one of"),
        (["build", "--image-size", "36"], "not divisible by encoder 'conv3''s downsample factor 8"),
        (["build", "--set", "encoder.widths=16,32"], "the model needs images"),
        (["plugins", "nosuch"], "no plugin component named 'nosuch'"),
    ],
)
def test_user_mistakes_are_one_clear_line(args: list[str], message: str) -> None:
    code, text = run(*args)
    assert code != 0
    assert message in text
    assert text.strip().count("\n") == 0, text


def test_load_errors_through_python_are_clean(tmp_path: Path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_text("nope")
    with pytest.raises(vqkit.VQKitError):
        vqkit.load(bad)


def test_plugins_lists_every_kind_with_origin() -> None:
    code, text = run("plugins")
    assert code == 0
    for line in ("encoders:", "quantizers:", "decoders:"):
        assert line in text
    assert "vq" in text and "built-in" in text


def test_plugins_verbose_and_name_show_options() -> None:
    code, text = run("plugins", "vq")
    assert code == 0 and "beta=0.25" in text and "init='kmeans'" in text and "restart_after=50" in text
    code, text = run("plugins", "--verbose")
    assert "widths=(32, 64, 128)" in text


def test_plugins_json() -> None:
    code, text = run("plugins", "--json")
    data = json.loads(text)
    vq = next(c for c in data["components"] if c["name"] == "vq" and c["kind"] == "quantizer")
    assert vq["origin"] == "built-in" and vq["options"]["beta"] == 0.25


def test_version() -> None:
    code, text = run("--version")
    assert code == 0 and vqkit.__version__ in text
