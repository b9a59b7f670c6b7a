"""Fakes for tests, ours and users': swap them in with ``container.<slot>.override(...)``.

Each fake records what happened so a test asserts on behaviour, not on calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwire.policies.stopping import StoppingPolicy, Verdict
from trainwire.sinks.base import MetricsSink


@dataclass
class LoggedRecord:
    step: int
    epoch: int
    metrics: dict[str, float]


class RecordingSink(MetricsSink):
    """Keeps every logged metric with its step and epoch, the images, the summary and how the run finished."""

    def __init__(self) -> None:
        self.records: list[LoggedRecord] = []
        self.images: list[tuple[str, int, int, Any]] = []  # (key, step, epoch, uint8 array)
        self.histograms: list[LoggedRecord] = []  # values are 1-D tensors
        self.summary_values: dict[str, Any] = {}
        self.started = False
        self.status: str | None = None

    def start(self) -> None:
        self.started = True

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self.records.append(LoggedRecord(step, epoch, dict(metrics)))

    def log_image(self, key: str, image: Any, *, step: int, epoch: int) -> None:
        self.images.append((key, step, epoch, image))

    def log_histograms(self, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
        self.histograms.append(LoggedRecord(step, epoch, dict(values)))

    def summary(self, values: Mapping[str, Any]) -> None:
        self.summary_values.update(values)

    def finish(self, status: str = "finished") -> None:
        self.status = status

    def series(self, name: str) -> list[tuple[int, float]]:
        """``(step, value)`` for every record that holds ``name``, in order."""
        return [(record.step, record.metrics[name]) for record in self.records if name in record.metrics]


@dataclass
class ScriptedStopper(StoppingPolicy):
    """Judges epochs from a script: ``improved`` lists the epochs that count as a new best; stops at ``stop_at``.

    ``monitor`` is reported as given (None by default, so no validation data is needed).
    """

    improved: Iterable[int] = ()
    stop_at: int | None = None
    monitor: str | None = None
    seen: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.improved = set(self.improved)
        self.best_value: float | None = None
        self.best_epoch: int | None = None

    def update(self, epoch: int, metrics: Mapping[str, float]) -> Verdict:
        self.seen.append(dict(metrics))
        better = epoch in self.improved
        if better:
            self.best_epoch = epoch
            self.best_value = metrics.get(self.monitor) if self.monitor else None
        if self.stop_at is not None and epoch >= self.stop_at:
            return Verdict(better, stop=True, reason="scripted")
        return Verdict(better)


class RecordingHook:
    """A hook that writes down every event it receives, in order, as ``(event, epoch, step)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def __getattr__(self, name: str):
        from trainwire.loop.hooks import HOOK_EVENTS

        if name not in HOOK_EVENTS:
            raise AttributeError(name)

        def record(state: Any, *args: Any) -> None:
            self.events.append((name, state.epoch, state.step))

        return record


class FailingSink(RecordingSink):
    """Raises ``error`` on its ``after + 1``-th call to ``on`` (start, log, summary or finish); records the rest.

    ``error`` may be any exception, ``SystemExit`` or ``KeyboardInterrupt`` included.
    """

    name = "failing"

    def __init__(self, on: str = "log", *, after: int = 0, error: BaseException | None = None) -> None:
        super().__init__()
        if on not in ("start", "log", "summary", "finish"):
            raise ValueError(f"on={on!r} is not one of start, log, summary, finish")
        self.on, self.after = on, after
        self.error = error or RuntimeError(f"{self.name} sink: {on} failed")
        self.calls = 0

    def _maybe_fail(self, call: str) -> None:
        if call == self.on:
            self.calls += 1
            if self.calls > self.after:
                raise self.error

    def start(self) -> None:
        self._maybe_fail("start")
        super().start()

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self._maybe_fail("log")
        super().log(metrics, step=step, epoch=epoch)

    def summary(self, values: Mapping[str, Any]) -> None:
        self._maybe_fail("summary")
        super().summary(values)

    def finish(self, status: str = "finished") -> None:
        self._maybe_fail("finish")
        super().finish(status)


class BlockingSink(RecordingSink):
    """Blocks for ``seconds`` (or until ``release()``) in its first call to ``on``, as a hung network call would."""

    name = "blocking"

    def __init__(self, seconds: float = 60.0, on: str = "log") -> None:
        import threading

        super().__init__()
        self.seconds, self.on = seconds, on
        self._released = threading.Event()
        self.blocked = 0

    def release(self) -> None:
        """Lets a blocked call return (tests call it so no thread outlives them)."""
        self._released.set()

    def _maybe_block(self, call: str) -> None:
        if call == self.on and not self.blocked:
            self.blocked += 1
            self._released.wait(self.seconds)

    def start(self) -> None:
        self._maybe_block("start")
        super().start()

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self._maybe_block("log")
        super().log(metrics, step=step, epoch=epoch)

    def summary(self, values: Mapping[str, Any]) -> None:
        self._maybe_block("summary")
        super().summary(values)

    def finish(self, status: str = "finished") -> None:
        self._maybe_block("finish")
        super().finish(status)


class SlowSink(RecordingSink):
    """Takes ``seconds`` over every ``log`` call: responsive, never hung, but slower than the loop logs."""

    name = "slow"

    def __init__(self, seconds: float = 1.0) -> None:
        super().__init__()
        self.seconds = seconds

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        import time

        time.sleep(self.seconds)
        super().log(metrics, step=step, epoch=epoch)


class MissingLibrarySink(RecordingSink):
    """A sink whose library is not installed: building it raises ImportError, as WandbSink would without wandb."""

    name = "missing"

    def __init__(self, module: str = "trainwire_no_such_library") -> None:
        import importlib

        importlib.import_module(module)
        super().__init__()


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = record.msg if isinstance(record.msg, Mapping) else {"event": record.getMessage()}
        self.entries.append({**fields, "log_level": record.levelname.lower()})


@contextlib.contextmanager
def capture_logs(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Collects what trainwire logs inside the block: one dict per record, its fields plus ``log_level``.

    Works on the stdlib ``trainwire`` logger (where every record goes), lowering its level to
    ``level`` for the block; like ``structlog.testing.capture_logs``, for code that logs through stdlib.
    """
    from trainwire.logs import LOGGER_NAME

    logger, handler = logging.getLogger(LOGGER_NAME), _Capture()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler.entries
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl`` in order, one dict a line; ``[]`` when the file is absent.

    A last line cut short (a run killed while writing it) is left out, so a test can read the record of a
    run it is about to kill; every complete line must be JSON.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().split("\n")  # the last element is "" when the file ends in a newline
    return [json.loads(line) for line in lines[:-1] if line.strip()]
