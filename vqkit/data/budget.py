"""Whether a dataset is held in memory or streamed: its decoded size against a memory budget."""

from __future__ import annotations

import os

from vqkit.data.common import DataError

GIB = 2**30
# Without a budget from the user, decoded data may take this share of the memory available at the start.
DEFAULT_SHARE = 0.25


def available_memory() -> int | None:
    """Bytes of memory available to new allocations now (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget(data_memory_gb: float | None) -> tuple[int, str]:
    """The budget in bytes and how it was chosen (for the run's header)."""
    if data_memory_gb is not None:
        if not data_memory_gb >= 0:  # also refuses NaN
            raise DataError(f"data_memory_gb must be a non-negative number of GiB, got {data_memory_gb}")
        return int(data_memory_gb * GIB), f"the data_memory_gb budget of {data_memory_gb:g} GiB"
    available = available_memory()
    if available is None:
        return 4 * GIB, "the budget of 4 GiB (data_memory_gb sets it)"
    budget = int(available * DEFAULT_SHARE)
    return budget, (
        f"the budget of {budget / GIB:.1f} GiB (a quarter of the available memory; data_memory_gb sets it)"
    )


def describe_bytes(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.0f} MiB"


def default_workers(local_world: int = 1) -> int:
    """Decoding workers per training process: the machine's cores shared by the processes on it, at most 8
    each (decoding a batch of small images rarely needs more), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // max(1, local_world)))
