"""DistributedDataParallel on CPU (gloo): every rank ends with the same weights and codebook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import vqkit
from vqkit.training import TrainConfig, run_ddp_cpu
from vqkit.training.batches import Batches


def test_ranks_read_disjoint_shards_that_cover_the_data() -> None:
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    shards = [Batches(images, 4, torch.device("cpu"), seed=3, rank=r, world=2) for r in range(2)]
    per_epoch = [torch.cat([b.indices(s) for s in range(5)])[:5] for b in shards]  # 5 images a rank an epoch
    assert set(per_epoch[0].tolist()).isdisjoint(per_epoch[1].tolist())
    assert sorted(torch.cat(per_epoch).tolist()) == list(range(10))
    # a step's batch depends only on (seed, step, rank): resuming needs no loader state
    again = Batches(images, 4, torch.device("cpu"), seed=3, rank=1, world=2)
    assert torch.equal(again.indices(7), shards[1].indices(7))


def test_two_processes_end_with_identical_weights_and_codebook(tmp_path: Path) -> None:
    # k-means init on the first batch and dead-code restarts from step 2 on: both must agree across ranks
    model = {"quantizer_options": {"init": "kmeans", "restart_after": 2}}
    config = TrainConfig(
        model=model,
        steps=6,
        batch_size=16,
        lr=1e-3,
        log_every=3,
        eval_every=0,
        eval_images=16,
        checkpoint_every=0,
        out=str(tmp_path / "run"),
    )
    states = run_ddp_cpu(config, world_size=2)
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    # rank 0 saved the same model, and it trained (the codebook moved away from its initial value)
    saved = vqkit.load(tmp_path / "run" / "model.safetensors").state_dict()
    for key, value in saved.items():
        assert torch.equal(value, states[0][key]), key
    initial = vqkit.build_model(channels=1, image_size=32, seed=0).state_dict()
    assert not torch.equal(initial["quantizer.embedding.weight"], states[0]["quantizer.embedding.weight"])
    assert int(states[0]["quantizer.upkeep.restarts"]) > 0  # restarts happened, and identically on both ranks
