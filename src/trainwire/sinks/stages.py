"""Stages: one run made of several fits (pre-train, then fine-tune), each logging under its own prefix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainwire.sinks.base import MetricsSink, forward_histograms


class PrefixedSink(MetricsSink):
    """Puts ``prefix`` in front of every metric and summary key (``pre/`` + ``train/loss``).

    The summary of a stage becomes ``pre/avg_epoch_time_s``, ``pre/best_value``, … so the
    summaries of several stages sit side by side. ``step_offset`` is added to every step.
    With ``lifecycle=False`` the inner sink's ``start``/``finish`` are left to its owner
    (``Stages``), so one external run spans every stage.
    """

    def __init__(self, prefix: str, sink: MetricsSink, *, step_offset: int = 0, lifecycle: bool = True) -> None:
        self.prefix, self.sink = prefix, sink
        self.step_offset, self.lifecycle = step_offset, lifecycle
        self.last_step = step_offset

    def start(self) -> None:
        if self.lifecycle:
            self.sink.start()

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self.last_step = self.step_offset + step
        self.sink.log({self.prefix + key: value for key, value in metrics.items()}, step=self.last_step, epoch=epoch)

    def log_image(self, key: str, image: Any, *, step: int, epoch: int) -> None:
        self.sink.log_image(self.prefix + key, image, step=self.step_offset + step, epoch=epoch)

    def log_histograms(self, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
        forward_histograms(self.sink, {self.prefix + key: value for key, value in values.items()},
                           step=self.step_offset + step, epoch=epoch)

    def summary(self, values: Mapping[str, Any]) -> None:
        self.sink.summary({self.prefix + key: value for key, value in values.items()})

    def finish(self, status: str = "finished") -> None:
        if self.lifecycle:
            self.sink.finish(status)

    def position(self) -> Any:
        return self.sink.position()

    def rewind(self, position: Any) -> None:
        self.sink.rewind(position)


class Stages:
    """Owns ``sink`` for a run of several stages; ``stage(name)`` gives each fit its prefixed sink.

    Steps run on across stages (stage two's first step follows stage one's last), so trackers
    that need a rising step (W&B) keep every point. Use as a context manager: the sink is
    started on entry and finished on exit, ``failed``/``killed`` when an exception leaves it::

        with Stages(GuardedFanOut(JsonlSink(run_dir), [WandbSink(...)])) as stages:
            Trainer(..., sink=stages.stage("pre")).fit(model, unlabelled)
            Trainer(..., sink=stages.stage("fine")).fit(model, labelled, val)
    """

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink
        self._current: PrefixedSink | None = None

    def stage(self, name: str) -> PrefixedSink:
        offset = self._current.last_step if self._current is not None else 0
        self._current = PrefixedSink(f"{name.rstrip('/')}/", self.sink, step_offset=offset, lifecycle=False)
        return self._current

    def __enter__(self) -> Stages:
        self.sink.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        status = "finished" if kind is None else ("killed" if issubclass(kind, KeyboardInterrupt) else "failed")
        self.sink.finish(status)
