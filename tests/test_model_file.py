from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

import vqkit
from vqkit.errors import ModelFileError, OptionError, ShapeError


def _images(n: int = 4, c: int = 3, s: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, c, s, s, generator=g) * 2 - 1


def test_build_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    model = vqkit.build_model(
        "conv3", "vq", channels=3, image_size=32, quantizer_options={"beta": 0.5}, seed=3
    ).eval()
    path = vqkit.save(model, tmp_path / "m.safetensors")
    loaded = vqkit.load(path)
    assert loaded.spec == model.spec
    assert loaded.spec.quantizer_options == {"beta": 0.5} and loaded.quantizer.beta == 0.5
    x = _images()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a.reconstruction, b.reconstruction)
    assert torch.equal(model.encode(x), loaded.encode(x))
    codes = model.encode(x)
    assert torch.equal(model.decode(codes), loaded.decode(codes))


def test_same_seed_same_weights() -> None:
    a = vqkit.build_model(seed=7)
    b = vqkit.build_model(seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_model_file_has_no_pickle_and_carries_spec(tmp_path: Path) -> None:
    path = vqkit.save(vqkit.build_model(seed=0), tmp_path / "m.safetensors")
    spec, meta = vqkit.read_spec(path)
    assert spec.encoder == "conv3" and spec.codebook_size == 512 and spec.latent_dim == 64
    assert meta["format"] == "vqkit.model"
    assert b"\x80\x04" not in path.read_bytes()[:8]  # not a pickle/torch zip


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such model file"),
        (b"", "not a readable safetensors"),
        (b"garbage that is not a model", "not a readable safetensors"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        vqkit.load(path)


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    good = vqkit.save(vqkit.build_model(seed=0), tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError):
        vqkit.load(cut)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelFileError, match="not a vqkit model"):
        vqkit.load(foreign)


def test_save_is_atomic_and_keeps_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = vqkit.save(vqkit.build_model(seed=0), tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vqkit.modelfile.save_file", boom)
    with pytest.raises(vqkit.VQKitError, match="No space left"):
        vqkit.save(vqkit.build_model(seed=1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_a_full_disk_is_one_line_and_keeps_the_model_file_already_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli_run import run
    from safetensors import SafetensorError

    path = tmp_path / "m.safetensors"
    code, text = run("build", "--channels", "1", "-o", str(path))
    assert code == 0, text
    before = path.read_bytes()

    def disk_full(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(before[:100])  # part of the file got out before the disk filled up
        # what safetensors' own writer raises when the OS answers ENOSPC
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("vqkit.modelfile.save_file", disk_full)
    code, text = run("build", "--channels", "1", "--codebook-size", "64", "-o", str(path))
    assert code == 1 and text.count("Error") == 1, text
    last = text.strip().splitlines()[-1]
    assert last == f"Error: cannot write {path}: No space left on device; nothing was replaced", text
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_build_errors() -> None:
    with pytest.raises(ShapeError, match="not divisible"):
        vqkit.build_model(image_size=30)
    with pytest.raises(OptionError, match="has no option 'bta'.*beta"):
        vqkit.build_model(quantizer_options={"bta": 1})
    with pytest.raises(OptionError, match="init must be one of"):
        vqkit.build_model(quantizer_options={"init": "zeros"})
    with pytest.raises(OptionError, match="should be a float"):
        vqkit.build_model(quantizer_options={"beta": "high"})


def test_encode_decode_check_user_input() -> None:
    model = vqkit.build_model(seed=0).eval()
    with pytest.raises(ShapeError, match=r"\[B, 3, H, W\]"):
        model.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ShapeError, match=r"lie in \[0, 511\]"):
        model.decode(torch.full((1, 4, 4), 512))
    with pytest.raises(ShapeError, match="expected codes"):
        model.decode(torch.zeros(1, 16, dtype=torch.long))


def test_summary_reports_grid_and_bits() -> None:
    info = vqkit.build_model(seed=0).summary()
    assert info["grid"] == [4, 4] and info["codebook_size"] == 512 and info["bits_per_image"] == 16 * 9


# --- every resolved option is recorded ----------------------------------------------------------------------
def test_model_file_records_every_resolved_option_and_version(tmp_path: Path) -> None:
    model = vqkit.build_model(quantizer_options={"beta": 0.5}, seed=0)
    spec, _ = vqkit.read_spec(vqkit.save(model, tmp_path / "m.safetensors"))
    assert spec.quantizer_options == {"beta": 0.5}  # what the user set stays apart
    assert spec.resolved_options["quantizer"] == {
        "beta": 0.5,
        "init": "kmeans",
        "restart_after": 10,
        "estimator": "ste",
    }
    assert spec.resolved_options["decoder"] == {"widths": [128, 64, 32], "head": "conv", "output": "clamp"}
    assert spec.versions == {part: vqkit.__version__ for part in ("encoder", "quantizer", "decoder")}
    assert model.resolved_options == spec.resolved_options
    assert "init='kmeans' restart_after=10" in model.describe()
    info = model.summary()["quantizer"]
    assert info["options"] == {"beta": 0.5} and info["resolved_options"]["restart_after"] == 10
    assert info["version"] == vqkit.__version__


def _trained(seed: int = 0) -> vqkit.VQVAE:
    """A model whose codebook and weights moved away from their initial values (a few optimizer steps)."""
    model = vqkit.build_model(channels=1, image_size=16, latent_dim=8, codebook_size=16, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        x = torch.rand(8, 1, 16, 16, generator=g) * 2 - 1
        out = model(x)
        opt.zero_grad()
        ((out.reconstruction - x) ** 2).mean().add(out.quantized.loss).backward()
        opt.step()
    return model.eval()


def _change_default(
    monkeypatch: pytest.MonkeyPatch, kind: str, name: str, option: str, value: object
) -> None:
    """As if a later version changed a component's default: its constructor and its registry entry."""
    import dataclasses

    from vqkit.registry import REGISTRIES

    entry = REGISTRIES[kind].entry(name)
    init = entry.obj.__init__
    params = list(inspect.signature(init).parameters)[1:]
    defaults = list(init.__defaults__)
    defaults[params.index(option) - (len(params) - len(defaults))] = value
    monkeypatch.setattr(init, "__defaults__", tuple(defaults))
    options = [dataclasses.replace(o, default=value) if o.name == option else o for o in entry.options]
    monkeypatch.setattr(entry, "options", options)


def test_a_changed_default_does_not_change_a_saved_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _trained()
    path = vqkit.save(model, tmp_path / "m.safetensors")
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(9)) * 2 - 1
    with torch.no_grad():
        want = model(x).reconstruction
    # The decoder's head changes its weights' shapes, the quantizer's beta its loss: both defaults move.
    _change_default(monkeypatch, "decoder", "conv3", "head", "transpose")
    _change_default(monkeypatch, "quantizer", "vq", "beta", 1.0)
    assert (
        vqkit.build_model(channels=1, image_size=16).spec.resolved_options["decoder"]["head"] == "transpose"
    )
    loaded = vqkit.load(path)
    assert loaded.resolved_options == model.resolved_options and loaded.quantizer.beta == 0.25
    with torch.no_grad():
        assert torch.equal(loaded(x).reconstruction, want)
        a, b = loaded(x), model(x)
        assert torch.equal(a.reconstruction, b.reconstruction) and torch.equal(
            a.quantized.loss, b.quantized.loss
        )


def _rewrite_spec(path: Path, out: Path, edit) -> Path:
    """A copy of a model file whose spec (a JSON dict) went through ``edit``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    data = json.loads(meta["vqkit.spec"])
    edit(data)
    meta["vqkit.spec"] = json.dumps(data)
    save_file(load_file(str(path)), str(out), metadata=meta)
    return out


def _as_tanh_era(model: vqkit.VQVAE) -> vqkit.VQVAE:
    """``model`` as vqkit built it before conv3's decoder had the ``output`` option (always a Tanh)."""
    spec = model.spec
    old = vqkit.build_model(
        channels=spec.channels,
        image_size=spec.image_size,
        latent_dim=spec.latent_dim,
        codebook_size=spec.codebook_size,
        decoder_options={"output": "tanh"},
    )
    old.load_state_dict(model.state_dict())
    return old.eval()


def test_an_old_file_without_resolved_options_still_loads(tmp_path: Path) -> None:
    model = _as_tanh_era(_trained())
    path = vqkit.save(model, tmp_path / "m.safetensors")

    def as_format_1(data: dict) -> None:
        for key in ("resolved_options", "versions"):
            del data[key]
        del data["decoder_options"]["output"]  # the option did not exist yet
        data["format"] = 1

    old = _rewrite_spec(path, tmp_path / "old.safetensors", as_format_1)
    loaded = vqkit.load(old)
    assert loaded.resolved_options == model.resolved_options  # filled from today's defaults
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x).reconstruction, model(x).reconstruction)


# --- a spec from someone else's file is checked before anything is built ---------------------------------------
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("codebook_size", 2**38, "field codebook_size does not fit the stored tensors"),
        ("image_size", 400000, "image_size must lie in"),
        ("image_size", -32, "image_size must lie in"),
        ("channels", "abc", "channels must be an integer"),
        ("channels", 2, "field channels does not fit the stored tensors"),
        ("latent_dim", 1.5, "latent_dim must be an integer"),
        ("encoder_options", [1, 2], "encoder_options must be a JSON object"),
        ("quantizer", 7, "quantizer must be a component name"),
        ("value_range", [1, -1], "value_range must be"),
        ("format", 99, "newer vqkit"),
    ],
)
def test_malformed_specs_are_one_clear_error_naming_the_field(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    from cli_run import run

    good = vqkit.save(vqkit.build_model(seed=0), tmp_path / "m.safetensors")
    bad = _rewrite_spec(good, tmp_path / "bad.safetensors", lambda d: d.__setitem__(field, value))
    with pytest.raises(ModelFileError, match=message) as info:
        vqkit.load(bad)
    assert "\n" not in str(info.value)
    code, text = run("export", str(bad), "-o", str(tmp_path / "out"))
    assert code != 0 and message in text and text.strip().count("\n") == 0, text


def test_missing_plugin_origin_is_never_shown_as_a_command(tmp_path: Path) -> None:
    good = vqkit.save(vqkit.build_model(seed=0), tmp_path / "m.safetensors")

    def hostile(data: dict) -> None:
        data["quantizer"] = "evil-q"
        data["origins"]["quantizer"] = "evilpkg; touch PWNED"

    bad = _rewrite_spec(good, tmp_path / "bad.safetensors", hostile)
    with pytest.raises(ModelFileError) as info:
        vqkit.load(bad)
    message = str(info.value)
    assert "unknown quantizer 'evil-q'" in message and "not installed" in message
    assert "pip install" not in message and "PWNED" not in message and "Did you mean" not in message

    def plausible(data: dict) -> None:
        data["quantizer"] = "evil-q"
        data["origins"]["quantizer"] = "vq-extras==1.2.0"

    named = _rewrite_spec(good, tmp_path / "named.safetensors", plausible)
    with pytest.raises(ModelFileError, match=r"unknown quantizer 'evil-q'.*pip install vq-extras==1\.2\.0$"):
        vqkit.load(named)


def test_install_hint_accepts_only_package_names() -> None:
    from vqkit.modelfile import install_hint

    assert install_hint("vqkit-plugin-example==0.1.0") == "pip install vqkit-plugin-example==0.1.0"
    assert install_hint("some.pkg_name") == "pip install some.pkg_name"
    for text in ("evilpkg; touch PWNED", "a==1.0; rm -rf ~", "$(id)", "-e .", "pkg==1.0+local", "", None, 3):
        assert install_hint(text) is None, text


# --- images in: one layout on the torch side, channels first, uint8 or float ---------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io's own deprecation notice
def test_encode_takes_uint8_channels_first_like_the_loader_and_torchvision(tmp_path: Path) -> None:
    from torchvision.io import read_image

    from vqkit import pixels
    from vqkit.data import load_images

    model = vqkit.build_model(seed=0).eval()
    g = torch.Generator().manual_seed(0)
    chw = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    want = model.encode(pixels.to_float(chw))
    assert torch.equal(model.encode(chw), want)
    assert torch.equal(model.encode(chw.numpy()), want)
    one = model.encode(chw[0])  # one image in, one code grid out
    assert one.shape == (4, 4) and torch.equal(one, want[0])
    assert model.decode(one).shape == (3, 32, 32)
    # channels last (Pillow, OpenCV, the numpy runtime) is read by the shape
    assert torch.equal(model.encode(chw.permute(0, 2, 3, 1)), want)
    assert torch.equal(model.encode(chw[0].permute(1, 2, 0).numpy()), want[0])
    # the library's own loader and torchvision's reader, passed as they come
    for k in range(2):
        Image.fromarray(chw[k].permute(1, 2, 0).numpy()).save(tmp_path / f"{k}.png")
    loaded = load_images(str(tmp_path), split="all")
    assert loaded.shape == (2, 3, 32, 32) and torch.equal(model.encode(loaded), want[:2])
    assert torch.equal(model.encode(read_image(str(tmp_path / "1.png"))), want[1])
    # a shape that fits both layouts is channels first, the convention; one that fits neither is refused
    from vqkit.model import uint8_channels_first

    both, single = uint8_channels_first(torch.zeros(3, 32, 3, dtype=torch.uint8), 3)
    assert single and both.shape == (1, 3, 32, 3)
    with pytest.raises(ShapeError, match=r"\[B, 3, H, W\]"):
        model.encode(torch.zeros(2, 4, 32, 32, dtype=torch.uint8))


def test_encode_refuses_floats_far_outside_the_range() -> None:
    model = vqkit.build_model(seed=0).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    model.encode(x * 1.0005)  # rounding in a user's conversion is tolerated
    with pytest.raises(ShapeError, match=r"must lie in \[-1, 1\].*pass uint8"):
        model.encode(x * 127.5 + 127.5)
    with pytest.raises(ShapeError, match="NaN"):
        model.encode(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ShapeError, match="must be uint8"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.int32))


