"""StopToken: a request to stop a run, made from any thread."""

from __future__ import annotations

import threading


class StopToken:
    """Set once by ``stop()``, from any thread (from an asyncio task: ``loop.call_soon_threadsafe`` is not needed).

    A run given the token (``trainwire.containers.run(cfg, stop=token)``) reads ``stopped`` at
    its step boundaries. A token cannot be reset: use a new one for a new run.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def stop(self) -> None:
        """Asks the run to stop; returns at once. Calling it again changes nothing."""
        self._event.set()

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` has been called."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until ``stop()`` is called or ``timeout`` seconds pass; returns ``stopped``."""
        return self._event.wait(timeout)

    def __repr__(self) -> str:
        return f"StopToken(stopped={self.stopped})"
