"""Training speed: images per second of vqkit's loop against a plain loop of the classic VQ-VAE tutorial's code, on the
same device and data, side by side in one run.

    python benchmarks/train_speed.py                      # CPU, batch 128 and 1024
    python benchmarks/train_speed.py --device cuda        # adds the GPU rows: fp32, bf16, bf16 + compile
    python benchmarks/train_speed.py --architectures      # conv3 against resnet in vqkit's loop instead

``--architectures`` times vqkit's loop (``vqkit train``'s default model and recipe, fp32; bf16 on CUDA) on the
same data for each built-in architecture at equal bits per image: conv3 (a 4x4 grid), resnet at downsample 8
(4x4) with its default widths, and resnet at downsample 4 (8x8), images/s and the ratio to conv3.

The data are mnist5k's 4,500 training digits as 32x32 RGB (the tutorial's 3-channel model). The tutorial loop is what
the tutorial's code gives when written out the usual way: its VQVAE module (transcribed below), a DataLoader
over a TensorDataset with shuffling, ``.to(device)`` per batch, Adam, and ``loss.item()`` every step for the
running loss. vqkit's loop is ``vqkit.training.train`` on the same architecture (conv3 + vq with the tutorial's
uniform init and a 1x1 ConvTranspose decoder head). Both time steady-state steps after a warm-up, data loading
included; vqkit's window is read from its metrics.jsonl (between two read-backs, before the final evaluation).
Each configuration runs ``--repeats`` times, interleaved, and the best is kept (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import vqkit
from vqkit.data import load_images
from vqkit.registry import quantizers
from vqkit.training import TrainConfig, train


# --- the classic VQ-VAE tutorial's model, transcribed ----------------------------------------------------
class SeedVQEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, commitment_cost: float = 0.25) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.num_embeddings = num_embeddings
        self.commitment_cost = commitment_cost
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.embedding.weight.data.uniform_(-1 / self.num_embeddings, 1 / self.num_embeddings)

    def forward(self, z: torch.Tensor):
        b, c, h, w = z.shape
        z_flattened = z.permute(0, 2, 3, 1).reshape(b * h * w, self.embedding_dim)
        distances = (
            torch.sum(z_flattened**2, dim=-1, keepdim=True)
            + torch.sum(self.embedding.weight.t() ** 2, dim=0, keepdim=True)
            - 2 * torch.matmul(z_flattened, self.embedding.weight.t())
        )
        encoding_indices = torch.argmin(distances, dim=-1)
        z_q = self.embedding(encoding_indices).reshape(b, h, w, self.embedding_dim).permute(0, 3, 1, 2)
        loss = F.mse_loss(z_q, z.detach()) + self.commitment_cost * F.mse_loss(z_q.detach(), z)
        z_q = z + (z_q - z).detach()
        return z_q, loss, encoding_indices


class SeedVQVAE(nn.Module):
    def __init__(self, channels: int = 3, latent_dim: int = 64, num_embeddings: int = 512) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(128, latent_dim, 1),
        )  # fmt: skip
        self.vq_layer = SeedVQEmbedding(num_embeddings, latent_dim)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 128, 1), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor):
        z_q, vq_loss, _ = self.vq_layer(self.encoder(x))
        return self.decoder(z_q), vq_loss


def seed_loop(images: torch.Tensor, batch: int, warmup: int, steps: int, device: torch.device) -> float:
    """The plain loop; returns images/s over ``steps`` steps after ``warmup``."""
    torch.manual_seed(0)
    model = SeedVQVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images), batch_size=batch, shuffle=True, drop_last=True
    )
    done, running, start = 0, 0.0, 0.0
    while done < warmup + steps:
        for (x,) in loader:
            if done == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            x = x.to(device)
            recon, vq_loss = model(x)
            loss = F.mse_loss(recon, x) + vq_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()
            done += 1
            if done == warmup + steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def vqkit_loop(
    batch: int,
    warmup: int,
    steps: int,
    device: str,
    precision: str,
    compile: bool,
    channels_last: bool | None = None,
    model: dict | None = None,
) -> float:
    """images/s of ``vqkit.training.train`` over ``steps`` steps after ``warmup``; ``model`` None is the
    classic VQ-VAE tutorial's architecture (what the tutorial loop runs), else ``build_model`` arguments."""
    vqkit.load_plugins()
    if model is None:
        seed_options = {"init": "uniform"}
        if any(o.name == "restart_after" for o in quantizers.entry("vq").options):
            seed_options["restart_after"] = 0
        model = {"quantizer_options": seed_options, "decoder_options": {"head": "transpose"}}
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model=model,
            channels=3,
            lr=1e-3,
            warmup_steps=0,
            steps=warmup + steps,
            batch_size=batch,
            log_every=warmup,
            eval_every=0,
            eval_images=8,
            checkpoint_every=0,
            device=device,
            precision=precision,
            compile=compile,
            channels_last=channels_last,
            out=out,
            progress=False,
        )
        train(config)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    timed = {r["step"]: r["elapsed_s"] for r in rows if "elapsed_s" in r}
    return steps * batch / (timed[warmup + steps] - timed[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="128,1024")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps [default: 5 CPU, 25 GPU]")
    parser.add_argument("--steps", type=int, default=None, help="timed steps [default: 40 CPU, 200 GPU]")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time --compile (slow to start on CPU)")
    parser.add_argument("--architectures", action="store_true", help="conv3 against resnet (see above)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = args.steps or (200 if device.type == "cuda" else 40)
    warmup = args.warmup or (25 if device.type == "cuda" else 5)
    if args.architectures:
        return architectures(args, device, steps, warmup)
    images = torch.from_numpy(load_images("mnist5k", channels=3)).float().div(127.5).sub(1.0)

    # (label, precision, compile, channels_last: None = vqkit's choice for the device)
    variants = [("vqkit fp32", "fp32", False, None)]
    if device.type == "cuda":
        variants += [("vqkit bf16", "bf16", False, None), ("vqkit bf16 + compile", "bf16", True, None)]
    else:
        variants += [("vqkit fp32 contiguous", "fp32", False, False)]  # without channels-last
        if args.compile:
            variants += [("vqkit fp32 + compile", "fp32", True, None)]
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        n = max(1, min(steps, 40 * 128 // batch)) if device.type == "cpu" else steps
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            best["seed"] = max(best.get("seed", 0.0), seed_loop(images, batch, warmup, n, device))
            for label, precision, comp, cl in variants:
                speed = vqkit_loop(batch, warmup, n, args.device, precision, comp, cl)
                best[label] = max(best.get(label, 0.0), speed)
        for label, speed in best.items():
            rows.append((batch, label, speed, speed / best["seed"]))
            print(
                f"batch {batch:5d}  {label:<22} {speed:9.0f} images/s  {speed / best['seed']:.2f}x",
                flush=True,
            )

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(
        f"\n{name}, torch {torch.__version__}, {steps} timed steps (CPU: up to 40 x 128 images), best of {args.repeats}\n"
    )
    print("| device | batch | loop | images/s | vs tutorial loop |")
    print("|---|---|---|---|---|")
    for batch, label, speed, ratio in rows:
        print(f"| {device.type} | {batch} | {label} | {speed:,.0f} | {ratio:.2f}x |")


ARCHITECTURES = [
    ("conv3 (4x4 grid)", {"encoder": "conv3"}),
    ("resnet downsample 8 (4x4)", {"encoder": "resnet", "encoder_options": {"downsample": 8}}),
    ("resnet downsample 4 (8x8)", {"encoder": "resnet", "encoder_options": {"downsample": 4}}),
]


def architectures(args: argparse.Namespace, device: torch.device, steps: int, warmup: int) -> None:
    precision = "bf16" if device.type == "cuda" else "fp32"
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        n = max(1, min(steps, 40 * 128 // batch)) if device.type == "cpu" else steps
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for label, model in ARCHITECTURES:
                model = {**model, "decoder_options": dict(model.get("encoder_options", {}))}
                speed = vqkit_loop(batch, warmup, n, args.device, precision, False, model=model)
                best[label] = max(best.get(label, 0.0), speed)
        first = next(iter(best.values()))
        for label, speed in best.items():
            rows.append((batch, label, speed, speed / first))
            print(f"batch {batch:5d}  {label:<28} {speed:9.0f} images/s  {speed / first:.2f}x", flush=True)
    print(f"\n{_device_name(device)}, torch {torch.__version__}, {precision}, best of {args.repeats}\n")
    print("| device | batch | architecture | images/s | vs conv3 |")
    print("|---|---|---|---|---|")
    for batch, label, speed, ratio in rows:
        print(f"| {device.type} | {batch} | {label} | {speed:,.0f} | {ratio:.2f}x |")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    sys.exit(main())
