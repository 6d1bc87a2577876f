"""Quantizer, architecture and objective quality, side by side.

``--suite quantizers`` (default): every built-in quantizer trained the same way. ``--suite architectures``:
conv3 against resnet at equal bits per image (downsample 8: a 4x4 grid of 512 codes; downsample 4: 8x8), and
resnet under other objectives, on mnist5k and on photo32 (RGB photo patches, benchmarks/data/PHOTO32.md), all
through ``vqkit.training.train`` (vqkit train's recipe), described under "The architecture suite" below.

Same encoder/decoder (conv3), data (built-in mnist5k, 1 channel, 32x32), budget (steps, batch, Adam lr) and
seed for every row; held-out metrics (the 500 test images) through the inference path (encode -> decode)
by ``vqkit.evaluate``. The first row is the original configuration (vq, uniform init, no restarts).

Two recipes, one per run of the script, so only the quantizer differs between rows:

- ``--recipe plain`` (default): a plain Adam loop at a constant lr over MSE + the quantizer loss
  (reconstruction MSE + the quantizer's loss), a constant learning rate from step 0 (2000 steps, lr 1e-3).
- ``--recipe vqkit``: ``vqkit.training.train``, what ``vqkit train`` runs: its default steps, lr, warm-up and
  cosine schedule (``vqkit.training.TrainConfig``) unless ``--steps``/``--lr`` are given. The warm-up by itself
  decides whether the decoder survives the first steps, so this is the table the default model is chosen on.

Every run is shown, collapsed or not. The plain recipe adds a ``no-quantizer`` row: the same encoder straight
into the decoder, which tells a quantizer's collapse from the autoencoder's own.

    python benchmarks/quality.py                      # the full table (2000 steps, batch 128, lr 1e-3)
    python benchmarks/quality.py --recipe vqkit       # the same rows under vqkit train's recipe
    python benchmarks/quality.py --steps 300 --only vq-original,ema --write /tmp/q.md
    python benchmarks/quality.py --suite architectures --steps 2000 --only photo32-conv3-ds8,photo32-resnet-ds8

The architecture suite: same data, budget (steps, batch 128, vqkit train's lr, warm-up and cosine schedule),
quantizer (vq with k-means init and restarts, 512 codes, latent dim 64) and seed for every row. mnist5k rows
are evaluated on its 500 held-out digits; photo32 rows train on a folder of the training photos' patches and
are evaluated on the folder's own held-out split ("held-out patches": about one in ten, never trained on) and
on the patches of two photos never trained on ("unseen photos").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import photo32
import quality_matrix
import torch

import vqkit
from vqkit.data import load_images, load_mnist5k
from vqkit.evaluate import evaluate
from vqkit.training import TrainConfig
from vqkit.training.config import DEFAULT_LR

NO_QUANTIZER = "none"

# (row label, quantizer, options). Codebook size 512 where the quantizer takes one; fsq 8,8,8 = 512 codes.
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("vq-original", "vq", {"init": "uniform", "restart_after": 0}),
    ("lfq", "lfq", {}),
    ("vq-kmeans-restart", "vq", {"init": "kmeans", "restart_after": 10}),
    ("ema", "ema", {}),
    ("vq-rotation", "vq", {"init": "kmeans", "restart_after": 10, "estimator": "rotation"}),
    ("cosine", "cosine", {}),
    ("simvq", "simvq", {}),
    ("fsq-888", "fsq", {"levels": [8, 8, 8]}),
    ("rvq-4", "rvq", {}),
    ("gvq-2", "gvq", {}),
    ("gumbel", "gumbel", {}),
    ("vq-kmeans", "vq", {"init": "kmeans", "restart_after": 0}),
    ("vq-normal", "vq", {"init": "normal", "restart_after": 0}),  # vq's own defaults, spelled out
    ("ema-norestart", "ema", {"restart_after": 0}),
    # No quantizer at all: the conv3 encoder straight into the decoder (plain recipe only). It tells a
    # quantizer's collapse from the autoencoder's own.
    ("no-quantizer", NO_QUANTIZER, {}),
]


def _float_images(split: str) -> torch.Tensor:
    images, _ = load_mnist5k(split)
    return torch.from_numpy(images).float().div(127.5).sub(1.0)


def train_plain(
    quantizer: str,
    options: dict[str, Any],
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    train: torch.Tensor,
) -> tuple[vqkit.VQVAE, float]:
    """The issue's protocol: Adam at a constant lr over MSE + the quantizer loss. -> (model, train seconds)"""
    bypass = quantizer == NO_QUANTIZER
    model = vqkit.build_model(
        "conv3",
        "vq" if bypass else quantizer,
        channels=1,
        image_size=32,
        quantizer_options=options,
        seed=seed,
    )
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the quantizer's own draws (k-means seeds, restarts, gumbel noise)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        x = train[torch.randint(0, len(train), (batch,), generator=gen)]
        loss = autoencode_mse(model, x) if bypass else _vqvae_loss(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, time.perf_counter() - start


def _vqvae_loss(model: vqkit.VQVAE, x: torch.Tensor) -> torch.Tensor:
    """MSE of the reconstruction plus the quantizer's own loss (what ``vqkit train --loss mse`` minimises)."""
    out = model(x)
    return torch.nn.functional.mse_loss(out.reconstruction, x) + out.quantized.loss


def autoencode_mse(model: vqkit.VQVAE, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model.decoder(model.encoder(x)), x)


@torch.no_grad()
def autoencoder_metrics(model: vqkit.VQVAE, test: torch.Tensor) -> dict[str, Any]:
    """Held-out MSE and PSNR of encoder -> decoder with no quantizer (code columns empty)."""
    model.eval()
    mse = sum(float(autoencode_mse(model, x)) * len(x) for x in test.split(250)) / len(test)
    return {"images": len(test), "mse": mse, "psnr": 10 * math.log10(4.0 / mse), "codebook_size": None}


def train_vqkit(
    quantizer: str, options: dict[str, Any], *, steps: int, batch: int, lr: float, seed: int
) -> tuple[vqkit.VQVAE, float]:
    """``vqkit.training.train``, what ``vqkit train`` runs (warm-up + cosine schedule). -> (model, seconds)"""
    model_args = {"encoder": "conv3", "quantizer": quantizer, "quantizer_options": options}
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model=model_args,
            data="mnist5k",
            out=out,
            steps=steps,
            batch_size=batch,
            lr=lr,
            seed=seed,
            device="cpu",
            eval_every=0,
            checkpoint_every=0,
            progress=False,
        )
        result = vqkit.training.train(config)
        return vqkit.load(result.model_path), result.seconds


