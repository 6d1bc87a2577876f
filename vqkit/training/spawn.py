"""Run a training config in several CPU processes with the gloo backend, the way ``torchrun`` would, and
return every rank's final weights and buffers. The DDP tests use it; a quantizer's author can check with it
that every replica ends with the same codebook (``run_ddp_cpu(TrainConfig(model={"quantizer": "ema"}, ...))``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from vqkit.training.config import TrainConfig


def _worker(rank: int, world: int, rendezvous: str, config_json: str, out: str, plugins: list[str]) -> None:
    import torch.distributed as dist

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)  # W processes share the machine's cores
    # A file rendezvous instead of torchrun's TCP port: no port to race for with other jobs on the machine.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        if plugins:
            from vqkit.discovery import request

            request(tuple(plugins))
        from vqkit.training.loop import train

        result = train(TrainConfig.from_json(config_json))
        state = {k: v.detach().cpu().contiguous().clone() for k, v in result.model.state_dict().items()}
        save_file(state, str(Path(out) / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def run_ddp_cpu(
    config: TrainConfig, world_size: int = 2, *, plugins: list[str] | None = None
) -> list[dict[str, torch.Tensor]]:
    """Train ``config`` in ``world_size`` gloo processes; return each rank's final ``state_dict`` (rank order).
    ``config.out`` should name a folder (rank 0 writes the run there); progress bars are turned off."""
    config = TrainConfig.from_json(config.to_json())
    config.progress = False
    config.device = "cpu"
    with tempfile.TemporaryDirectory(prefix="vqkit-ddp-") as out:
        mp.start_processes(
            _worker,
            args=(world_size, str(Path(out) / "rendezvous"), config.to_json(), out, list(plugins or [])),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        return [load_file(str(Path(out) / f"rank{r}.safetensors")) for r in range(world_size)]
