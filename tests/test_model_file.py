from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
