"""Helpers for state that is not a gradient (EMA statistics, k-means init, dead-code restarts): every rank
must end each step with the same codebook. All are no-ops outside ``torch.distributed``."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks, in place."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean_(t: torch.Tensor) -> torch.Tensor:
    """Average ``t`` over ranks, in place."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` on every rank with rank ``src``'s value, in place."""
    if is_distributed():
        dist.broadcast(t, src=src)
    return t


def all_reduce_max_(t: torch.Tensor) -> torch.Tensor:
    """Maximum of ``t`` over ranks, in place."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (or set up the same way)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes in the environment: NCCL for CUDA, gloo otherwise.
    Returns True when this call created the group (and so should destroy it at the end)."""
    if is_distributed() or not launched_by_torchrun():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return True


def local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes ``torchrun`` started on this machine (``--nproc-per-node``)."""
    import os

    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def device_for_this_process(device: torch.device) -> torch.device:
    """The device of this process: under ``torchrun`` on CUDA, the GPU of its local rank (one GPU a process;
    NCCL cannot share one). More processes on a machine than GPUs is a clear error here, not CUDA's
    "invalid device ordinal" or NCCL's "duplicate GPU" later."""
    if not launched_by_torchrun() or device.type != "cuda":
        return device
    from vqkit.errors import OptionError

    gpus, processes = torch.cuda.device_count(), local_world_size()
    if processes > gpus or local_rank() >= gpus:
        raise OptionError(
            f"torchrun started {processes} processes on this machine but only {gpus} CUDA GPU(s) are "
            f"visible (one process a GPU with nccl): use --nproc-per-node {gpus}, or --device cpu (gloo)",
            param="device",
        )
    return torch.device("cuda", local_rank())


def destroy() -> None:
    if is_distributed():
        dist.destroy_process_group()
