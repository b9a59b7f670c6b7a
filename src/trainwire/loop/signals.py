"""Stopping a run from outside: a ``StopToken``, set from any thread, and SIGTERM/SIGINT routed to it.

The loop reads the token at each optimizer-step boundary (one attribute read, no lock): when
it is set, the run saves ``last.pt`` at that step and raises ``TrainingInterrupted``. Signals
and the token are one mechanism: while ``fit`` runs in the main thread, SIGTERM and SIGINT
only set the token. The handlers are installed for the duration of ``fit`` and the previous
ones put back afterwards, so an embedding service keeps its own; off the main thread (where
Python cannot install handlers) nothing is installed and only the token stops the run.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopToken:
    """A request to stop a run at its next optimizer step; ``stop()`` may be called from any thread.

    ``signum`` is the signal that set it (None when ``stop()`` was called directly). A token
    stopped before ``fit`` starts stops the run before its first step. One token may be passed
    to several runs (a service's shutdown switch); it is never reset.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.asked = False  # ``stopped`` as a plain field: what the loop reads after every optimizer step
        self.signum: int | None = None
        self.received: list[int] = []  # every signal noted, the impatient operator's second one included

    def stop(self, signum: int | None = None) -> None:
        """Asks the run to stop at its next optimizer step (safe from any thread, or a signal handler)."""
        if signum is not None:
            self.received.append(signum)
            if not self._event.is_set():
                self.signum = signum
        self.asked = True
        self._event.set()

    @property
    def stopped(self) -> bool:
        """Whether a stop was asked for."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until a stop is asked for, or ``timeout`` seconds pass; returns ``stopped``."""
        return self._event.wait(timeout)

    def _handle(self, signum: int, frame: object) -> None:
        # Only note it: raising here could land in the middle of a checkpoint write. A second
        # signal changes nothing; kill -9 is the way out, and the checkpoint store survives that.
        self.stop(signum)


@contextlib.contextmanager
def stop_requests(token: StopToken | None = None) -> Iterator[StopToken]:
    """Routes SIGTERM and SIGINT to ``token`` (a new one when None) while the block runs, in the main thread only."""
    token = token if token is not None else StopToken()
    if threading.current_thread() is not threading.main_thread():
        yield token
        return
    previous = {signum: signal.signal(signum, token._handle) for signum in SIGNALS}
    try:
        yield token
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
