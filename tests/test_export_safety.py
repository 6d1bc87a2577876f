"""An export never deletes what it did not write; a tokenizer folder someone hands you cannot make the runtime
read outside it or run mismatched graphs; outputs get the umask's modes; killed writes are cleaned up."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_run import run

import vqkit
from vqkit.data import load_mnist5k
from vqkit.errors import VQKitError
from vqkit.export import ExportError, export
from vqkit.images import write_images
from vqkit.runtime import Tokenizer

SMALL = {"encoder_options": {"widths": [8, 16, 32]}, "decoder_options": {"widths": [32, 16, 8]}}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = vqkit.build_model("conv3", "vq", channels=1, codebook_size=64, latent_dim=8, seed=0, **SMALL)
    return vqkit.save(model, tmp_path_factory.mktemp("m") / "m.safetensors")


@pytest.fixture(scope="module")
def tokenizer(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "tok"
    export(model_file, folder, validate=False)
    return folder


def _copy(tokenizer: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(tokenizer, out)
    return out


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- never delete what is not ours --------------------------------------------------------------------------
def test_a_folder_with_a_fake_vqkit_json_is_not_wiped(model_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "vqkit.json").write_text("{}")
    (folder / "precious.txt").write_text("x")
    code, text = run("export", str(model_file), "-o", str(folder), "--no-validate")
    assert code == 1 and "other files in it" in text and text.strip().count("\n") == 0, text
    assert (folder / "precious.txt").read_text() == "x"


def test_reexport_keeps_user_files_by_refusing_and_replaces_a_clean_export(
    model_file: Path, tokenizer: Path, tmp_path: Path
) -> None:
    folder = _copy(tokenizer, tmp_path)
    info = json.loads((folder / "vqkit.json").read_text())
    assert sorted(info["manifest"]) == ["decoder.onnx", "encoder.onnx"]
    (folder / "notes.txt").write_text("mine")
    (folder / "mine").mkdir()
    (folder / "mine" / "keep.txt").write_text("mine too")
    code, text = run("export", str(model_file), "-o", str(folder), "--no-validate")
    assert code == 1 and text.strip().count("\n") == 0, text
    assert "files vqkit did not write (mine/, notes.txt)" in text
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "mine" / "keep.txt").is_file()
    (folder / "notes.txt").unlink()
    shutil.rmtree(folder / "mine")
    with open(folder / "decoder.onnx", "ab") as f:  # an edited graph is the user's work now
        f.write(b"\0")
    with pytest.raises(ExportError, match=r"exported files changed since \(decoder.onnx\)"):
        export(model_file, folder, validate=False)
    shutil.copy(tokenizer / "decoder.onnx", folder / "decoder.onnx")
    export(model_file, folder, validate=False)  # an unchanged earlier export is replaced
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx", "encoder.onnx", "vqkit.json"]


def test_an_export_without_checksums_is_never_replaced_over_a_graph_that_may_be_edited(
    model_file: Path, tokenizer: Path, tmp_path: Path
) -> None:
    folder = _copy(tokenizer, tmp_path)
    info = json.loads((folder / "vqkit.json").read_text())
    del info["manifest"]  # what an older vqkit wrote: the graphs' names, no checksums
    (folder / "vqkit.json").write_text(json.dumps(info))
    with open(folder / "decoder.onnx", "ab") as f:  # the user's edit, which nothing records
        f.write(b"\0")
    edited = (folder / "decoder.onnx").read_bytes()
    code, text = run("export", str(model_file), "-o", str(folder), "--no-validate")
    assert code == 1 and text.strip().count("\n") == 0, text
    assert "older vqkit" in text and "decoder.onnx, encoder.onnx" in text, text
    assert (folder / "decoder.onnx").read_bytes() == edited
    (folder / "decoder.onnx").unlink()
    (folder / "encoder.onnx").unlink()
    export(model_file, folder, validate=False)  # with the graphs moved out, its vqkit.json is replaced
    assert "manifest" in json.loads((folder / "vqkit.json").read_text())


def test_export_into_the_current_folder_refuses_clearly(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, text = run("export", str(model_file), "-o", ".", "--no-validate")
    assert code == 1 and "current folder" in text and text.strip().count("\n") == 0, text
    (here / "a.txt").write_text("a")
    code, text = run("export", str(model_file), "-o", ".", "--no-validate")
    assert code == 1 and "other files in it" in text and (here / "a.txt").is_file()


def test_decode_refuses_to_overwrite_pngs_unless_asked(tokenizer: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", np.zeros((2, 4, 4), dtype=np.int64))
    out = tmp_path / "out"
    out.mkdir()
    (out / "000001.png").write_bytes(b"the user's picture")
    code, text = run("decode", str(tokenizer), str(tmp_path / "c.npy"), "-o", str(out))
    assert code == 1 and "000001.png exists already" in text and "--overwrite" in text, text
    assert (out / "000001.png").read_bytes() == b"the user's picture" and not (out / "000000.png").exists()
    code, text = run("decode", str(tokenizer), str(tmp_path / "c.npy"), "-o", str(out), "--overwrite")
    assert code == 0, text
    assert (out / "000001.png").read_bytes()[:4] == b"\x89PNG"


def test_encode_names_the_image_of_each_row(tokenizer: Path, tmp_path: Path) -> None:
    write_images(load_mnist5k("test")[0][:3], tmp_path / "photos")
    paths = sorted((tmp_path / "photos").glob("*.png"))
    code, text = run(
        "encode", str(tokenizer), str(paths[2]), str(tmp_path / "photos"), "-o", str(tmp_path / "c.npy")
    )
    assert code == 0, text
    rows = json.loads((tmp_path / "c.json").read_text())
    assert rows["images"] == [str(p) for p in [paths[2], *paths]] and rows["codes"] == "c.npy"
    assert rows["shape"] == list(np.load(tmp_path / "c.npy").shape)


def test_encode_reads_any_data_source_a_batch_at_a_time(tokenizer: Path, tmp_path: Path) -> None:
    from vqkit.data.pack import pack_folder

    write_images(load_mnist5k("test")[0][:12], tmp_path / "photos")
    pack_folder(tmp_path / "photos", tmp_path / "shards", shard_size=5)
    files = sorted((tmp_path / "photos").glob("*.png"))
    assert run("encode", str(tokenizer), *map(str, files), "-o", str(tmp_path / "f.npy"))[0] == 0
    want = np.load(tmp_path / "f.npy")
    for k, source in enumerate((tmp_path / "photos", f"{tmp_path}/shards/*.tar")):
        out = tmp_path / f"d{k}.npy"
        code, text = run("encode", str(tokenizer), "--data", str(source), "--batch-size", "5", "-o", str(out))
        assert code == 0 and "encoded    12 images" in text, text
        assert np.array_equal(np.load(out), want)
        assert json.loads(out.with_suffix(".json").read_text())["images"] == [p.name for p in files]
    code, text = run(
        "encode", str(tokenizer), "--data", "mnist5k", "--split", "test", "-o", str(tmp_path / "m.npy")
    )
    assert code == 0 and np.load(tmp_path / "m.npy").shape[0] == 500, text
    code, text = run("encode", str(tokenizer), "-o", str(tmp_path / "x.npy"))
    assert code == 1 and "--data" in text


def test_encode_never_replaces_a_json_of_the_users_beside_the_codes(tokenizer: Path, tmp_path: Path) -> None:
    write_images(load_mnist5k("test")[0][:2], tmp_path / "photos")
    mine = tmp_path / "codes.json"
    mine.write_text('{"my": "notes"}')
    args = ("encode", str(tokenizer), str(tmp_path / "photos"), "-o", str(tmp_path / "codes.npy"))
    code, text = run(*args)
    assert code == 1 and text.strip().count("\n") == 0, text
    assert f"{mine} exists and is not an image list that vqkit encode wrote" in text
    assert mine.read_text() == '{"my": "notes"}' and not (tmp_path / "codes.npy").exists()
    mine.unlink()
    assert run(*args)[0] == 0
    assert run(*args)[0] == 0  # encoding again replaces the list it wrote itself
    assert json.loads(mine.read_text())["codes"] == "codes.npy"


# --- a hostile or mismatched tokenizer folder ----------------------------------------------------------------
def _edit(folder: Path, change) -> None:
    info = json.loads((folder / "vqkit.json").read_text())
    change(info)
    (folder / "vqkit.json").write_text(json.dumps(info))


def _strip_graph_codebook_size(folder: Path) -> None:
    """Graphs that do not restate their codebook size (as a third party's exporter may write them)."""
    import onnx

    for name in ("encoder.onnx", "decoder.onnx"):
        proto = onnx.load(str(folder / name))
        kept = [p for p in proto.metadata_props if p.key != "vqkit_codebook_size"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        onnx.save(proto, str(folder / name))


def test_a_code_beyond_32_bits_never_wraps_to_a_valid_one(tokenizer: Path, tmp_path: Path) -> None:
    tok = Tokenizer(tokenizer)
    assert tok.codes_dtype == np.int32
    huge = np.zeros((1, *tok.codes_shape), dtype=np.uint64)
    huge[0, 0, 0] = 2**32 + 5  # 5 once narrowed to int32
    with pytest.raises(VQKitError, match="codes must lie in"):
        tok.decode(huge)
    folder = _copy(tokenizer, tmp_path)
    _strip_graph_codebook_size(folder)
    _edit(folder, lambda info: info.update(codebook_size=2**40))
    with pytest.raises(VQKitError, match=r"codebook_size must lie in \[1, 2147483648\], got 1099511627776"):
        Tokenizer(folder)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image_size", 10**12, r"image_size must lie in \[1, 65536\]"),
        ("channels", True, "channels must be a whole number"),
        ("grid", [4, 2**40], r"grid must lie in \[1, 65536\]"),
        ("grid", [4], r"grid must be \[rows, columns\]"),
        ("codebook_size", 2**31 + 1, r"codebook_size must lie in \[1, 2147483648\]"),
        ("num_codebooks", 0, r"num_codebooks must lie in \[1, 1024\]"),
    ],
)
def test_absurd_sizes_in_vqkit_json_are_refused(
    tokenizer: Path, tmp_path: Path, field: str, value: object, message: str
) -> None:
    folder = _copy(tokenizer, tmp_path)
    _edit(folder, lambda info: info.update({field: value}))
    with pytest.raises(VQKitError, match=message):
        Tokenizer(folder)


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_vqkit_json_cannot_point_outside_its_folder(tokenizer: Path, tmp_path: Path, where: str) -> None:
    folder = _copy(tokenizer, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(tokenizer / "encoder.onnx", outside / "encoder.onnx")
    name = {
        "absolute": str(outside / "encoder.onnx"),
        "dotdot": "../elsewhere/encoder.onnx",
        "symlink": "link.onnx",
    }[where]
    if where == "symlink":
        (folder / "link.onnx").symlink_to(outside / "encoder.onnx")
    _edit(folder, lambda info: info["encoder"].update(file=name))
    with pytest.raises(VQKitError, match="not a file inside"):
        Tokenizer(folder)


def test_vqkit_json_itself_cannot_link_outside(tokenizer: Path, tmp_path: Path) -> None:
    folder = _copy(tokenizer, tmp_path)
    (folder / "vqkit.json").rename(tmp_path / "elsewhere.json")
    (folder / "vqkit.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(VQKitError, match="links outside"):
        Tokenizer(folder)


def test_external_data_cannot_point_outside(tokenizer: Path, tmp_path: Path) -> None:
    import onnx

    folder = _copy(tokenizer, tmp_path)
    proto = onnx.load(str(folder / "decoder.onnx"))
    onnx.save(proto, str(folder / "decoder.onnx"), save_as_external_data=True, location="weights.bin")
    Tokenizer(folder)  # external data beside the graph is fine
    raw = (folder / "decoder.onnx").read_bytes()
    # The same length, so the protobuf stays well formed: "weights.bin" -> "../hosts.xx"
    (folder / "decoder.onnx").write_bytes(raw.replace(b"weights.bin", b"../hosts.xx"))
    with pytest.raises(VQKitError, match=r"external data '../hosts.xx' outside"):
        Tokenizer(folder)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i.update(codebook_size=32), "exported with codebook_size 64, vqkit.json says 32"),
        (lambda i: i.update(channels=3), "input is tensor(float) ['batch', 1, 32, 32]"),
        (lambda i: i.update(image_size=64), "vqkit.json says tensor(float) [N, 1, 64, 64]"),
        (lambda i: i.update(grid=[8, 8]), "output is tensor(int32)"),
        (
            lambda i: (i["encoder"].update(file="decoder.onnx"), i["decoder"].update(file="encoder.onnx")),
            "the encoder graph input is tensor(int32)",
        ),
    ],
)
def test_tampered_metadata_is_one_clear_error(tokenizer: Path, tmp_path: Path, change, message: str) -> None:
    folder = _copy(tokenizer, tmp_path)
    _edit(folder, change)
    with pytest.raises(VQKitError, match="does not match its vqkit.json") as info:
        Tokenizer(folder)
    assert message in str(info.value)
    np.save(tmp_path / "c.npy", np.zeros((1, 4, 4), dtype=np.int64))
    code, text = run("decode", str(folder), str(tmp_path / "c.npy"), "-o", str(tmp_path / "o"))
    assert code == 1 and text.strip().count("\n") == 0 and "does not match" in text


