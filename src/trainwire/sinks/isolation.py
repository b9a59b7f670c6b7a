"""Sink isolation: an external sink that raises, hangs or cannot be imported never ends or slows training.

``IsolatedSink`` runs one sink's calls on its own daemon thread, in order, behind a queue. The
first call that raises, or that is still running ``timeout_s`` seconds after it began, marks
the sink failed: one warning names the sink, the call and the error; every later call to it
is dropped and counted. ``GuardedFanOut`` puts the run record (trusted, synchronous) in front
of any number of isolated sinks and writes ``sink/<name>/dropped`` into the record.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog

from trainwire.sinks.base import FanOut, MetricsSink, NullSink, forward_histograms

DEFAULT_TIMEOUT_S = 60.0
_STOP = object()
_POLL_S = 0.02


def sink_name(sink: MetricsSink) -> str:
    """``sink.name`` when it has one, else its class name without "Sink", lower case (``WandbSink`` -> ``wandb``)."""
    name = getattr(sink, "name", None)
    if isinstance(name, str) and name:
        return name
    return re.sub(r"sink$", "", type(sink).__name__.lower()) or "sink"


class UnavailableSink(MetricsSink):
    """Stands in for a sink that could not be built (its library is not installed); fails at ``start``."""

    def __init__(self, name: str, error: BaseException) -> None:
        self.name, self.error = name, error

    def start(self) -> None:
        raise self.error

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        raise self.error


class IsolatedSink(MetricsSink):
    """Runs ``sink``'s calls on a daemon worker thread so that a failure or a hang cannot reach the loop.

    ``log`` and ``summary`` only enqueue (a few microseconds on a logged step). ``finish`` waits
    for the queue to drain, but never for a call that has run longer than ``timeout_s``.
    After the first failure (an exception, or a call running past ``timeout_s``), later calls
    are dropped and counted in ``dropped``; ``failure`` holds ``(call, error)``.
    """

    def __init__(self, sink: MetricsSink, *, name: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 logger: Any = None) -> None:
        if not timeout_s > 0:
            from trainwire.errors import ConfigError

            raise ConfigError(f"sink_timeout_s={timeout_s!r} must be > 0")
        self.sink = sink
        self.name = name or sink_name(sink)
        self.timeout_s = float(timeout_s)
        self._logger = logger or structlog.get_logger("trainwire")
        self.dropped = 0
        self.failure: tuple[str, BaseException] | None = None
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._busy: tuple[str, float] | None = None  # (call, monotonic start) of the call in flight
        self._thread: threading.Thread | None = None
        self._warned = False

    # -- the loop's side (the caller's thread) -------------------------------------------------
    def start(self) -> None:
        self.dropped, self.failure, self._warned = 0, None, False
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, args=(self._queue,), daemon=True,
                                        name=f"trainwire-sink-{self.name}")
        self._thread.start()
        self._submit("start")

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self._submit("log", dict(metrics), step=step, epoch=epoch)

    def log_histograms(self, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
        if hasattr(self.sink, "log_histograms"):  # optional on the port: a duck-typed sink may lack it
            self._submit("log_histograms", dict(values), step=step, epoch=epoch)

    def summary(self, values: Mapping[str, Any]) -> None:
        self._submit("summary", dict(values))

    def finish(self, status: str = "finished") -> None:
        self._await(self._request_finish(status))

    def _request_finish(self, status: str) -> threading.Event | None:
        if self._thread is None:
            return None
        done = threading.Event()
        return done if self._submit("finish", status, _done=done) else None

    def _await(self, done: threading.Event | None) -> None:
        """Waits for the finish call, but not past a call that has run ``timeout_s``; then stops the worker."""
        if self._thread is None:
            return
        while done is not None and not done.wait(_POLL_S):
            if self._check_stalled():
                break
        self._queue.put(_STOP)  # a worker stuck in a call never reads it; it is a daemon, so it cannot hold the process
        self._thread = None
        self._warn_once()

    def _submit(self, call: str, *args: Any, _done: threading.Event | None = None, **kwargs: Any) -> bool:
        self._check_stalled()
        if self.failure is not None:
            self._count_drop()
            self._warn_once()
            return False
        self._queue.put((call, args, kwargs, _done))
        return True

    def _check_stalled(self) -> bool:
        busy = self._busy
        if busy is not None and self.failure is None and time.monotonic() - busy[1] > self.timeout_s:
            self._fail(busy[0], TimeoutError(f"{busy[0]} did not return within sink_timeout_s={self.timeout_s:g}"))
            self._discard_queued()
        return self.failure is not None

    def _discard_queued(self) -> None:
        # The worker is stuck: what waits behind it will never be delivered, so count it now.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._count_drop()
                if item[3] is not None:
                    item[3].set()

    def _warn_once(self) -> None:
        if self.failure is not None and not self._warned:
            self._warned = True
            call, error = self.failure
            self._logger.warning("sink_failed", sink=self.name, call=call, error=f"{type(error).__name__}: {error}",
                              consequence="training continues; later calls to this sink are dropped")

    # -- the worker thread -----------------------------------------------------------------------
    def _work(self, calls: queue.SimpleQueue) -> None:
        while True:
            item = calls.get()
            if item is _STOP:
                return
            call, args, kwargs, done = item
            try:
                if self.failure is not None:
                    self._count_drop()  # queued before the failure was known
                    continue
                self._busy = (call, time.monotonic())
                try:
                    getattr(self.sink, call)(*args, **kwargs)
                except Exception as error:  # noqa: BLE001 - isolating every sink error is the point
                    self._fail(call, error)
                finally:
                    self._busy = None
            finally:
                if done is not None:
                    done.set()

    def _fail(self, call: str, error: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = (call, error)

    def _count_drop(self) -> None:
        with self._lock:
            self.dropped += 1


def _isolate(sinks: Iterable[MetricsSink], timeout_s: float, logger: Any) -> list[IsolatedSink]:
    guarded: list[IsolatedSink] = []
    for sink in sinks:
        if isinstance(sink, FanOut):
            guarded += _isolate(sink.sinks, timeout_s, logger)
        elif isinstance(sink, IsolatedSink):
            guarded.append(sink)
        elif not isinstance(sink, NullSink):
            guarded.append(IsolatedSink(sink, timeout_s=timeout_s, logger=logger))
    names: dict[str, int] = {}
    for sink in guarded:  # two sinks of one kind: wandb, wandb-2
        names[sink.name] = names.get(sink.name, 0) + 1
        if names[sink.name] > 1:
            sink.name = f"{sink.name}-{names[sink.name]}"
    return guarded


class GuardedFanOut(MetricsSink):
    """The run record, called directly and trusted, then every other sink isolated (``IsolatedSink``).

    ``record`` may itself be a ``FanOut`` of local sinks (the progress bar). A ``FanOut`` among
    ``sinks`` is opened up so that each of its sinks is isolated on its own. At ``finish`` the
    record's summary gains ``sink/<name>/dropped`` for every isolated sink (and
    ``sink/<name>/error`` for a failed one), and when anything failed one last line of
    ``metrics.jsonl`` carries the dropped counts.
    """

    def __init__(self, record: MetricsSink, sinks: MetricsSink | Sequence[MetricsSink] = (), *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, logger: Any = None) -> None:
        self.record = record
        self.guarded = _isolate([sinks] if isinstance(sinks, MetricsSink) else sinks, timeout_s, logger)
        self._summary: dict[str, Any] | None = None
        self._at = (0, 0)

    def start(self) -> None:
        self._summary, self._at = None, (0, 0)
        self.record.start()
        for sink in self.guarded:
            sink.start()

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self.record.log(metrics, step=step, epoch=epoch)
        self._at = (step, epoch)
        for sink in self.guarded:
            sink.log(metrics, step=step, epoch=epoch)

    def log_histograms(self, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
        forward_histograms(self.record, values, step=step, epoch=epoch)
        for sink in self.guarded:
            sink.log_histograms(values, step=step, epoch=epoch)

    def summary(self, values: Mapping[str, Any]) -> None:
        # Written at finish, when the dropped counts are final; several stages add up.
        self._summary = {**(self._summary or {}), **values}
        for sink in self.guarded:
            sink.summary(values)

    def finish(self, status: str = "finished") -> None:
        # Every sink finishes at once, so hung sinks cost one timeout in all, not one each.
        waits = [sink._request_finish(status) for sink in self.guarded]
        for sink, done in zip(self.guarded, waits):
            sink._await(done)
        counts = {f"sink/{sink.name}/dropped": sink.dropped for sink in self.guarded}
        try:
            if any(sink.failure is not None for sink in self.guarded):
                step, epoch = self._at
                self.record.log(counts, step=step, epoch=epoch)
            if self._summary is not None:
                errors = {f"sink/{sink.name}/error": f"{sink.failure[0]}: {type(sink.failure[1]).__name__}: "
                          f"{sink.failure[1]}" for sink in self.guarded if sink.failure is not None}
                self.record.summary({**self._summary, **counts, **errors})
        finally:
            self.record.finish(status)

    @property
    def dropped(self) -> dict[str, int]:
        """Calls dropped so far, by sink name."""
        return {sink.name: sink.dropped for sink in self.guarded}
