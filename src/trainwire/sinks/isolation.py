"""Sink isolation: an external sink that raises, hangs, lags or cannot be imported never ends or slows training.

``IsolatedSink`` runs one sink's calls on its own daemon thread, in order, behind a bounded
queue. The first call that raises (anything, ``SystemExit`` included), or that is still running
``timeout_s`` seconds after it began, marks the sink failed: one warning names the sink, the
call and the error; every later call to it is dropped and counted. A sink that keeps up with
no call but never hangs either is bounded twice: a full queue drops its oldest ``log`` call,
and ``finish`` waits at most ``timeout_s`` in all for the backlog. ``GuardedFanOut`` puts the
run record (trusted, synchronous) in front of any number of isolated sinks and writes
``sink/<name>/dropped`` into the record.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from trainwire import logs
from trainwire.errors import RunRecordError
from trainwire.sinks.base import FanOut, MetricsSink, NullSink, forward_histograms

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_QUEUED = 1000  # calls waiting for a lagging sink; beyond it the oldest log call is dropped
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
    """Runs ``sink``'s calls on a daemon worker thread so that a failure, a hang or a lag cannot reach the loop.

    ``log`` and ``summary`` only enqueue (a few microseconds on a logged step). At most
    ``max_queued`` calls wait: when a lagging sink lets more pile up, the oldest ``log`` call is
    dropped and counted (one ``sink_lagging`` warning). ``finish`` waits for the queue to drain,
    but never for a call that has run longer than ``timeout_s``, nor longer than ``timeout_s``
    in all. After the first failure (an exception of any kind, a call running past
    ``timeout_s``, or a backlog not drained by the end of ``finish``'s wait), later calls are
    dropped and counted in ``dropped``; ``failure`` holds ``(call, error)``.
    """

    def __init__(self, sink: MetricsSink, *, name: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_queued: int = DEFAULT_MAX_QUEUED, logger: Any = None) -> None:
        if not timeout_s > 0:
            from trainwire.errors import ConfigError

            raise ConfigError(f"sink_timeout_s={timeout_s!r} must be > 0")
        if not max_queued >= 1:
            raise ValueError(f"max_queued={max_queued!r} must be >= 1")
        self.sink = sink
        self.name = name or sink_name(sink)
        self.timeout_s = float(timeout_s)
        self.max_queued = max_queued
        self._logger = logger or logs.get_logger()
        self.dropped = 0
        self.failure: tuple[str, BaseException] | None = None
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque = deque()
        self._busy: tuple[str, float] | None = None  # (call, monotonic start) of the call in flight
        self._thread: threading.Thread | None = None
        self._warned = self._lagged = False

    # -- the loop's side (the caller's thread) -------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self.dropped, self.failure, self._warned, self._lagged = 0, None, False, False
            self._queue = deque()
        self._thread = threading.Thread(target=self._work, args=(self._queue,), daemon=True,
                                        name=f"trainwire-sink-{self.name}")
        self._thread.start()
        self._submit("start")

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self._submit("log", dict(metrics), step=step, epoch=epoch)

    def log_image(self, key: str, image: Any, *, step: int, epoch: int) -> None:
        self._submit("log_image", key, image, step=step, epoch=epoch)

    def log_histograms(self, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
        if hasattr(self.sink, "log_histograms"):  # optional on the port: a duck-typed sink may lack it
            self._submit("log_histograms", dict(values), step=step, epoch=epoch)

    def summary(self, values: Mapping[str, Any]) -> None:
        self._submit("summary", dict(values))

    def finish(self, status: str = "finished") -> None:
        self._await(self._request_finish(status))

    def _request_finish(self, status: str) -> tuple[threading.Event, float] | None:
        """Queues the finish call; returns what ``_await`` waits on: its event and the deadline of the wait."""
        if self._thread is None:
            return None
        done = threading.Event()
        return (done, time.monotonic() + self.timeout_s) if self._submit("finish", status, _done=done) else None

    def _await(self, waiting: tuple[threading.Event, float] | None) -> None:
        """Waits for the finish call, at most ``timeout_s`` in all and never past a stalled call; then stops the worker."""
        thread = self._thread
        if thread is None:
            return
        if waiting is not None:
            done, deadline = waiting
            while not done.wait(_POLL_S):
                if self._check_stalled():
                    break
                if not thread.is_alive():  # cannot happen while _work catches everything; never wait on a dead thread
                    self._abandon("finish", RuntimeError("the sink's worker thread ended"))
                    break
                if time.monotonic() > deadline:
                    with self._lock:
                        left = len(self._queue)
                    self._abandon("finish", TimeoutError(
                        f"{left} queued calls were not delivered within sink_timeout_s={self.timeout_s:g}"))
                    break
        stalled = self._busy is not None or self.failure is not None
        with self._ready:
            self._queue.append(_STOP)  # a worker stuck in a call never reads it; it is a daemon, so it cannot hold the process
            self._ready.notify()
        if not stalled:  # the worker is idle and ends at _STOP: don't leave it running
            thread.join(self.timeout_s)
        self._thread = None
        self._warn_once()

    def _submit(self, call: str, *args: Any, _done: threading.Event | None = None, **kwargs: Any) -> bool:
        self._check_stalled()
        if self.failure is not None:
            self._count_drop()
            self._warn_once()
            return False
        lagging = False
        with self._ready:
            if len(self._queue) >= self.max_queued:
                # A lagging sink: lose its oldest metrics rather than memory or the end of the run.
                oldest = next((i for i, item in enumerate(self._queue) if item is not _STOP and item[0] == "log"), None)
                if oldest is not None:
                    del self._queue[oldest]
                    self.dropped += 1
                    lagging, self._lagged = not self._lagged, True
            self._queue.append((call, args, kwargs, _done))
            self._ready.notify()
        if lagging:
            self._logger.warning("sink_lagging", sink=self.name, queued=self.max_queued,
                                 consequence="training continues; the oldest queued metrics of this sink are dropped")
        return True

    def _check_stalled(self) -> bool:
        busy = self._busy
        if busy is not None and self.failure is None and time.monotonic() - busy[1] > self.timeout_s:
            self._abandon(busy[0], TimeoutError(f"{busy[0]} did not return within sink_timeout_s={self.timeout_s:g}"))
        return self.failure is not None

    def _abandon(self, call: str, error: BaseException) -> None:
        """Marks the sink failed and drops (counting them) the calls still queued: they will never be delivered."""
        self._fail(call, error)
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
        for item in queued:
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
    def _work(self, calls: deque) -> None:
        while True:
            with self._ready:
                while not calls:
                    self._ready.wait()
                item = calls.popleft()
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
                except BaseException as error:  # noqa: BLE001 - SystemExit, KeyboardInterrupt too: a sink never ends the thread
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
        self._logger = logger or logs.get_logger()
        self._summary: dict[str, Any] | None = None
        self._at = (0, 0)
        self.record_error: RunRecordError | None = None

    def start(self) -> None:
        self._summary, self._at, self.record_error = None, (0, 0), None
        self.record.start()
        for sink in self.guarded:
            sink.start()

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        if self.record_error is None:
            try:
                self.record.log(metrics, step=step, epoch=epoch)
            except RunRecordError as error:
                # Mid-run, the loop is not at a point where it could stop and save; it goes on to its
                # next checkpoint (which holds every epoch's metrics) and the run ends with this error.
                self.record_error = error
                self._logger.warning("run_record_failed", error=str(error),
                                     consequence="training continues and saves its checkpoints; the run ends "
                                                 "with this error")
        self._at = (step, epoch)
        for sink in self.guarded:
            sink.log(metrics, step=step, epoch=epoch)

    def log_image(self, key: str, image: Any, *, step: int, epoch: int) -> None:
        self.record.log_image(key, image, step=step, epoch=epoch)
        for sink in self.guarded:
            sink.log_image(key, image, step=step, epoch=epoch)

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
            try:
                if any(sink.failure is not None for sink in self.guarded) and self.record_error is None:
                    step, epoch = self._at
                    self.record.log(counts, step=step, epoch=epoch)
                if self._summary is not None:
                    errors = {f"sink/{sink.name}/error": f"{sink.failure[0]}: {type(sink.failure[1]).__name__}: "
                              f"{sink.failure[1]}" for sink in self.guarded if sink.failure is not None}
                    self.record.summary({**self._summary, **counts, **errors})
            finally:
                self.record.finish(status)
        except RunRecordError as error:
            self.record_error = self.record_error or error
        if self.record_error is not None:
            if status == "finished":
                raise self.record_error
            # Another error is already on its way out (a failed or interrupted run): it is the one to report.
            self._logger.warning("run_record_failed", error=str(self.record_error))

    def position(self) -> Any:
        return self.record.position()  # the isolated sinks run behind: only the record can be cut back

    def rewind(self, position: Any) -> None:
        self.record.rewind(position)

    @property
    def dropped(self) -> dict[str, int]:
        """Calls dropped so far, by sink name."""
        return {sink.name: sink.dropped for sink in self.guarded}
