"""A hard bound on a worker's shutdown, whatever Celery's teardown does.

With ``REMAP_SIGTERM=SIGQUIT`` SIGTERM runs Celery's soft shutdown: running jobs get
``PULSE_SOFT_SHUTDOWN_SECONDS``, then Celery cancels them and stops its pool. That last
step can outlive the promise (graceful shutdown in a bounded time): a job whose pool
process does not die at the cancel (a handler stuck in a C call, or one that outlasts
SIGTERM) holds the worker until its hard time limit, and a pool stopped while the
consumer is reconnecting to a Redis that went away can wait for ever on a result pipe
whose writer is dead (Celery's ``_flush_outqueue``). So the first SIGTERM (or SIGQUIT)
also starts a timer: ``SHUTDOWN_MARGIN_SECONDS`` after the soft shutdown, a worker still
alive SIGKILLs its pool processes and exits. Nothing is lost by it: an attempt so killed is
found by its lapsed lease and runs again as the next attempt, and a message it still held
belongs to a job that is ``queued`` and watched (``docs/execution-guarantees.md``).

Written by hand: Celery has no setting that bounds its own teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from billiard import process

#: How long past the soft shutdown a worker may take to close (requeue what it reserved,
#: leave its control queue: a few Redis round trips, each bounded by the broker's socket
#: timeouts) before it kills its pool and exits. Below the 30 s margin the deployment
#: files leave between the soft shutdown and the platform's SIGKILL (docs/deploy.md).
SHUTDOWN_MARGIN_SECONDS = 15.0
#: The exit status of a worker that had to be stopped so (Celery's EX_FAILURE).
EXIT_STATUS = 1

_armed = threading.Event()

Handler = Callable[[int, FrameType | None], Any] | int | None


def bound_shutdown(soft_shutdown_seconds: float, *, signals: tuple[signal.Signals, ...]) -> None:
    """Wrap the main process's handlers of ``signals`` so the first of them also starts the
    timer (``SHUTDOWN_MARGIN_SECONDS`` after ``soft_shutdown_seconds``). Call it in the main
    thread of the worker's main process, once Celery has installed its handlers."""
    for signum in signals:
        previous = signal.getsignal(signum)
        signal.signal(signum, _arming(previous, soft_shutdown_seconds + SHUTDOWN_MARGIN_SECONDS))


def _arming(previous: Handler, seconds: float) -> Callable[[int, FrameType | None], Any]:
    def handler(signum: int, frame: FrameType | None) -> Any:
        if not _armed.is_set():
            _armed.set()
            threading.Thread(target=_stop_after, args=(seconds,), name="pulse-shutdown-bound", daemon=True).start()
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_DFL:  # nobody else handles it: what it would have done
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        return None

    return handler


def _stop_after(seconds: float) -> None:
    time.sleep(seconds)
    # No logging here: the main thread may hold the logging lock (Celery's soft shutdown runs
    # inside a signal handler, wherever the main thread was).
    children = [child.pid for child in process.active_children() if child.pid]
    os.write(
        2,
        f"pulse worker: still stopping {seconds:.0f} s after the signal; killing its "
        f"{len(children)} pool process(es) and exiting (their attempts run again once their "
        "leases lapse)\n".encode(),
    )
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os._exit(EXIT_STATUS)
