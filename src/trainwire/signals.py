"""SIGTERM and SIGINT while ``fit`` runs: noted, then acted on by the loop at the next step boundary.

The handlers are installed only for the duration of ``fit`` and the previous ones are put
back afterwards, so an embedding service keeps its own; off the main thread (where Python
cannot install handlers) nothing is installed and signals behave as they did.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """``signum`` is the first stop signal received, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received: list[int] = []

    def _handle(self, signum: int, frame: object) -> None:
        # Only note it: raising here could land in the middle of a checkpoint write. A second
        # signal (an impatient Ctrl-C) is noted too and changes nothing; kill -9 is the way out,
        # and the checkpoint store survives that as well.
        self.received.append(signum)
        if self.signum is None:
            self.signum = signum


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Routes SIGTERM and SIGINT to a StopRequest while the block runs, then restores the previous handlers."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {signum: signal.signal(signum, request._handle) for signum in SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
