"""Streaming training data: folders and tar shards decoded by worker processes, batch by global step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqkit.data import DataError, DataWarning, load_images
from vqkit.data.augment import Augment
from vqkit.data.pack import pack_folder
from vqkit.data.shards import expand_braces
from vqkit.data.sources import open_source, probe
from vqkit.data.stream import StreamingData
from vqkit.data.workers import WorkerDied
from vqkit.training.batches import Batches


def _folder(root: Path, n: int = 60, size: tuple[int, int] = (24, 20)) -> Path:
    """``n`` random RGB images, PNG and JPEG mixed, in three sub-folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / f"c{i % 3}" / f"im{i:03d}.{'png' if i % 2 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return root


def _stream(source: str | Path, split: str = "train", **kw: object) -> StreamingData:
    src = open_source(source, split)
    channels, size = probe(src, kw.pop("channels", None), kw.pop("image_size", 16))  # type: ignore[arg-type]
    options = {"batch_size": 8, "seed": 3, "workers": 0, **kw}
    return StreamingData(src, channels=channels, image_size=size, **options)  # type: ignore[arg-type]


def test_streamed_folder_gives_the_in_memory_batches_from_any_step(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs")
    memory = Batches(load_images(str(root), image_size=16), 8, torch.device("cpu"), seed=3)
    with _stream(root, workers=2) as streamed, _stream(root, workers=0) as here:
        for step in range(14):  # more than an epoch (about 54 training images / 8)
            expected = memory.get(step)
            assert torch.equal(streamed.get(step), expected), step
            assert torch.equal(here.get(step), expected), step
        assert streamed.images_seen == 14 * 8 and streamed.wait_seconds > 0
    # a fresh stream asked for step 11 first (a resumed run) gives step 11's batch without the earlier ones
    with _stream(root, workers=2) as resumed:
        assert torch.equal(resumed.get(11), memory.get(11))
        assert torch.equal(resumed.get(12), memory.get(12))


def test_shards_packed_from_a_folder_stream_the_same_augmented_batches(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs")
    result = pack_folder(root, tmp_path / "shards", shard_size=25)
    assert [p.name for p in result.shards] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert result.images == 60
    aug = Augment(scale=(0.3, 1.0), flip=True)
    patterns = [
        tmp_path / "shards",
        f"{tmp_path}/shards/shard-{{000000..000002}}.tar",
        f"{tmp_path}/shards/*.tar",
    ]
    with _stream(root, augment=aug) as folder:
        batches = [folder.get(s) for s in range(9)]
    for pattern in patterns:
        with _stream(pattern, augment=aug, workers=2) as shards:
            assert len(shards.source) == len(folder.source)
            for s in range(9):
                assert torch.equal(shards.get(s), batches[s]), (pattern, s)
    # the held-out split is the same too
    assert len(open_source(tmp_path / "shards", "test")) == len(open_source(root, "test"))


def test_augmentation_is_seeded_by_sample_and_epoch_and_off_by_default(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", n=12, size=(40, 32))
    plain = _stream(root, split="all", batch_size=12)
    aug = Augment(scale=(0.2, 0.6), flip=True)
    a, b = (
        _stream(root, split="all", batch_size=12, augment=aug),
        _stream(root, split="all", batch_size=12, augment=aug),
    )
    x0, x1 = a.get(0), a.get(1)  # one batch is one epoch here: steps 0 and 1 show every image once each
    assert torch.equal(b.get(1), x1) and torch.equal(b.get(0), x0)  # any order, any object: the same crops
    order0 = [i for _, i in a.order.samples(0)]
    order1 = [i for _, i in a.order.samples(1)]
    same_image_epoch1 = x1[[order1.index(i) for i in order0]]
    assert not torch.equal(same_image_epoch1, x0)  # a new epoch draws new crops of the same image
    assert not torch.equal(plain.get(0), x0)  # augmentation changes the pixels...
    # ...and without it an image is the centre square, exactly as the image readers give it
    from vqkit.images import read_image

    first = plain.order.samples(0)[0][1]
    centre = read_image(root / plain.source.name(first), 3, 16)
    assert torch.equal(plain.get(0)[0], torch.from_numpy(centre).float() / 127.5 - 1)
    flipped = _stream(root, split="all", batch_size=12, augment=Augment(flip=True)).get(0)
    mirrored = (flipped == plain.get(0).flip(-1)).flatten(1).all(1)
    unchanged = (flipped == plain.get(0)).flatten(1).all(1)
    assert bool((mirrored | unchanged).all()) and 0 < int(mirrored.sum()) < 12
    with pytest.raises(DataError, match="augment scale"):
        Augment(scale=(0.5, 1.5))


def test_ranks_stream_disjoint_equal_shares(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", n=30)
    shares = [_stream(root, split="all", batch_size=6, rank=r, world=2) for r in range(2)]
    per_epoch = [[i for s in range(5) for _, i in share.order.samples(s)] for share in shares]  # 15 a rank
    assert set(per_epoch[0]).isdisjoint(per_epoch[1])
    assert sorted(per_epoch[0] + per_epoch[1]) == list(range(30))
    assert shares[0].get(0).shape == (3, 3, 16, 16)  # batch 6 over 2 processes
    next_epoch = [i for s in range(5, 10) for _, i in shares[0].order.samples(s)]
    assert next_epoch != per_epoch[0]  # reshuffled every epoch


def test_unreadable_file_is_one_error_naming_it_or_skipped_and_counted(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", n=20)
    (root / "c0" / "im000.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # in the training split
    with pytest.raises(DataError, match=r"im000\.jpg"):  # channels from the data: the file's header is read
        _stream(root, split="all")
    with _stream(root, split="all", batch_size=20, workers=2, channels=3) as stream:  # met in a worker
        with pytest.raises(DataError, match=r"im000\.jpg.*--skip-bad") as info:
            stream.get(0)
        assert "Traceback" not in str(info.value)
    stream = _stream(root, split="all", batch_size=20, workers=2, skip_bad=True, channels=3)
    with pytest.warns(DataWarning, match=r"im000\.jpg"):
        x = stream.get(0)
    assert x.shape == (20, 3, 16, 16) and list(stream.skipped) == ["c0/im000.jpg"]
    stream.get(1)
    assert len(stream.skipped) == 1  # counted once, however often it comes round
    with pytest.warns(
        DataWarning, match=r"left out 1 unreadable image\(s\)"
    ):  # and the count said at the end
        stream.close()


def test_a_dead_worker_is_one_clear_error(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", n=20)
    with _stream(root, split="all", workers=1) as stream:
        stream.get(0)
        os.kill(stream._pool._procs[0].pid, signal.SIGKILL)  # type: ignore[union-attr]
        with pytest.raises(WorkerDied, match="decoding worker process ended unexpectedly"):
            for step in range(1, 10):
                stream.get(step)


def test_decoding_workers_never_import_torch() -> None:
    # a worker that imported torch would hold about 500 MB instead of about 40 MB
    code = "import sys, vqkit.data.decode_worker, vqkit.data.decode; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_batch_bigger_than_the_data_warns(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", n=12)
    with pytest.warns(DataWarning, match="batch_size 100 is larger than the 12 training images"):
        _stream(root, split="all", batch_size=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _stream(root, split="all", batch_size=12)


def test_shard_names_and_bad_shards(tmp_path: Path) -> None:
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}-{8..10}.tar") == [
        "a-8.tar",
        "a-9.tar",
        "a-10.tar",
        "b-8.tar",
        "b-9.tar",
        "b-10.tar",
    ]
    with pytest.raises(DataError, match="no such shard"):
        open_source(f"{tmp_path}/s-{{0..1}}.tar")
    with pytest.raises(DataError, match="no shard matches"):
        open_source(f"{tmp_path}/*.tar")
    root = _folder(tmp_path / "imgs", n=6)
    with tarfile.open(tmp_path / "packed.tar.gz", "w:gz") as tar:
        tar.add(root / "c0" / "im000.jpg", arcname="im000.jpg")
    (tmp_path / "gz.tar").write_bytes((tmp_path / "packed.tar.gz").read_bytes())
    with pytest.raises(DataError, match="compressed tar"):
        open_source(tmp_path / "gz.tar", "all")


def test_pack_refuses_foreign_folders_and_counts_what_it_skips(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vqkit.cli.main import cli

    root = _folder(tmp_path / "imgs", n=10)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n nope")
    run = CliRunner().invoke
    bad = run(cli, ["data", "pack", str(root), "-o", str(tmp_path / "out"), "--no-progress"])
    assert bad.exit_code == 1 and "broken.png" in bad.output and "--skip-bad" in bad.output
    ok = run(cli, ["data", "pack", str(root), "-o", str(tmp_path / "out"), "--skip-bad", "--shard-size", "4"])
    assert ok.exit_code == 0, ok.output
    assert "packed 10 images into 3 shard(s)" in ok.output and "left out 1 unreadable" in ok.output
    # packing again into its own earlier output is fine, and stale shards of the bigger pack go
    again = run(cli, ["data", "pack", str(root), "-o", str(tmp_path / "out"), "--skip-bad", "--no-progress"])
    assert again.exit_code == 0 and sorted(os.listdir(tmp_path / "out")) == [
        "shard-000000.tar",
        "vqkit-shards.json",
    ]
    (tmp_path / "out" / "notes.txt").write_text("mine")
    refused = run(cli, ["data", "pack", str(root), "-o", str(tmp_path / "out"), "--skip-bad"])
    assert refused.exit_code == 1 and "notes.txt" in refused.output and "Traceback" not in refused.output
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    refused = run(cli, ["data", "pack", str(root), "-o", str(root / "c0"), "--skip-bad"])
    assert refused.exit_code == 1 and "never overwrites" in refused.output


_KILLED_PACK = """
import os, signal, sys
from vqkit.data.pack import pack_folder
done = 0
def progress(n):
    global done
    done += n
    if done == 25:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-pack: two shards written, the rest never will be
pack_folder(sys.argv[1], sys.argv[2], shard_size=10, progress=progress)
"""


def test_training_refuses_the_shards_of_an_interrupted_pack_and_says_how_to_finish_it(
    tmp_path: Path,
) -> None:
    from cli_run import run

    root = _folder(tmp_path / "imgs", n=60)
    out = tmp_path / "out"
    child = subprocess.run([sys.executable, "-c", _KILLED_PACK, str(root), str(out)], check=False)
    assert child.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    for source in (out, str(out / "*.tar"), str(out / "shard-{000000..000001}.tar")):
        with pytest.raises(DataError, match="interrupted pack") as info:
            open_source(source, "train")
        assert f"vqkit data pack {root} -o {out}" in str(info.value)
    code, text = run("train", "--data", str(out), "--image-size", "16", "--steps", "1", "-q")
    assert code == 1 and text.strip().count("\n") == 0 and "is incomplete" in text, text
    assert run("data", "pack", str(root), "-o", str(out), "--no-progress")[0] == 0  # finishing it
    assert len(open_source(out, "all")) == 60


def test_augmentation_crops_and_flips_as_drawn() -> None:
    from vqkit.data.augment import augment_images

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 3, 8, 8), dtype=np.uint8)
    samples = [(2, i) for i in range(16)]
    crop = Augment(scale=(0.25, 0.25), ratio=(1, 1), flip=True)
    out = augment_images(x, samples, crop, seed=1)
    assert out.shape == x.shape and out.dtype == np.uint8
    assert np.array_equal(out, augment_images(x, samples, crop, seed=1))  # a pure function of the draws
    for k, (epoch, index) in enumerate(samples):
        (left, top, right, bottom), flip = crop.draw(1, epoch, index, 8, 8)
        assert (right - left, bottom - top) == (4, 4)
        im = Image.fromarray(x[k].transpose(1, 2, 0)).resize(
            (8, 8), Image.BICUBIC, box=(left, top, right, bottom)
        )
        ref = np.asarray(im).transpose(2, 0, 1)
        assert np.array_equal(out[k], ref[:, :, ::-1] if flip else ref)
    flips = augment_images(x, samples, Augment(flip=True), seed=1)
    mirrored = [np.array_equal(flips[k], x[k, :, :, ::-1]) for k in range(16)]
    assert all(m or np.array_equal(flips[k], x[k]) for k, m in enumerate(mirrored)) and 0 < sum(mirrored) < 16