# --- modes and leftovers --------------------------------------------------------------------------------------
def test_outputs_get_the_umask_modes(model_file: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        export(model_file, tmp_path / "tok", validate=False)
        model = vqkit.load(model_file)
        saved = vqkit.save(model, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "tok").stat().st_mode) == 0o755
    for p in [*(tmp_path / "tok").iterdir(), saved]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    os.chmod(saved, 0o600)  # an existing file keeps the mode its owner gave it
    vqkit.save(model, saved)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


def test_leftovers_of_a_killed_write_are_cleaned_up_and_only_ours(model_file: Path, tmp_path: Path) -> None:
    dead = _dead_pid()
    stale_dir = tmp_path / f".tok.vqkit-{dead}-0123abcd.tmp"
    stale_dir.mkdir()
    (stale_dir / "encoder.onnx").write_bytes(b"half")
    live_dir = tmp_path / f".tok.vqkit-{os.getppid()}-0123abcd.tmp"  # a running process's: left alone
    live_dir.mkdir()
    users = tmp_path / ".tok.mine.tmp"
    users.mkdir()
    stale_file = tmp_path / f".m.safetensors.vqkit-{dead}-89abcdef.tmp"
    stale_file.write_bytes(b"half")
    export(model_file, tmp_path / "tok", validate=False)
    vqkit.save(vqkit.load(model_file), tmp_path / "m.safetensors")
    assert not stale_dir.exists() and not stale_file.exists()
    assert live_dir.is_dir() and users.is_dir()
