"""Fakes for tests, ours and users': swap them in with ``container.<slot>.override(...)``.

Each fake records what happened so a test asserts on behaviour, not on calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainwire.sinks.base import MetricsSink
from trainwire.stopping import StoppingPolicy, Verdict


@dataclass
class LoggedRecord:
    step: int
    epoch: int
    metrics: dict[str, float]


class RecordingSink(MetricsSink):
    """Keeps every logged metric with its step and epoch, the summary and how the run finished."""

    def __init__(self) -> None:
        self.records: list[LoggedRecord] = []
        self.summary_values: dict[str, Any] = {}
        self.started = False
        self.status: str | None = None

    def start(self) -> None:
        self.started = True

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self.records.append(LoggedRecord(step, epoch, dict(metrics)))

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
        from trainwire.hooks import HOOK_EVENTS

        if name not in HOOK_EVENTS:
            raise AttributeError(name)

        def record(state: Any, *args: Any) -> None:
            self.events.append((name, state.epoch, state.step))

        return record
