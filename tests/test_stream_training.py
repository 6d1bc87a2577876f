"""Training on streamed data: the path the run takes and why, SIGKILL-and-resume equality, DDP shares."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import vqkit
from vqkit.data import DataWarning
from vqkit.data.pack import pack_folder
from vqkit.training import TrainConfig, run_ddp_cpu, train
from vqkit.training.data import open_training_data

CPU = torch.device("cpu")


def _folder(root: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        path = root / f"c{i % 2}" / f"im{i:03d}.{'png' if i % 2 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return root


def _config(data: Path | str, **kw: object) -> TrainConfig:
    base = dict(
        data=str(data),
        image_size=16,
        steps=8,
        batch_size=8,
        log_every=2,
        eval_every=0,
        eval_images=8,
        checkpoint_every=4,
        data_workers=1,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_the_run_holds_small_data_in_memory_and_streams_beyond_the_budget(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs")
    config = _config(root)
    before = config.to_json()
    held, _ = open_training_data(config, None, 16, CPU)
    assert config.to_json() == before  # the data layer never edits the run's config
    streamed, held_out = open_training_data(_config(root, data_memory_gb=0), None, 16, CPU)
    try:
        assert "held in memory" in held.description and "within" in held.description
        assert "streamed from the folder" in streamed.description
        assert "more than the data_memory_gb budget of 0 GiB" in streamed.description
        assert "1 decoding worker processes" in streamed.description
        for step in (0, 5, 9):  # the same batches on both paths
            assert torch.equal(held.get(step), streamed.get(step))
        assert held_out.split == "test" and held_out.images.shape[1:] == (3, 16, 16)
    finally:
        streamed.close()
    with pytest.warns(DataWarning, match="batch_size 100000 is larger than the 4500 training images"):
        open_training_data(TrainConfig(batch_size=100000), None, None, CPU)


_CHILD = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from vqkit.training import TrainConfig, train
config, kill_at = TrainConfig.from_json(sys.argv[1]), int(sys.argv[2])
def die(step, model):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no checkpoint, no clean-up: the worst a crash can do
train(config, callback=die)
"""


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "shards"])
def test_sigkilled_streaming_run_resumes_to_the_same_weights(
    tmp_path: Path, packed: bool, one_thread: None
) -> None:
    data: Path = _folder(tmp_path / "imgs")
    if packed:
        data = pack_folder(data, tmp_path / "shards", shard_size=15).out
    # streamed (a zero memory budget), augmented: data order, crops, flips and worker state must all come back
    common = dict(data_memory_gb=0, augment_scale=0.5, augment_flip=True)
    full = train(_config(data, out=str(tmp_path / "full"), **common))
    cut = _config(data, out=str(tmp_path / "cut"), **common)
    child = subprocess.run([sys.executable, "-c", _CHILD, cut.to_json(), "6"], timeout=300)
    assert child.returncode == -signal.SIGKILL  # killed after training step 6, two steps past its checkpoint
    model_file = tmp_path / "cut" / "model.safetensors"
    with safe_open(str(model_file), "pt") as f:
        assert f.metadata()["vqkit.train.step"] == "4"
    train(_config(data, init_from=str(model_file), resume=True, **common))
    resumed, reference = vqkit.load(model_file).state_dict(), vqkit.load(full.model_path).state_dict()
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key


def test_ddp_ranks_stream_their_shares_as_the_in_memory_path_does(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs")
    common = dict(steps=3, log_every=3, checkpoint_every=0, eval_images=4)
    in_memory = run_ddp_cpu(_config(root, out=str(tmp_path / "a"), **common), world_size=2)
    streamed = run_ddp_cpu(_config(root, out=str(tmp_path / "b"), data_memory_gb=0, **common), world_size=2)
    for key in in_memory[0]:
        assert torch.equal(streamed[0][key], streamed[1][key]), key  # the replicas agree
        assert torch.equal(streamed[0][key], in_memory[0][key]), key  # and saw the in-memory batches


def test_an_unreadable_held_out_image_is_the_same_error_on_both_paths_never_a_switch_to_training_images(
    tmp_path: Path,
) -> None:
    from vqkit.data import DataError
    from vqkit.data.folder import is_held_out
    from vqkit.images import find_image_names

    root = _folder(tmp_path / "imgs")
    held = [n for n in find_image_names(root) if is_held_out(n)]
    assert held, "the folder needs a held-out image"
    (root / held[0]).write_bytes(b"\xff\xd8 not a jpeg")
    for budget in (None, 0):  # in memory, streamed
        with pytest.raises(DataError, match=f"{held[0]}.*--skip-bad"):
            open_training_data(_config(root, data_memory_gb=budget), None, 16, CPU)
    results = [
        open_training_data(_config(root, data_memory_gb=b, skip_bad=True), None, 16, CPU) for b in (None, 0)
    ]
    try:
        (memory, memory_held), (streamed, streamed_held) = results
        assert "held in memory" in memory.description and "streamed" in streamed.description
        assert memory_held.split == streamed_held.split == "test"
        assert np.array_equal(memory_held.images, streamed_held.images)
        assert len(memory_held.images) == min(8, len(held) - 1)
    finally:
        for data, _ in results:
            data.close()


def test_cli_streaming_run_names_an_unreadable_file_or_skips_and_counts_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vqkit.cli.main import cli

    root = _folder(tmp_path / "imgs", n=12)
    (root / "c0" / "im002.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # a training image (not held out)
    args = ["train", "--data", str(root), "--image-size", "16", "--channels", "3", "--steps", "2"]
    args += ["--batch-size", "12", "--eval-every", "0", "--eval-images", "4", "--data-memory-gb", "0", "-q"]
    failed = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "a")])
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert "im002.jpg" in failed.output and "--skip-bad" in failed.output
    skipped = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "b"), "--skip-bad"])
    assert skipped.exit_code == 0, skipped.output
    assert "left out 1 unreadable image(s)" in skipped.output and "im002.jpg" in skipped.output


def test_held_and_streamed_runs_give_the_same_batches_augmentation_and_skipped_files_included(
    tmp_path: Path,
) -> None:
    from vqkit.data.folder import is_held_out
    from vqkit.images import find_image_names

    root = _folder(tmp_path / "imgs")
    shards = pack_folder(root, tmp_path / "shards", shard_size=15).out
    train_names = [n for n in find_image_names(root) if not is_held_out(n)]
    (root / train_names[3]).write_bytes(b"not an image")  # after packing: only the folder has it
    common = dict(augment_scale=0.4, augment_flip=True, skip_bad=True, seed=5)
    for data in (root, shards):
        with pytest.warns(DataWarning) if data == root else _nothing():
            held, held_out = open_training_data(_config(data, data_memory_gb=1, **common), None, 16, CPU)
            streamed, streamed_out = open_training_data(
                _config(data, data_memory_gb=0, **common), None, 16, CPU
            )
            try:
                assert "held in memory" in held.description and "streamed" in streamed.description
                for step in (0, 1, 4, 9, 3):  # past an epoch, and out of order (a resume)
                    assert torch.equal(held.get(step), streamed.get(step)), (data, step)
                assert np.array_equal(held_out.images, streamed_out.images)
            finally:
                streamed.close()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