def table(rows: list[dict[str, Any]]) -> str:
    seed_mse = next((r["mse"] for r in rows if r["label"] == "vq-original"), None)
    out = [
        "| run | quantizer | options | held-out MSE | x seed | PSNR dB | codes used / size | usage | perplexity "
        "| bits/image | train s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['mse'] / seed_mse:.2f}" if seed_mse else "-"
        if r.get("codebook_size") is None:  # no quantizer: no codes
            codes = "- | - | - | -"
        else:
            used = r["codes_used"]
            used_s = f"{used:.0f}" if float(used).is_integer() else f"{used:.1f}"
            codes = (
                f"{used_s} / {r['codebook_size']} | {100 * r['usage']:.0f}% | {r['perplexity']:.1f} "
                f"| {r['bits_per_image']:g}"
            )
        out.append(
            f"| {r['label']} | {r['quantizer']} | {r['options']} | {r['mse']:.4f} | {ratio} | {r['psnr']:.2f} "
            f"| {codes} | {r['train_s']:.0f} |"
        )
    return "\n".join(out)


# --- the architecture suite ---------------------------------------------------------------------------------
CONV3_DS4 = ({"widths": [64, 128]}, {"widths": [128, 64]})


def _both(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same options for the encoder and its mirror decoder."""
    return options, dict(options)


RESNET_DS4 = ({"downsample": 4}, {"downsample": 4})
RESNET_DS8 = ({"downsample": 8}, {"downsample": 8})
# (label, data, encoder, (encoder options, decoder options), loss)
ARCH_CONFIGS: list[tuple[str, str, str, tuple[dict[str, Any], dict[str, Any]], str]] = [
    (f"{data}-{label}", data, enc, opts, loss)
    for data in ("photo32", "mnist5k")
    for label, enc, opts, loss in [
        ("conv3-ds8", "conv3", ({}, {}), "mse"),
        ("resnet-ds8", "resnet", RESNET_DS8, "mse"),
        ("conv3-ds4", "conv3", CONV3_DS4, "mse"),
        ("resnet-ds4", "resnet", RESNET_DS4, "mse"),
        ("resnet-ds8-l1", "resnet", RESNET_DS8, "l1"),
        ("resnet-ds8-l1+ssim", "resnet", RESNET_DS8, "l1+ssim:0.2"),
        ("resnet-ds8-l1+patchgan", "resnet", RESNET_DS8, "l1+patchgan:0.1"),
        # resnet's defaults against the variants they were chosen over
        ("resnet-ds8-blocks2", "resnet", _both({"downsample": 8, "blocks": 2}), "mse"),
        ("resnet-ds8-decoder-blocks2", "resnet", (RESNET_DS8[0], {"downsample": 8, "blocks": 2}), "mse"),
        ("resnet-ds8-no-attention", "resnet", _both({"downsample": 8, "attention": False}), "mse"),
    ]
]


def train_architecture(
    data: str, encoder: str, opts: tuple[dict[str, Any], dict[str, Any]], loss: str, budget: dict[str, Any]
) -> tuple[vqkit.VQVAE, float, str]:
    """One ``vqkit.training.train`` run -> (model, train seconds, the data folder or name it trained on)."""
    model_args = {
        "encoder": encoder,
        "encoder_options": opts[0],
        "decoder_options": opts[1],
    }
    extra: dict[str, Any] = {} if loss == "mse" else {"loss": loss}  # a loop without objectives runs mse
    with tempfile.TemporaryDirectory() as tmp:
        source = str(photo32.write_folder(Path(tmp) / "photo32")) if data == "photo32" else data
        config = TrainConfig(
            model=model_args,
            data=source,
            out=str(Path(tmp) / "run"),
            eval_every=0,
            checkpoint_every=0,
            device="cpu",
            progress=False,
            **budget,
            **extra,
        )
        result = vqkit.training.train(config)
        model = vqkit.load(result.model_path)
        held = load_images(source, split="test") if data == "photo32" else None
    return model, result.seconds, held


def run_architectures(args: argparse.Namespace, wanted: set[str]) -> list[dict[str, Any]]:
    budget = {"steps": args.steps, "batch_size": args.batch, "lr": args.lr, "seed": args.seed}
    rows = []
    for label, data, encoder, opts, loss in ARCH_CONFIGS:
        if wanted and label not in wanted:
            continue
        model, seconds, held = train_architecture(data, encoder, opts, loss, budget)
        model.eval()
        if data == "photo32":
            held_out, unseen = evaluate(model, held), evaluate(model, photo32.load("unseen"))
        else:
            held_out, unseen = evaluate(model, load_mnist5k("test")[0]), None
        row = {
            "label": label,
            "data": data,
            "encoder": encoder,
            "options": opts[0],
            "loss": loss,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_s": seconds,
            "images_per_s": args.steps * args.batch / seconds,
            "held_out": held_out,
            "unseen": unseen,
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def arch_table(rows: list[dict[str, Any]]) -> str:
    def cells(m: dict[str, Any] | None) -> str:
        if m is None:
            return "- | - | -"
        return f"{m['psnr']:.2f} | {m['ssim']:.3f} | {m['codes_used']} ({100 * m['usage']:.0f}%)"

    out = [
        "| run | encoder/decoder | loss | grid | params | held-out PSNR dB | SSIM | codes used "
        "| unseen photos PSNR dB | SSIM | codes used | train images/s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ds = r["options"].get(
            "downsample", 8 if r["encoder"] == "resnet" else 2 ** len(r["options"].get("widths", [0] * 3))
        )
        grid = f"{32 // ds}x{32 // ds}"
        out.append(
            f"| {r['label']} | {r['encoder']} | {r['loss']} | {grid} | {r['parameters']:,} "
            f"| {cells(r['held_out'])} | {cells(r['unseen'])} | {r['images_per_s']:.0f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=("quantizers", "architectures", "matrix"), default="quantizers")
    ap.add_argument("--recipe", choices=("plain", "vqkit"), default="plain")
    ap.add_argument("--steps", type=int, default=None, help="default: 2000 (plain), vqkit train's (vqkit)")
    ap.add_argument("--batch", type=int, default=None, help="default: 128 (matrix: 64)")
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-3 (plain), vqkit train's (vqkit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--only", default="", help="comma-separated run labels (default: all)")
    ap.add_argument("--write", default="", help="also write the markdown table (and the setup) to this file")
    ap.add_argument("--json", default="", help="also write the raw rows as JSON lines to this file")
    ap.add_argument("--from-json", default="", help="only re-render the table of rows saved by --json")
    quality_matrix.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.suite == "matrix":
        return quality_matrix.matrix_main(args)
    args.batch = args.batch or 128
    if args.suite == "architectures":
        return architectures_main(args)
    vq_recipe = args.recipe == "vqkit"
    if args.steps is None:
        args.steps = TrainConfig().steps if vq_recipe else 2000
    if args.lr is None:
        args.lr = DEFAULT_LR if vq_recipe else 1e-3  # conv3 recommends no lr of its own
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = {s for s in args.only.split(",") if s}
    unknown = wanted - {c[0] for c in CONFIGS}
    if unknown:
        ap.error(f"unknown run(s) {', '.join(sorted(unknown))}; known: {', '.join(c[0] for c in CONFIGS)}")
    rows = []
    if args.from_json:
        with open(args.from_json) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    train, test = (None, None) if args.from_json else (_float_images("train"), _float_images("test"))
    for label, name, opts in CONFIGS:
        if args.from_json or (wanted and label not in wanted) or (vq_recipe and name == NO_QUANTIZER):
            continue
        budget = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed}
        if vq_recipe:
            model, seconds = train_vqkit(name, opts, **budget)
        else:
            model, seconds = train_plain(name, opts, train=train, **budget)
        shown = ",".join(f"{k}={v}" for k, v in opts.items()) or "defaults"
        row = {
            "label": label,
            "quantizer": name,
            "options": shown,
            "train_s": seconds,
            **(autoencoder_metrics(model, test) if name == NO_QUANTIZER else evaluate(model, test)),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    setup = (
        f"conv3 encoder/decoder, mnist5k (4500 train / 500 held-out, 1x32x32), {args.steps} steps, "
        f"batch {args.batch}, Adam lr {args.lr:g}"
        + (
            f" after {TrainConfig().warmup_steps} warm-up steps, cosine (vqkit train's recipe)"
            if vq_recipe
            else ""
        )
        + f", seed {args.seed}, device cpu, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    text = f"{setup}\n\n{table(rows)}\n"
    print(text)
    if args.write:
        with open(args.write, "w") as f:
            f.write(text)
    return 0


def architectures_main(args: argparse.Namespace) -> int:
    args.steps = args.steps or 2000
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = {s for s in args.only.split(",") if s}
    unknown = wanted - {c[0] for c in ARCH_CONFIGS}
    if unknown:
        known = ", ".join(c[0] for c in ARCH_CONFIGS)
        raise SystemExit(f"unknown run(s) {', '.join(sorted(unknown))}; known: {known}")
    if args.from_json:
        with open(args.from_json) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        rows = run_architectures(args, wanted)
    lr_text = f"Adam lr {args.lr:g}" if args.lr else "Adam at each model's recommended lr (vqkit train's)"
    setup = (
        f"vqkit.training.train: {args.steps} steps, batch {args.batch}, {lr_text} after "
        f"{min(TrainConfig().warmup_steps, args.steps // 5)} warm-up steps, cosine; vq (k-means init, "
        f"restarts), 512 codes, latent dim 64; seed {args.seed}, device cpu, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    text = f"{setup}\n\n{arch_table(rows)}\n"
    print(text)
    if args.write:
        with open(args.write, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
