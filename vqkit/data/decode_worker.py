"""A decoding worker process: ``python -m vqkit.data.decode_worker``, started by
:class:`vqkit.data.workers.DecodePool`.

It reads pickled requests from stdin (first a :class:`~vqkit.data.decode.DecodeSpec`, then ``(step, items)``
per batch, ``None`` to stop) and writes one pickled reply per request to stdout, in order:
``("ok", step, uint8 array, skipped)`` or ``("error", step, message, is_user_error)``. It imports numpy and
Pillow only, never torch, and it ends when its parent goes away (end of input).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
import warnings


def serve() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the training loop handles it (a checkpoint, then
    # a clean stop) and closes its workers; a worker that died of it first would lose the batch in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")  # Pillow's warnings (EXIF, palette transparency) would flood the terminal
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the replies

    from vqkit.data.decode import decode_batch
    from vqkit.errors import VQKitError

    try:
        spec = pickle.load(requests)
    except EOFError:
        return
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        if request is None:
            return
        step, items = request
        try:
            images, skipped = decode_batch(items, spec)
            reply = ("ok", step, images, skipped)
        except VQKitError as exc:
            reply = ("error", step, str(exc), True)
        except Exception:  # a bug, not the user's data: the parent shows the whole story
            reply = ("error", step, traceback.format_exc(), False)
        try:
            pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()
        except BrokenPipeError:
            return


if __name__ == "__main__":
    serve()
