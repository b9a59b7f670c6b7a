"""TensorBoard event files, written by torch's own ``SummaryWriter``."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from trainwire.sinks.base import MetricsSink


class TensorBoardSink(MetricsSink):
    """Writes every metric as a scalar at its step, the config and summary as text, under ``log_dir``.

    ``tensorboard`` is imported when this sink is built, never when trainwire is imported.
    Numeric summary values are also scalars (``summary/<key>``) at the last step.
    ``log_dir`` None: ``<run_dir>/tensorboard``.
    """

    name = "tensorboard"

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        config_yaml: str | None = None,
        flush_secs: int = 30,
        *,
        run_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        with warnings.catch_warnings():  # what its dependencies' imports add to the filters is not the caller's
            from torch.utils.tensorboard import (
                SummaryWriter,  # imports tensorboard (~1 s)
            )

        if log_dir is None and run_dir is None:
            raise TypeError("TensorBoardSink needs log_dir or run_dir")
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir) if log_dir is not None else Path(run_dir) / "tensorboard"
        self.config_yaml = config_yaml
        self.flush_secs = flush_secs
        self._writer = None
        self._last_step = 0

    def start(self) -> None:
        self._writer = self._writer_class(log_dir=str(self.log_dir), flush_secs=self.flush_secs)
        if self.config_yaml is not None:
            # Four spaces: TensorBoard renders text as Markdown, and this keeps the YAML verbatim.
            self._writer.add_text("config", "    " + self.config_yaml.replace("\n", "\n    "), 0)

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)
        self._last_step = step

    def log_image(self, key: str, image: Any, *, step: int, epoch: int) -> None:
        self._writer.add_image(key, image, step, dataformats="HW" if image.ndim == 2 else "HWC")

    def log_histograms(self, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
        for key, value in values.items():
            self._writer.add_histogram(key, value, step)

    def summary(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, Real) and not isinstance(value, bool):
                self._writer.add_scalar(f"summary/{key}", value, self._last_step)
        self._writer.add_text("summary", "    " + json.dumps(dict(values), indent=2, default=str).replace("\n", "\n    "),
                              self._last_step)

    def finish(self, status: str = "finished") -> None:
        if self._writer is not None:
            self._writer.add_text("status", status, self._last_step)
            self._writer.close()
            self._writer = None