# --- the Hugging Face layout ------------------------------------------------------------------------------------
def test_hf_folder_and_single_file_hold_the_same_model(tmp_path: Path) -> None:
    import json

    model = _trained()
    file = vqkit.save(model, tmp_path / "m.safetensors")
    folder = vqkit.save(model, tmp_path / "m-hf", layout="hf")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "vqkit" and config["quantizer"] == "vq" and config["codebook_size"] == 16
    a, b = vqkit.load(file), vqkit.load(folder)
    assert a.spec == b.spec == vqkit.read_spec(folder)[0]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.equal(a.decode(a.encode(x)), b.decode(b.encode(x)))
    # The folder's weights file is itself a complete vqkit model file.
    assert vqkit.load(folder / "model.safetensors").spec == a.spec


def test_hf_save_keeps_the_users_files_and_refuses_foreign_ones(tmp_path: Path) -> None:
    model = vqkit.build_model(seed=0)
    folder = vqkit.save(model, str(tmp_path / "m") + "/")  # a trailing separator asks for a folder
    (folder / "README.md").write_text("my model card")
    vqkit.save(vqkit.build_model(seed=1), folder)  # an existing folder: the same layout, replaced in place
    assert (folder / "README.md").read_text() == "my model card"
    assert torch.equal(
        vqkit.load(folder).encoder.net[0].weight, vqkit.build_model(seed=1).encoder.net[0].weight
    )
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(vqkit.VQKitError, match="not a vqkit model's config; not overwriting"):
        vqkit.save(model, other, layout="hf")
    assert (other / "config.json").read_text() == '{"model_type": "bert"}'
    with pytest.raises(ModelFileError, match="not a vqkit model"):
        vqkit.load(other)


