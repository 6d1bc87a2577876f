"""The example plugin (examples/vqkit-plugin-example), installed as its own distribution the way a user's
would be (`.ci/run` installs it; locally: pip install -e examples/vqkit-plugin-example --no-deps), through the
CLI: listing, build, train, export, and the exported tokenizer at run time."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import vqkit
from vqkit import discovery
from vqkit.cli.main import cli
from vqkit.errors import ModelFileError

DIST = "vqkit-plugin-example"
try:
    VERSION = metadata.version(DIST)
except metadata.PackageNotFoundError:
    VERSION = None

pytestmark = pytest.mark.skipif(
    VERSION is None, reason=f"{DIST} is not installed: pip install -e examples/vqkit-plugin-example --no-deps"
)


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_vqkit_plugins_shows_the_package_and_its_version() -> None:
    text = run("plugins")
    for line in text.splitlines():
        if line.strip().startswith(("tiny ", "example-vq ")):
            assert f"{DIST} {VERSION}" in line
    assert "example-vq" in text and "options: beta=0.25, restart=True" in text
    data = json.loads(run("plugins", "--json"))
    mine = {
        (c["kind"], c["name"]): c for c in data["components"] if c["distribution"] == f"{DIST}=={VERSION}"
    }
    assert set(mine) == {("encoder", "tiny"), ("quantizer", "example-vq"), ("decoder", "tiny")}
    assert mine[("quantizer", "example-vq")]["options"] == {"beta": 0.25, "restart": True}
    assert mine[("encoder", "tiny")]["summary"].startswith("Two stride-2 4x4 convs")


def test_build_train_export_and_run_the_example_plugin(tmp_path: Path) -> None:
    text = run(
        "build", "--encoder", "tiny", "--quantizer", "example-vq", "--channels", "1", "--codebook-size", "32",
        "-o", str(tmp_path / "built.safetensors"),
    )  # fmt: skip
    assert "decoder    tiny" in text and "8x8 grid" in text and "32 codes" in text

    run_dir = tmp_path / "run"
    run(
        "train", "--encoder", "tiny", "--quantizer", "example-vq", "--data", "mnist5k", "--codebook-size", "32",
        "--steps", "30", "--batch-size", "32", "--eval-images", "64", "--warmup-steps", "0", "--quiet",
        "-o", str(run_dir),
    )  # fmt: skip
    model_file = run_dir / "model.safetensors"
    spec, _ = vqkit.read_spec(model_file)
    assert (spec.encoder, spec.quantizer, spec.decoder) == ("tiny", "example-vq", "tiny")
    assert spec.origins == {part: f"{DIST}=={VERSION}" for part in ("encoder", "quantizer", "decoder")}
    model = vqkit.load(model_file)
    assert bool(model.quantizer.initialised)  # the plugin's own state came back from the file

    text = run("export", str(model_file), "-o", str(tmp_path / "tok"), "--num-images", "32")
    assert "PASSED" in text

    from vqkit.runtime import Tokenizer

    images, _ = vqkit.data.load_mnist5k("test")
    x = torch.from_numpy(images[:16]).float() / 127.5 - 1
    tok = Tokenizer(tmp_path / "tok")
    codes = tok.encode(x.numpy())
    assert codes.shape == (16, 8, 8) and codes.dtype == np.int64
    assert np.array_equal(codes, model.encode(x).numpy())
    assert np.abs(tok.decode(codes) - model.decode(torch.from_numpy(codes)).numpy()).max() < 1e-5


def test_a_model_whose_plugin_is_missing_says_what_to_install(tmp_path: Path) -> None:
    path = vqkit.save(
        vqkit.build_model("tiny", "example-vq", channels=1, codebook_size=16, seed=0),
        tmp_path / "m.safetensors",
    )
    with discovery.preserved_state():
        for registry, name in (
            (vqkit.encoders, "tiny"),
            (vqkit.quantizers, "example-vq"),
            (vqkit.decoders, "tiny"),
        ):
            registry.remove(name)  # as if the package were uninstalled
        with pytest.raises(ModelFileError, match=rf"unknown encoder 'tiny'.*pip install {DIST}=={VERSION}$"):
            vqkit.load(path)
        result = CliRunner().invoke(cli, ["export", str(path), "-o", str(tmp_path / "out")])
        assert result.exit_code == 1 and result.output.count("\n") == 1
        assert result.output.startswith("Error: ") and f"pip install {DIST}=={VERSION}" in result.output
        assert not (tmp_path / "out").exists()
    assert vqkit.load(path).spec.quantizer == "example-vq"


def test_plugin_file_of_an_installed_plugin_says_how_to_use_it(tmp_path: Path) -> None:
    """A plugin author edits a copy of an installed plugin's module and loads it with --plugin."""
    import vqkit_plugin_example.quantizer as installed

    copy = tmp_path / "quantizer.py"
    copy.write_text(Path(installed.__file__).read_text().replace("keeps every code", "keeps all codes"))
    with discovery.preserved_state():
        result = CliRunner().invoke(cli, ["--plugin", str(copy), "build", "--quantizer", "example-vq"])
        assert result.exit_code == 1 and result.output.count("\n") == 1  # one message, printed once
        assert result.output.startswith(f"Error: plugin {copy} failed to load: quantizer 'example-vq' is ")
        assert f"by {DIST} {VERSION} and by file {copy}" in result.output
        assert (
            f"load it with --plugin-override {copy}" in result.output and "override=True" not in result.output
        )
        out = tmp_path / "m.safetensors"
        args = ["--plugin-override", str(copy), "build", "--quantizer", "example-vq", "-o", str(out)]
        text = run(*args)
        assert "example-vq" in text
        entry = vqkit.quantizers.entry("example-vq")
        assert entry.origin == f"file {copy}" and entry.summary.startswith(
            "Nearest-code VQ that keeps all codes"
        )
    assert vqkit.quantizers.entry("example-vq").origin == f"{DIST} {VERSION}"
