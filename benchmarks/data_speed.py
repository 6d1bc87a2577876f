"""Streaming data: decoded + augmented images per second against torchvision's ImageFolder + DataLoader, and
the peak memory of a training run as the dataset grows, side by side in one run.

    python benchmarks/data_speed.py                       # 6,000 and 60,000 images, 2 workers, batch 128
    python benchmarks/data_speed.py --sizes 6000 --workers 4 --batches 100

Data: 64x64 images, half PNG and half JPEG, in ten class folders (ImageFolder needs them), generated once
under ``--root`` (default /tmp/vqkit-bench-data): smooth colour gradients, a few shapes and some noise, so
that the files are about the size real photos of that resolution compress to.

Throughput: both paths decode (vqkit's from the folder and from the same folder packed into tar shards), random-resized-crop (area 0.5-1, torchvision's aspect range) and flip every
image to 64x64 with the same number of worker processes and the same batch size, and the main process turns
each batch into float [-1, 1] as a training loop would. The time runs from the end of the warm-up batches
to the last batch; each path runs ``--repeats`` times, interleaved, and the best is kept (the machine may be
shared). torchvision's transform ends in ``PILToTensor`` (uint8), the cheaper choice for it.

Memory: ``vqkit train`` for ``--steps`` steps of the default model on 3x64x64 images at batch 128 with the same
augmentation, streamed from the folder (``--data-memory-gb 0``; ``--in-memory`` adds the in-memory path), in
a child process; a sampler reads the resident memory of the child
and every process under it every 50 ms and keeps the peak of the sum (RSS), and of the proportional set
size (PSS: shared pages split between the processes that share them, so nothing is counted twice).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

AUG_SCALE = (0.5, 1.0)


# --- the data -------------------------------------------------------------------------------------------------
def _picture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, b, c = rng.uniform(0, 1, (3, 3))
    img = np.stack([a[i] * x + b[i] * y + c[i] * x * y for i in range(3)], -1) * 200
    for _ in range(3):
        cx, cy, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(4, 16)]
        mask = (np.mgrid[0:size, 0:size][1] - cx) ** 2 + (np.mgrid[0:size, 0:size][0] - cy) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root: Path, n: int) -> Path:
    from PIL import Image

    folder = root / f"images-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(n)
    for i in range(n):
        path = folder / f"class{i % 10}" / f"{i:06d}.{'png' if i % 2 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        options = {"quality": 90} if path.suffix == ".jpg" else {}
        Image.fromarray(_picture(rng)).save(path, **options)
    done.write_text("ok")
    return folder


def pack_once(folder: Path) -> Path:
    """The folder packed into tar shards of 1,000 images beside it (once)."""
    from vqkit.data.pack import pack_folder

    out = folder.parent / f"{folder.name}-shards"
    if not (out / "vqkit-shards.json").is_file() or not any(out.glob("*.tar")):
        pack_folder(folder, out, shard_size=1000)
    return out


# --- throughput -----------------------------------------------------------------------------------------------
def _time_batches(batches, count: int, warmup: int) -> float:
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(count):
        n += len(next(it))
    return n / (time.perf_counter() - t0)


def stream_speed(folder: Path, workers: int, batch: int, count: int, warmup: int) -> float:
    from vqkit.data.augment import Augment
    from vqkit.data.sources import open_source
    from vqkit.data.stream import StreamingData

    data = StreamingData(
        open_source(folder, "all"),
        channels=3,
        image_size=64,
        batch_size=batch,
        workers=workers,
        augment=Augment(scale=AUG_SCALE, flip=True),
    )
    try:
        return _time_batches((data.get(s) for s in range(10**9)), count, warmup)
    finally:
        data.close()


def imagefolder_speed(folder: Path, workers: int, batch: int, count: int, warmup: int) -> float:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(64, scale=AUG_SCALE),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )
    ds = datasets.ImageFolder(str(folder), transform=tf)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True
    )

    def batches():
        while True:
            for x, _ in loader:
                yield x.float().div_(127.5).sub_(1.0)

    return _time_batches(batches(), count, warmup)


# --- memory ---------------------------------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _field(pid: int, path: str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_memory(cmd: list[str]) -> tuple[float, float, float, str]:
    """(peak RSS sum, peak PSS sum, seconds, output) of a command's whole process tree."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pids = _tree(proc.pid)
            peak[0] = max(peak[0], sum(_field(p, "status", "VmRSS:") for p in pids))
            peak[1] = max(peak[1], sum(_field(p, "smaps_rollup", "Pss:") for p in pids))
            stop.wait(0.05)

    t0 = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"the training run failed ({proc.returncode}): {' '.join(cmd)}\n{output}")
    return peak[0] / 2**30, peak[1] / 2**30, time.perf_counter() - t0, output