def test_hf_folder_whose_config_disagrees_with_its_weights_is_refused(tmp_path: Path) -> None:
    import json

    folder = vqkit.save(vqkit.build_model(seed=0), tmp_path / "m", layout="hf")
    config = json.loads((folder / "config.json").read_text())
    config["codebook_size"] = 2**38
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="describe different models"):
        vqkit.load(folder)
    with pytest.raises(ModelFileError, match="not a vqkit model: a model folder holds"):
        vqkit.load(tmp_path)


def test_a_conv3_file_saved_before_the_clamp_output_keeps_its_tanh(tmp_path: Path) -> None:
    """Decoders saved before conv3 had ``output`` (its resolved options lack it) were Tanh decoders: they
    load as such, not with today's default (a clamp), so their reconstructions do not change."""
    model = _as_tanh_era(_trained())
    path = vqkit.save(model, tmp_path / "m.safetensors")

    def before_the_option(data: dict) -> None:
        del data["decoder_options"]["output"]
        del data["resolved_options"]["decoder"]["output"]

    loaded = vqkit.load(_rewrite_spec(path, tmp_path / "old.safetensors", before_the_option))
    assert loaded.resolved_options["decoder"]["output"] == "tanh"
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x).reconstruction, model(x).reconstruction)
        clamped = _as_tanh_era(model)  # the same weights under today's default head differ
        clamped.decoder.output = "clamp"
        clamped.decoder.net = clamped.decoder.net[:-1]
        assert not torch.equal(clamped(x).reconstruction, model(x).reconstruction)


