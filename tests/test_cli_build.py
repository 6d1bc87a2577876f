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
    assert code == 0 and "beta=0.25" in text and "init='kmeans'" in text and "restart_after=10" in text
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


def test_preset_original_is_shared_by_build_model_and_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "original.safetensors"
    code, text = run("build", "--preset", "original", "-o", str(out))
    assert code == 0, text
    assert "init='uniform' restart_after=0" in text and "head='transpose'" in text
    built = vqkit.build_model(preset="original", seed=0)
    loaded = vqkit.load(out)
    assert loaded.resolved_options == built.resolved_options
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), loaded.state_dict().values()))
    # What is given explicitly wins over the preset, option by option.
    code, text = run("build", "--preset", "original", "--set", "quantizer.restart_after=10")
    assert code == 0 and "init='uniform' restart_after=10" in text, text
    code, text = run("build", "--preset", "nope")
    assert code != 0 and "nope" in text


def test_preset_rules_in_python() -> None:
    from vqkit.errors import OptionError

    default = vqkit.build_model(seed=0)
    assert default.resolved_options == vqkit.build_model(preset="default", seed=0).resolved_options
    assert default.resolved_options["quantizer"]["init"] == "kmeans"
    other = vqkit.build_model(
        quantizer="ema", preset="original", seed=0
    )  # another quantizer: its own defaults
    assert other.resolved_options["quantizer"]["init"] == "kmeans"
    assert other.resolved_options["decoder"]["head"] == "transpose"
    with pytest.raises(OptionError, match="unknown preset 'nope'; presets: default, original"):
        vqkit.build_model(preset="nope")


def test_the_same_options_give_the_same_model_through_build_model_and_build(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    code, text = run("build", "--channels", "1", "-o", str(out))
    assert code == 0, text
    assert vqkit.load(out).resolved_options == vqkit.build_model(channels=1).resolved_options


def test_build_writes_the_hugging_face_layout_for_a_folder(tmp_path: Path) -> None:
    out = str(tmp_path / "model") + "/"
    code, text = run("build", "--channels", "1", "-o", out)
    assert code == 0, text
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert "config.json + model.safetensors" in text
    built = vqkit.build_model(channels=1, seed=0)
    loaded = vqkit.load(tmp_path / "model")
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), loaded.state_dict().values()))


WRONG_ZQ = """
import torch
from vqkit.contracts import Quantized, Quantizer


class WrongZq(Quantizer):
    def __init__(self, dim=None, codebook_size=None):
        super().__init__()
        self.dim, self.codebook_size = int(dim or 8), int(codebook_size or 16)

    def forward(self, z):
        b, _, h, w = z.shape
        codes = torch.zeros(b, h, w, dtype=torch.long)
        return Quantized(z[:, :, :, :-1], codes, z.new_zeros(()), {})

    def quantize(self, z):
        return torch.zeros(z.shape[0], z.shape[2], z.shape[3], dtype=torch.long)

    def dequantize(self, indices):
        return torch.zeros(indices.shape[0], self.dim, *indices.shape[1:])


class WrongDequantize(WrongZq):
    def forward(self, z):
        b, _, h, w = z.shape
        return Quantized(z, torch.zeros(b, h, w, dtype=torch.long), z.new_zeros(()), {})

    def dequantize(self, indices):
        return torch.zeros(indices.shape[0], self.dim + 1, *indices.shape[1:])


class FixedDim(WrongDequantize):
    def __init__(self, dim=None, codebook_size=None):
        super().__init__(8, codebook_size)
"""


@pytest.mark.parametrize(
    "cls, message",
    [
        ("WrongZq", "quantizer 'h2-wrong' returned z_q [1, 8, 4, 3] for latents [1, 8, 4, 4]"),
        ("WrongDequantize", "quantizer 'h2-wrong'.dequantize returned [1, 9, 4, 4]"),
    ],
)
def test_build_dry_run_names_a_quantizer_that_breaks_the_contract(
    tmp_path: Path, cls: str, message: str
) -> None:
    namespace: dict = {}
    exec(WRONG_ZQ, namespace)
    vqkit.quantizers.add("h2-wrong", namespace[cls])
    try:
        code, text = run("build", "--quantizer", "h2-wrong")
        assert code != 0 and message in text, text
        assert text.strip().count("\n") == 0, text
    finally:
        vqkit.quantizers.remove("h2-wrong")


def test_library_errors_name_parameters_not_flags() -> None:
    from vqkit.errors import OptionError

    namespace: dict = {}
    exec(WRONG_ZQ, namespace)
    vqkit.quantizers.add("h2-fixed", namespace["FixedDim"])
    try:
        with pytest.raises(OptionError, match="fixes its latent dim to 8; leave latent_dim unset") as info:
            vqkit.build_model(quantizer="h2-fixed", latent_dim=7)
    finally:
        vqkit.quantizers.remove("h2-fixed")
    assert "--" not in str(info.value)
    with pytest.raises(OptionError, match="channels must be an integer"):
        vqkit.build_model(channels="abc")  # type: ignore[arg-type]


def test_the_mirror_decoder_follows_the_encoders_layout_options() -> None:
    model = vqkit.build_model("resnet", channels=3, encoder_options={"downsample": 4, "widths": [16, 32]})
    assert model.spec.decoder == "resnet" and model.grid == (8, 8)
    assert model.spec.options("decoder")["downsample"] == 4 and model.spec.options("decoder")["widths"] == [
        16,
        32,
    ]
    # a decoder option given on purpose wins over the mirrored one
    wider = vqkit.build_model(
        "resnet",
        channels=3,
        encoder_options={"downsample": 4, "widths": [16, 32]},
        decoder_options={"widths": [32, 32]},
    )
    assert wider.spec.options("decoder")["widths"] == [32, 32]
