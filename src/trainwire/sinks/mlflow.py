"""MLflow, through its own tracking client (``MlflowClient``)."""

from __future__ import annotations

import math
import os
import time
import uuid
import warnings
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from types import MappingProxyType
from typing import Any

from trainwire.sinks.base import MetricsSink

# MLflow's run statuses for trainwire's three ways a run ends.
_STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
_BATCH = 100  # log_batch accepts at most 1000 metrics and 100 params a call


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"lr": 0.001}}`` -> ``{"optimizer.lr": "0.001"}``; lists stay whole (``[0.9, 0.999]``)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def default_tracking_uri(run_dir: str | os.PathLike[str]) -> str:
    """A SQLite store inside the run directory: MLflow 3 refuses its plain-file store unless told otherwise."""
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


class MLflowSink(MetricsSink):
    """Logs to an MLflow run: params = the flattened config, metrics with their step, the summary, the status.

    ``mlflow`` is imported when this sink is built, never when trainwire is imported. The run
    ends ``FINISHED``, ``FAILED`` or ``KILLED`` (fit's ``finish`` status, also after an exception).
    The summary goes in as metrics (numbers, ``summary/<key>``), tags (the rest) and ``summary.json``.
    ``tracking_uri`` None: a SQLite store in ``run_dir`` (``default_tracking_uri``), artifacts in
    ``<run_dir>/mlartifacts`` unless ``artifact_location`` says otherwise.
    A run given no ``run_name`` is named ``trainwire-<8 hex digits>``.
    """

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "trainwire",
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] = MappingProxyType({}),
        artifact_location: str | None = None,
        *,
        run_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        with warnings.catch_warnings():  # what its dependencies' imports add to the filters is not the caller's
            from mlflow.entities import (  # heavy (~2 s): only runs that log to MLflow pay
                Metric,
                Param,
                RunTag,
            )
            from mlflow.tracking import MlflowClient

        self._client_class, self._entities = MlflowClient, (Metric, Param, RunTag)
        if tracking_uri is None:  # a local store inside the run directory, its artifacts beside it
            if run_dir is None:
                raise TypeError("MLflowSink needs tracking_uri or run_dir")
            tracking_uri = default_tracking_uri(run_dir)
            artifact_location = artifact_location or str(Path(run_dir) / "mlartifacts")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.config = dict(config or {})
        self.tags = dict(tags or {})
        self.artifact_location = artifact_location
        self.client = None
        self.run_id: str | None = None  # kept after finish, so a caller can find the run
        self._open = False
        self._last_step = 0

    def start(self) -> None:
        Metric, Param, RunTag = self._entities
        self.client = self._client_class(tracking_uri=self.tracking_uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            self.experiment, artifact_location=self.artifact_location
        )
        # MLflow would draw a name from the caller's `random`; uuid4 draws from the OS.
        name = self.run_name or f"trainwire-{uuid.uuid4().hex[:8]}"
        run = self.client.create_run(experiment_id, run_name=name, tags=self.tags)
        self.run_id, self._open = run.info.run_id, True
        params = [Param(key, value) for key, value in flatten(self.config).items()]
        for first in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[first : first + _BATCH])

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        Metric = self._entities[0]
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)
        self._last_step = step

    def log_image(self, key: str, image: Any, *, step: int, epoch: int) -> None:
        """Uploads the image as the artifact ``images/<key>_epochNNNN.png`` (PNG encoded here: no Pillow needed)."""
        import tempfile

        from trainwire.sinks.images import encode_png, image_file_name

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / image_file_name(key, epoch)
            path.write_bytes(encode_png(image))
            self.client.log_artifact(self.run_id, str(path), artifact_path="images")

    def summary(self, values: Mapping[str, Any]) -> None:
        Metric, _, RunTag = self._entities
        now = int(time.time() * 1000)
        numbers = [Metric(f"summary/{key}", float(value), now, self._last_step) for key, value in values.items()
                   if isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)]
        tags = [RunTag(f"summary/{key}", str(value)) for key, value in values.items()
                if not (isinstance(value, Real) and not isinstance(value, bool))]
        self.client.log_batch(self.run_id, metrics=numbers, tags=tags)
        self.client.log_dict(self.run_id, dict(values), "summary.json")

    def finish(self, status: str = "finished") -> None:
        if self.run_id is not None and self._open:
            self.client.set_terminated(self.run_id, status=_STATUS.get(status, "FAILED"))
            self._open = False