def _saved_before(tmp_path: Path, options: tuple[str, ...], **build) -> tuple[vqkit.VQVAE, vqkit.VQVAE]:
    """A model built with ``build`` (1 channel, 16x16), and the same file as it would have been saved before
    the quantizer had ``options`` (its stored spec lacks them), loaded."""
    model = vqkit.build_model(channels=1, image_size=16, seed=0, **build).eval()
    path = vqkit.save(model, tmp_path / "m.safetensors")

    def before_the_options(data: dict) -> None:
        for key in options:
            data["quantizer_options"].pop(key, None)
            data["resolved_options"]["quantizer"].pop(key, None)

    return model, vqkit.load(_rewrite_spec(path, tmp_path / "old.safetensors", before_the_options))


def test_an_fsq_file_saved_before_the_spread_term_trains_on_without_it(tmp_path: Path) -> None:
    """fsq models saved before ``entropy_weight`` had no training loss: fine-tuning one keeps it so."""
    model, loaded = _saved_before(tmp_path, ("entropy_weight",), quantizer="fsq")
    assert model.resolved_options["quantizer"]["entropy_weight"] == 0.05
    assert loaded.resolved_options["quantizer"]["entropy_weight"] == 0.0
    loaded.train()
    assert float(loaded(torch.rand(2, 1, 16, 16) * 2 - 1).quantized.loss) == 0.0
    assert float(model.train()(torch.rand(2, 1, 16, 16) * 2 - 1).quantized.loss.detach()) > 0.0


