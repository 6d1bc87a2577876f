"""The combination matrix (``python benchmarks/quality.py --suite matrix``): every registered quantizer, with
its own defaults, behind each encoder (and its mirror decoder), under each recipe, on each data set, through
``vqkit.training.train`` exactly as ``vqkit train`` runs it. Nothing but the named part changes between rows.

Recipes (``--steps`` and ``--batch`` set the budget of every recipe except ``short``):

- ``default``: vqkit train's recipe (Adam at its lr, warm-up capped at a fifth of the run, cosine decay);
- ``short``: the same recipe at 300 steps;
- ``constant``: a constant learning rate from step 0 (no warm-up, no decay);
- ``l1``: the default recipe with ``--loss l1``;
- (on request) ``ssim`` (``--loss l1+ssim:0.2``), ``batch32`` and ``batch256``.

Each (data, recipe) also trains the original VQ-VAE (``--preset original``: conv3, uniform codebook init, no
restarts, Tanh output) with the same budget: the bar every row is held to. A row passes when its PSNR on
held-out images is at least the original's, at least a quarter of its codes are in use on held-out images,
and its reconstructions are not one image whatever the input (vqkit train's collapse warning).

Data: ``mnist5k`` (4,500 training digits, scored on its 500 held-out ones) and ``photo32`` (a folder of the
photo32 training patches, scored on the folder's held-out split and on the patches of two photos no row
trains on, ``unseen``). Rows run in ``--jobs`` processes of one torch thread each; every row is deterministic
(seeded), so the table does not depend on how many ran at once.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import photo32
import torch

import vqkit
from vqkit.data import load_images, load_mnist5k
from vqkit.evaluate import evaluate, reconstruct
from vqkit.training import TrainConfig
from vqkit.training.health import collapse_warning

ORIGINAL = "original"
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "short": {"steps": 300},
    "constant": {"schedule": "constant", "warmup_steps": 0},
    "l1": {"loss": "l1"},
    "ssim": {"loss": "l1+ssim:0.2"},
    "batch32": {"batch_size": 32},
    "batch256": {"batch_size": 256},
}
DEFAULT_RECIPES = ("default", "short", "constant", "l1")
ENCODERS = ("conv3", "resnet")
DATA = ("mnist5k", "photo32")
MIN_USAGE = 0.25


def quantizer_names() -> list[str]:
    """The built-in quantizers, in registry order (``--quantizers`` names others, plugins' included)."""
    from vqkit.registry import quantizers

    vqkit.load_plugins()
    return [e.name for e in quantizers.entries() if e.origin == "built-in"]


def _model_args(encoder: str, quantizer: str) -> dict[str, Any]:
    if quantizer == ORIGINAL:
        return {"preset": "original"}
    return {"encoder": encoder, "quantizer": quantizer}


def _held_out(data: str, folder: str | None) -> dict[str, np.ndarray]:
    if data == "photo32":
        return {"held_out": load_images(folder, split="test"), "unseen": photo32.load("unseen")}
    return {"held_out": load_mnist5k("test")[0]}


def _score(model: vqkit.VQVAE, images: np.ndarray) -> dict[str, Any]:
    result = evaluate(model, images, lpips=False)
    few = images[:256]
    _, recon = reconstruct(model, few)
    recon_u8 = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    result["collapsed"] = collapse_warning(result, few, recon_u8) is not None
    return result


def run_row(row: dict[str, Any]) -> dict[str, Any]:
    """Train and score one row (runs in a worker process with one torch thread)."""
    torch.set_num_threads(1)
    recipe = {**RECIPES[row["recipe"]]}
    budget = {"steps": row["steps"], "batch_size": row["batch"], **recipe}
    if row.get("lr") is not None:  # --lr: every row of this run at that lr
        budget["lr"] = row["lr"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(photo32.write_folder(Path(tmp) / "photo32")) if row["data"] == "photo32" else None
        config = TrainConfig(
            model=_model_args(row["encoder"], row["quantizer"]),
            data=folder or row["data"],
            out=str(Path(tmp) / "run"),
            eval_every=0,
            checkpoint_every=0,
            device="cpu",
            progress=False,
            seed=row["seed"],
            **budget,
        )
        result = vqkit.training.train(config)
        model = vqkit.load(result.model_path).eval()
        sets = _held_out(row["data"], folder)
    scores = {name: _score(model, images) for name, images in sets.items()}
    return {**row, **budget, "train_s": result.seconds, **scores}


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows asked for, the original VQ-VAE's first in each (data, recipe)."""
    wanted_q = [q for q in args.quantizers.split(",") if q] or quantizer_names()
    rows = []
    for data in [d for d in args.data.split(",") if d]:
        for recipe in [r for r in args.recipes.split(",") if r]:
            if recipe not in RECIPES:
                raise SystemExit(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
            base = {
                "data": data,
                "recipe": recipe,
                "steps": args.steps,
                "batch": args.batch,
                "seed": args.seed,
                "lr": args.lr,
            }
            rows.append({**base, "encoder": "conv3", "quantizer": ORIGINAL})
            for encoder in [e for e in args.encoders.split(",") if e]:
                rows += [{**base, "encoder": encoder, "quantizer": q} for q in wanted_q]
    return rows


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["data"], r["recipe"], r["encoder"], r["quantizer"], r.get("lr"))


def run_matrix(args: argparse.Namespace) -> list[dict[str, Any]]:
    todo = plan(args)
    done: list[dict[str, Any]] = []
    if args.json and Path(args.json).exists():  # resume: rows already measured are kept
        with open(args.json) as f:
            done = [json.loads(line) for line in f if line.strip()]
    have = {_key(r) for r in done}
    todo = [r for r in todo if _key(r) not in have]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(run_row, todo):
            done.append(row)
            print(json.dumps(_brief(row)), file=sys.stderr, flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return done


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    held = r["held_out"]
    return {**{k: r[k] for k in ("data", "recipe", "encoder", "quantizer")}, "psnr": round(held["psnr"], 2)}


def verdict(row: dict[str, Any], bar: float | None) -> str:
    """ "ok", or what fails: below the original VQ-VAE, too few codes in use, collapsed."""
    held = row["held_out"]
    problems = []
    if bar is not None and held["psnr"] < bar - 0.005:
        problems.append("below original")
    if held["usage"] < MIN_USAGE:
        problems.append(f"usage < {MIN_USAGE:.0%}")
    if held["collapsed"] or any(row[s]["collapsed"] for s in ("unseen",) if s in row):
        problems.append("collapsed")
    return ", ".join(problems) or "ok"


def _cells(m: dict[str, Any] | None) -> str:
    if m is None:
        return "- | -"
    return f"{m['psnr']:.2f} | {100 * m['usage']:.0f}%"


def _recipe(r: dict[str, Any]) -> str:
    """The recipe's name, with the lr when a run set one (``--lr``)."""
    return r["recipe"] if r.get("lr") is None else f"{r['recipe']} lr {r['lr']:g}"


def matrix_table(rows: list[dict[str, Any]]) -> str:
    bars = {(r["data"], _recipe(r)): r["held_out"]["psnr"] for r in rows if r["quantizer"] == ORIGINAL}
    out = [
        "| data | recipe | encoder | quantizer | held-out PSNR dB | codes used | unseen PSNR dB | codes used "
        "| vs original dB | verdict |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    order = {d: i for i, d in enumerate(DATA)} | {r: i for i, r in enumerate(RECIPES)}
    for r in sorted(rows, key=lambda r: (order.get(r["data"], 9), order.get(r["recipe"], 9))):
        bar = bars.get((r["data"], _recipe(r)))
        delta = "-" if bar is None else f"{r['held_out']['psnr'] - bar:+.2f}"
        name = "original VQ-VAE" if r["quantizer"] == ORIGINAL else r["quantizer"]
        judged = "(the bar)" if r["quantizer"] == ORIGINAL else verdict(r, bar)
        out.append(
            f"| {r['data']} | {_recipe(r)} | {r['encoder']} | {name} | {_cells(r['held_out'])} "
            f"| {_cells(r.get('unseen'))} | {delta} | {judged} |"
        )
    return "\n".join(out)


def summary(rows: list[dict[str, Any]]) -> str:
    bars = {(r["data"], _recipe(r)): r["held_out"]["psnr"] for r in rows if r["quantizer"] == ORIGINAL}
    judged = [r for r in rows if r["quantizer"] != ORIGINAL]
    failing = [r for r in judged if verdict(r, bars.get((r["data"], _recipe(r)))) != "ok"]
    floor = 10 * math.log10(4.0 / 0.3373)  # mnist5k's all-background image
    return f"{len(judged) - len(failing)} of {len(judged)} rows pass; all-background PSNR on mnist5k {floor:.2f} dB"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--encoders", default=",".join(ENCODERS), help="matrix: comma-separated encoders")
    ap.add_argument("--quantizers", default="", help="matrix: comma-separated quantizers (default: all)")
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help=f"matrix: of {', '.join(RECIPES)}")
    ap.add_argument("--data", default=",".join(DATA), help="matrix: mnist5k, photo32")
    ap.add_argument("--jobs", type=int, default=2, help="matrix: rows trained at once (one thread each)")
    # --lr (shared with the other suites) sets every matrix row's lr; default: vqkit train's


def matrix_main(args: argparse.Namespace) -> int:
    args.steps = args.steps or 600
    args.batch = args.batch or 64
    if args.from_json:
        with open(args.from_json) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        rows = run_matrix(args)
    setup = (
        f"vqkit.training.train, {args.steps} steps (short: 300), batch {args.batch}, vqkit train's lr and "
        f"schedule unless the recipe says otherwise; each quantizer's own defaults; seed {args.seed}; cpu, one "
        f"torch thread a row, torch {torch.__version__}"
    )
    text = f"{setup}\n\n{matrix_table(rows)}\n\n{summary(rows)}\n"
    print(text)
    if args.write:
        with open(args.write, "w") as f:
            f.write(text)
    return 0