def train_command(folder: Path, steps: int, workers: int, streamed: bool, out: Path) -> list[str]:
    """``vqkit train`` on the folder: the default model on 3x64x64 images at batch 128, augmented, no
    evaluation or checkpoint before the end; streamed (a zero memory budget) or held in memory."""
    cmd = [sys.executable, "-m", "vqkit", "train", "--data", str(folder), "--image-size", "64"]
    cmd += ["--steps", str(steps), "--batch-size", "128", "--eval-every", "0", "--checkpoint-every", "0"]
    cmd += ["--eval-images", "64", "--augment-scale", "0.5", "--augment-flip", "-o", str(out), "-q"]
    if streamed:
        return cmd + ["--data-memory-gb", "0", "--data-workers", str(workers)]
    return cmd + ["--data-memory-gb", "1000"]


def _waiting(output: str) -> str:
    """The share of time waiting for data, from vqkit train's summary line."""
    for line in output.splitlines():
        if line.startswith("trained") and "waiting for data" in line:
            return line.split("; ")[-1].split(" of the time")[0]
    return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/vqkit-bench-data")
    ap.add_argument("--sizes", default="6000,60000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=40, help="timed batches per throughput run")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200, help="training steps of the memory runs")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--in-memory", action="store_true", help="also measure the in-memory path")
    args = ap.parse_args()
    import platform

    import torch

    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    folders = {}
    for n in sizes:
        t0 = time.perf_counter()
        folders[n] = make_dataset(Path(args.root), n)
        print(
            f"# data: {n} images in {folders[n]} ({time.perf_counter() - t0:.0f} s to make or find)",
            flush=True,
        )

    if not args.skip_speed:
        folder = folders[sizes[0]]
        shards = pack_once(folder)
        best = {"vqkit streaming": 0.0, "vqkit streaming, shards": 0.0, "ImageFolder + DataLoader": 0.0}
        for _ in range(args.repeats):
            for name, source in (("vqkit streaming", folder), ("vqkit streaming, shards", shards)):
                best[name] = max(
                    best[name], stream_speed(source, args.workers, args.batch, args.batches, args.warmup)
                )
            best["ImageFolder + DataLoader"] = max(
                best["ImageFolder + DataLoader"],
                imagefolder_speed(folder, args.workers, args.batch, args.batches, args.warmup),
            )
        base = best["ImageFolder + DataLoader"]
        print(
            f"\nDecoded + augmented 64x64 images/s ({args.workers} workers, batch {args.batch}, best of {args.repeats})\n"
        )
        print("| path | images/s | vs ImageFolder |")
        print("|---|---:|---:|")
        for name, speed in best.items():
            print(f"| {name} | {speed:,.0f} | {speed / base:.2f}x |")

    print(f"\nPeak memory of `vqkit train`: {args.steps} steps, batch 128, 3x64x64, {args.workers} workers\n")
    print(
        "| images | data path | peak RSS, process tree | peak PSS, process tree | seconds | waiting for data |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    streamed_rss = []
    for n in sizes:
        for streamed in [True, False] if args.in_memory else [True]:
            with tempfile.TemporaryDirectory(prefix="vqkit-bench-run-") as tmp:
                cmd = train_command(folders[n], args.steps, args.workers, streamed, Path(tmp) / "run")
                rss, pss, secs, output = peak_memory(cmd)
            if streamed:
                streamed_rss.append(rss)
            path = "streamed" if streamed else "in memory"
            row = f"| {n:,} | {path} | {rss:.2f} GiB | {pss:.2f} GiB | {secs:.0f} | {_waiting(output)} |"
            print(row, flush=True)
    if len(streamed_rss) > 1:
        print(
            f"\nstreamed: peak RSS of the largest / the smallest dataset = {streamed_rss[-1] / streamed_rss[0]:.3f}"
        )


if __name__ == "__main__":
    main()
