"""Decoding worker processes for streamed data, and the ordered replies they send back.

Why not torch's DataLoader workers: a process that imports torch holds about 500 MB, and a forked DataLoader
worker of a training process counted about 385 MB of resident memory each (measured with two workers on
this project's CPU build), which alone breaks a 1.5 GiB budget for the process tree. These workers run
``python -m vqkit.data.decode_worker`` (numpy + Pillow, about 40 MB each), read requests on stdin and
write replies on stdout, and end by themselves when the training process goes away (end of input).
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from pathlib import Path

from vqkit.data.decode import DecodeSpec, Item
from vqkit.errors import VQKitError

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the vqkit package


class WorkerDied(VQKitError):
    """A decoding worker ended without answering (killed, out of memory, or crashed on a file)."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The worker must import this same vqkit, also when it was found through sys.path rather than installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def _read_replies(stream, replies: queue.SimpleQueue) -> None:
    try:
        while True:
            replies.put(pickle.load(stream))  # our own child's replies, not a user's file
    except Exception:  # end of output: the worker ended (the parent finds out why from its exit code)
        replies.put(None)


class DecodePool:
    """``workers`` processes decoding batches; ``submit(k, step, items)`` queues a batch on worker ``k``
    and ``reply(k)`` returns that worker's oldest unanswered batch (each worker answers in order)."""

    def __init__(self, workers: int, spec: DecodeSpec) -> None:
        self._procs: list[subprocess.Popen] = []
        self._replies: list[queue.SimpleQueue] = []
        try:
            for _ in range(workers):
                self._start(spec)
        except BaseException:
            self.close()
            raise

    def _start(self, spec: DecodeSpec) -> None:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vqkit.data.decode_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_env(),
                start_new_session=True,  # Ctrl-C goes to the training loop, which then closes the workers
            )
        except OSError as exc:
            raise VQKitError(f"cannot start a decoding worker process: {exc}") from exc
        replies: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_read_replies, args=(proc.stdout, replies), daemon=True).start()
        self._procs.append(proc)
        self._replies.append(replies)
        self._send(len(self._procs) - 1, spec)

    def __len__(self) -> int:
        return len(self._procs)

    def _send(self, k: int, message: object) -> None:
        proc = self._procs[k]
        try:
            pickle.dump(message, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(self._death(k, "while being sent a batch")) from None

    def submit(self, k: int, step: int, items: list[Item]) -> None:
        self._send(k, (step, items))

    def reply(self, k: int) -> tuple:
        reply = self._replies[k].get()
        if reply is None:
            raise WorkerDied(self._death(k, "before answering"))
        return reply

    def _death(self, k: int, when: str) -> str:
        proc = self._procs[k]
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        how = f"exit code {code}" if code is None or code >= 0 else f"signal {-code}"
        return f"a decoding worker process ended unexpectedly ({how}) {when}"

    def close(self) -> None:
        for proc in self._procs:
            try:
                proc.stdin.close()  # end of input: the worker returns
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:  # busy with a big batch, or stuck: it was ours to end
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._procs.clear()
        self._replies.clear()
