"""Run a training config in several CPU processes with the gloo backend, the way ``torchrun`` would, and
return every rank's final weights and buffers. The DDP tests use it; a quantizer's author can check with it
that every replica ends with the same codebook (``run_ddp_cpu(TrainConfig(model={"quantizer": "ema"}, ...))``).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from vqkit.training.config import TrainConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, config_json: str, out: str, plugins: list[str]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)  # W processes share the machine's cores
    if plugins:
        from vqkit.discovery import request

        request(tuple(plugins))
    from vqkit.training.loop import train

    result = train(TrainConfig.from_json(config_json))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in result.model.state_dict().items()}
    save_file(state, str(Path(out) / f"rank{rank}.safetensors"))


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
            args=(world_size, _free_port(), config.to_json(), out, list(plugins or [])),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        return [load_file(str(Path(out) / f"rank{r}.safetensors")) for r in range(world_size)]
