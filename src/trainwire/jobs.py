"""Jobs: a run on a background thread whose progress arrives as events, for services.

``Job(cfg).start()`` builds the run (a bad config raises ``ConfigError`` at once, before any
work), then trains on its own thread. ``job.events()`` yields what happens as it happens, no
file polling: ``started``, ``epoch_end`` (the epoch's metrics), ``checkpoint`` (names written),
then one of ``finished`` (the summary), ``failed`` (the error) or ``cancelled``. Any number of
readers may follow one job, from its first event or from any later one (``since``).
``job.cancel()`` asks the run to stop, from any thread.

The events come from a hook and a wrapped checkpoint store put into the run's container: the
loop knows nothing of jobs (ADR 0021).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainwire.checkpointing.store import CheckpointStore
from trainwire.errors import TrainingInterrupted
from trainwire.loop.signals import StopToken

TERMINAL = ("finished", "failed", "cancelled")


@dataclass(frozen=True)
class JobEvent:
    """One thing that happened to a job: ``seq`` counts from 0, ``time`` is wall-clock seconds."""

    seq: int
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "time": self.time, **self.data}


class Job:
    """One training run on a background thread, with its progress as events.

    Args:
        cfg: a composed config (``trainwire.config.compose``), a plain dict of one, or a built
            container (``trainwire.containers.build_container``) whose slots the caller chose.
        job_id: a name for the job (default: 12 random hex digits).
    """

    def __init__(self, cfg: Any, *, job_id: str | None = None) -> None:
        from dependency_injector.containers import Container

        from trainwire.containers import build_container

        self.id = job_id or uuid.uuid4().hex[:12]
        self.token = StopToken()
        self.status = "pending"  # then running, and one of TERMINAL
        self.result = None  # the FitResult, once finished
        self.error: BaseException | None = None
        self.run_dir: str | None = None
        self._container = cfg if isinstance(cfg, Container) else build_container(cfg)
        self._events: list[JobEvent] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> Job:
        """Starts the run on a daemon thread and returns the job."""
        if self._thread is not None:
            raise RuntimeError(f"job {self.id} was already started")
        self._thread = threading.Thread(target=self._run, name=f"trainwire-job-{self.id}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Asks the run to stop (from any thread); its last event will be ``cancelled``."""
        self.token.stop()

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the job has ended or ``timeout`` seconds pass; returns ``done``."""
        with self._changed:
            return self._changed.wait_for(lambda: self.done, timeout)

    def events(self, since: int = 0, timeout: float | None = None) -> Iterator[JobEvent]:
        """Yields the job's events from number ``since`` on, waiting for new ones, until the last one.

        Raises ``TimeoutError`` when no new event comes within ``timeout`` seconds.
        """
        index = since
        while True:
            with self._changed:
                if not self._changed.wait_for(lambda: len(self._events) > index, timeout):
                    raise TimeoutError(f"job {self.id}: no event for {timeout} s")
                batch = self._events[index:]
            for event in batch:
                yield event
                if event.kind in TERMINAL:
                    return
            index += len(batch)

    def describe(self) -> dict[str, Any]:
        """What a service shows for the job: id, status, run_dir, the summary or the error."""
        return {"id": self.id, "status": self.status, "run_dir": self.run_dir, "events": len(self._events),
                "summary": self.result.summary() if self.result is not None else None,
                "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}"}

    # -- the job's thread ---------------------------------------------------------------------
    def _publish(self, kind: str, **data: Any) -> None:
        with self._changed:
            self._events.append(JobEvent(len(self._events), kind, data, time.time()))
            if kind in TERMINAL:
                self.status = kind
            self._changed.notify_all()

    def _run(self) -> None:
        from dependency_injector import providers

        from trainwire.containers import run

        container = self._container
        if self.token.stopped:  # cancelled before it started: nothing is built or written
            self._publish("cancelled", saved=False)
            return
        self.status = "running"
        try:
            self.run_dir = str(container.run_dir())
            self._publish("started", run_dir=self.run_dir)
            store = _ReportingStore(container.checkpoint_store(), self._publish)
            hooks = [*container.hooks(), _Progress(self._publish)]
            with container.hooks.override(providers.Object(hooks)), \
                    container.checkpoint_store.override(providers.Object(store)):
                self.result = run(container, stop=self.token)
        except TrainingInterrupted as interrupted:
            self.error = interrupted
            self._publish("cancelled" if self.token.stopped else "failed", saved=interrupted.saved)
        except BaseException as error:  # noqa: BLE001 - the job's thread ends here; the error is the event
            self.error = error
            self._publish("failed", error=f"{type(error).__name__}: {error}")
        else:
            self._publish("finished", summary=self.result.summary())


class _Progress:
    """The hook that turns the loop's epoch ends into events."""

    def __init__(self, publish) -> None:
        self._publish = publish

    def on_epoch_end(self, state, metrics: Mapping[str, float]) -> None:
        self._publish("epoch_end", epoch=state.epoch, step=state.step, metrics=dict(metrics))


class _ReportingStore(CheckpointStore):
    """The run's checkpoint store, publishing a ``checkpoint`` event after each save it commits."""

    def __init__(self, store: CheckpointStore, publish) -> None:
        self._store, self._publish = store, publish

    def start(self) -> None:
        self._store.start()

    def save(self, state: Mapping[str, Any], names: Sequence[str], *, meta: Mapping[str, int]) -> None:
        self._store.save(state, names, meta=meta)
        self._publish("checkpoint", names=list(names), **meta)

    def latest(self) -> str | None:
        return self._store.latest()

    def load(self, name: str) -> dict[str, Any]:
        return self._store.load(name)

    def __getattr__(self, name: str) -> Any:  # the store's own extras (a directory, a path for a name)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._store, name)
