"""The step loop every trainer in vqkit shares (the VQ-VAE trainer and the prior trainer).

A trainer says what one optimizer step does and what to do at a read-back, an evaluation and a checkpoint; the
engine owns the rest: the cadence, the only host syncs (metrics accumulate in a device tensor and are read back
every ``log_every`` steps, which is also where a NaN is caught), the progress bar, throughput, the stop signals
(Ctrl-C and SIGTERM checkpoint and stop at the end of the step) and, under DDP, the ranks' agreement on when to
stop.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from vqkit import distributed as D

Say = Callable[[str], None]


class Trainer(Protocol):
    """What :func:`run_steps` drives. ``stat_names[0]`` is the loss that is checked for NaN."""

    stat_names: tuple[str, ...]

    def step(self, step: int) -> torch.Tensor:
        """One optimizer step at 0-based ``step``; returns ``[len(stat_names)]`` float stats on the device."""
        ...

    def log(self, done: int, means: dict[str, float], window: Window) -> None:
        """A read-back after ``done`` steps: the stats averaged since the last one (all ranks)."""
        ...

    def evaluate(self, done: int, say: Say) -> None: ...

    def checkpoint(self, done: int) -> None: ...

    def diverged(self, what: str, last_good: int | None) -> Exception:
        """The error to raise when the loss or a weight became NaN/inf."""
        ...

    def weights_finite(self) -> bool: ...


@dataclass
class Cadence:
    steps: int
    log_every: int
    eval_every: int = 0  # 0: evaluate at the end only
    checkpoint_every: int = 0  # 0: checkpoint at the end only

    def wants(self, done: int) -> tuple[bool, bool, bool]:
        """(read back, evaluate, checkpoint) after ``done`` steps."""
        last = done == self.steps
        ev = last or bool(self.eval_every and done % self.eval_every == 0)
        ck = last or bool(self.checkpoint_every and done % self.checkpoint_every == 0)
        return (ev or ck or done % self.log_every == 0), ev, ck


@dataclass
class Window:
    """Throughput since the last read-back."""

    seconds: float
    items: int
    elapsed: float  # since the loop started

    @property
    def per_second(self) -> float:
        return self.items / max(self.seconds, 1e-9)


@dataclass
class LoopEnd:
    step: int  # steps done in all (the last step trained)
    interrupted: bool
    signal_name: str | None  # "SIGINT" or "SIGTERM" when a signal stopped the run
    seconds: float
    last_checkpoint: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Stop:
    """Set by SIGINT/SIGTERM; the loop checkpoints and stops at the end of the step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_signals() -> Iterator[_Stop]:
    """The first Ctrl-C or SIGTERM (what SLURM, Kubernetes and ``timeout`` send) asks the loop to checkpoint and
    stop at the end of the step; a second one interrupts at once. Only the main thread can take signals."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in wanted}

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.signum = signum

    for s in wanted:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Progress:
    """A tqdm bar on the main process (or nothing), and a ``say`` that prints without breaking it."""

    def __init__(
        self, enabled: bool, total: int, initial: int, desc: str, fallback: Say | None = None
    ) -> None:
        self.bar = None
        self.fallback = fallback
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, **values: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix(refresh=False, **values)

    def say(self, line: str) -> None:
        """Print a line above the bar (on the bar's stream), or hand it to ``fallback`` when there is none."""
        if self.bar is not None:
            self.bar.write(line, file=self.bar.fp)
        elif self.fallback is not None:
            self.fallback(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Accumulator:
    """Sums the per-step stats on the device; :meth:`read` is the only host sync (and DDP reduction)."""

    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.names = names
        self.sums = torch.zeros(len(names) + 1, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._one = torch.ones(1, device=device)

    def add(self, stats: torch.Tensor, step: int) -> None:
        self.sums += torch.cat([stats.float(), self._one])
        self.first_bad.masked_fill_((self.first_bad < 0) & ~torch.isfinite(stats[0]), step + 1)

    def read(self) -> tuple[dict[str, float], int]:
        """The means since the last read (over all ranks) and the first step whose loss was not finite
        (-1: none; a non-finite mean without a recorded step reads as 0)."""
        D.all_reduce_sum_(self.sums)
        D.all_reduce_max_(self.first_bad)
        values = self.sums.tolist()
        bad = int(self.first_bad)
        self.sums.zero_()
        if bad < 0 and not all(math.isfinite(v) for v in values):
            bad = 0
        n = max(values[-1], 1.0)
        return dict(zip(self.names, (v / n for v in values[:-1]))), bad


def _agree(flag: bool, device: torch.device) -> bool:
    """Under DDP every rank must stop at the same step: true if any rank asks."""
    if D.world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    D.all_reduce_max_(t)
    return bool(t.item())


def run_steps(
    trainer: Trainer,
    *,
    start: int,
    cadence: Cadence,
    device: torch.device,
    items_per_step: int,
    progress: Progress,
    callback: Callable[[int], None] | None = None,
) -> LoopEnd:
    """Train from step ``start`` to ``cadence.steps``; stop early (after a checkpoint) on a stop signal."""
    acc = Accumulator(trainer.stat_names, device)
    t0 = time.perf_counter()
    t_window, items = t0, 0
    last_good: int | None = start if start else None
    done, stop_name = start, None
    with stop_signals() as stop:
        for step in range(start, cadence.steps):
            acc.add(trainer.step(step), step)
            done, items = step + 1, items + items_per_step
            progress.update()
            if callback is not None:
                callback(done)
            read, want_eval, want_ckpt = cadence.wants(done)
            # Without DDP a signal stops at once; with DDP the ranks agree at a read-back.
            if not (read or (stop.requested and D.world_size() == 1)):
                continue
            stop_now = _agree(stop.requested, device)
            means, bad = acc.read()
            if bad >= 0:
                where = f"at step {bad}" if bad > 0 else f"before step {done}"
                raise trainer.diverged(f"the loss became NaN or infinite {where}", last_good)
            now = time.perf_counter()
            trainer.log(done, means, Window(now - t_window, items, now - t0))
            t_window, items = now, 0
            if want_eval:
                trainer.evaluate(done, progress.say)
            if want_ckpt or stop_now:
                if not trainer.weights_finite():
                    raise trainer.diverged(f"a weight became NaN or infinite by step {done}", last_good)
                trainer.checkpoint(done)
                last_good = done
            if stop_now:
                if stop.signum is not None:
                    stop_name = signal.Signals(stop.signum).name
                break
    D.barrier()
    interrupted = done < cadence.steps
    return LoopEnd(done, interrupted, stop_name, time.perf_counter() - t0, last_good)