def test_an_lfq_file_saved_before_entropy_units_keeps_its_loss(tmp_path: Path) -> None:
    """lfq models saved before ``entropy_units`` and ``spherical`` weighed their entropy terms in nats on the
    raw latents: fine-tuning one keeps that loss."""
    today = vqkit.build_model(quantizer="lfq", channels=1, image_size=16, latent_dim=5).resolved_options
    assert today["quantizer"]["entropy_units"] == "fraction" and today["quantizer"]["spherical"] is True
    model, loaded = _saved_before(
        tmp_path,
        ("entropy_units", "spherical"),
        quantizer="lfq",
        latent_dim=5,
        quantizer_options={"spherical": False},
    )
    assert loaded.resolved_options["quantizer"]["entropy_units"] == "nats"
    assert loaded.quantizer.spherical is False
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        # Same commitment, entropy terms log(32) = 5 log 2 times larger in nats.
        a, b = (m.train()(x).quantized.loss for m in (model, loaded))
        z = model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 5)
        commitment = 0.05 * torch.nn.functional.mse_loss(z, torch.where(z > 0, 1.0, -1.0))
        torch.testing.assert_close(b - commitment, (a - commitment) * 5 * math.log(2))


def test_a_gumbel_file_saved_before_its_codebook_upkeep_loads_without_it(tmp_path: Path) -> None:
    """Gumbel models saved before ``init``/``restart_after`` had no upkeep state: they load (no tensors
    missing) and give the codes they gave."""
    old, loaded = _saved_before(
        tmp_path,
        ("init", "restart_after"),
        quantizer="gumbel",
        latent_dim=8,
        codebook_size=32,
        quantizer_options={"init": "random", "restart_after": 0},
    )
    assert loaded.quantizer.upkeep is None and loaded.resolved_options["quantizer"]["init"] == "random"
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert torch.equal(loaded.encode(x), old.encode(x))
    assert vqkit.build_model(quantizer="gumbel", channels=1, image_size=16).quantizer.upkeep is not None


def test_a_gumbel_file_saved_before_cosine_logits_keeps_its_linear_logits(tmp_path: Path) -> None:
    """Gumbel models saved before the ``logits`` and ``diversity`` options scored codes by a biased linear
    projection: they load as such (the file's weights include the bias), with the codes they gave."""
    old, loaded = _saved_before(
        tmp_path,
        ("logits", "diversity", "scale"),
        quantizer="gumbel",
        latent_dim=8,
        codebook_size=32,
        quantizer_options={"logits": "linear", "diversity": 0.0},
    )
    assert loaded.resolved_options["quantizer"]["logits"] == "linear"
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert torch.equal(loaded.encode(x), old.encode(x))
    assert vqkit.build_model(quantizer="gumbel").resolved_options["quantizer"]["logits"] == "cosine"
