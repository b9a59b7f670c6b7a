"""The MetricsSink port."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any


class MetricsSink(ABC):
    """Port: where metrics go. Values are plain Python numbers (the Trainer has already synced)."""

    def start(self) -> None:
        """Called once at the start of fit, before the first batch."""

    @abstractmethod
    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        """Called on logged optimizer steps and once per epoch; ``step`` counts optimizer steps so far."""

    def log_image(self, key: str, image: Any, *, step: int, epoch: int) -> None:
        """Called after a validation pass that made an image (generated samples); a no-op unless the sink shows images.

        ``image`` is a ``numpy.uint8`` array, ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB); see ``trainwire.sinks.images``.
        """

    def log_histograms(self, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
        """Optional: distributions (1-D CPU tensors, by name) at ``step``; sinks without histograms drop them."""

    def summary(self, values: Mapping[str, Any]) -> None:
        """Called once at the end with the run's summary (best value and epoch, stop reason, timings)."""

    def finish(self, status: str = "finished") -> None:
        """Called last, also after an exception; ``status`` is one of finished, failed, killed."""


def forward_histograms(sink: Any, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
    """``sink.log_histograms(...)`` where the sink has it (a duck-typed sink may not)."""
    log_histograms = getattr(sink, "log_histograms", None)
    if log_histograms is not None:
        log_histograms(values, step=step, epoch=epoch)


class NullSink(MetricsSink):
    """Drops everything: every call is a no-op."""

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        pass


class FanOut(MetricsSink):
    """Sends every call to each of ``sinks``, in order."""

    def __init__(self, *sinks: MetricsSink) -> None:
        self.sinks = sinks

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step=step, epoch=epoch)

    def log_image(self, key: str, image: Any, *, step: int, epoch: int) -> None:
        for sink in self.sinks:
            sink.log_image(key, image, step=step, epoch=epoch)

    def log_histograms(self, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
        for sink in self.sinks:
            forward_histograms(sink, values, step=step, epoch=epoch)

    def summary(self, values: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.summary(values)

    def finish(self, status: str = "finished") -> None:
        for sink in self.sinks:
            sink.finish(status)
