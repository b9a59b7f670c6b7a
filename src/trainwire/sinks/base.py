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

    def position(self) -> Any:
        """Where the sink's own record of the run ends now (kept in each checkpoint); None: it keeps none
        that a resume could cut back (a tracker's server, a progress bar)."""
        return None

    def rewind(self, position: Any) -> None:
        """Before ``start`` of a resumed run: cuts the record back to ``position`` (what ``position()`` said
        when the checkpoint was taken), so the steps a killed run logged after it are not there twice.

        ``None``: ``trainer.resume=auto`` found no checkpoint, so the run starts afresh; a sink whose
        record already holds a run raises ConfigError rather than append a second run to it.
        """


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

    def position(self) -> Any:
        positions = tuple(sink.position() for sink in self.sinks)
        return None if all(position is None for position in positions) else positions

    def rewind(self, position: Any) -> None:
        if position is not None and not (isinstance(position, (tuple, list)) and len(position) == len(self.sinks)):
            return  # saved by another arrangement of sinks: nothing here can say what to cut
        for sink, mark in zip(self.sinks, position if position is not None else [None] * len(self.sinks)):
            sink.rewind(mark)
