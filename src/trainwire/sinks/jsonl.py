"""The local run record: ``config.yaml``, ``metrics.jsonl``, ``summary.json`` and ``images/`` in the run directory."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from trainwire.errors import ConfigError, RunRecordError
from trainwire.sinks.base import MetricsSink


def _json_value(value: Any) -> Any:
    # JSON has no NaN or inf; null keeps each line valid for every reader.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` so that a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # only when it failed: nothing half-written is left beside the record
            tmp.unlink(missing_ok=True)


class JsonlSink(MetricsSink):
    """Appends one JSON object a line to ``metrics.jsonl``, each with integer ``step`` and ``epoch``.

    Each line is flushed as it is written, so a crash loses at most the line being written.
    ``config`` (the resolved config as YAML text), when given, is written to ``config.yaml``.
    A write that fails (a full disk, a read-only folder) raises RunRecordError naming the file;
    after a failed line the file is closed and no later line is written.
    """

    def __init__(self, run_dir: str | os.PathLike[str], config_yaml: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.config_yaml = config_yaml
        self._file: BinaryIO | None = None
        self._summary: dict[str, Any] = {}

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.run_dir / "summary.json"

    def start(self) -> None:
        self._summary = {}
        with _naming(self.run_dir):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config_yaml is not None:
            with _naming(self.run_dir / "config.yaml"):
                write_atomic(self.run_dir / "config.yaml", self.config_yaml)
        with _naming(self.metrics_path):
            # Unbuffered: each line is one write, and a failed one leaves nothing behind to fail again at close.
            self._file = open(self.metrics_path, "ab", buffering=0)

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        if self._file is None:
            raise RunRecordError(f"the run record {self.metrics_path} is closed after a failed write")
        record = {"step": int(step), "epoch": int(epoch)}
        record.update((key, _json_value(value)) for key, value in metrics.items())
        line = memoryview((json.dumps(record) + "\n").encode())
        try:
            while line:
                line = line[self._file.write(line):]
        except OSError as error:
            self._file.close()
            self._file = None
            raise RunRecordError(f"cannot write the run record {self.metrics_path}: {error.strerror or error}") from None

    def log_image(self, key: str, image: Any, *, step: int, epoch: int) -> None:
        """Writes ``images/<key>_epochNNNN.png`` in the run directory (atomically: a reader never sees half)."""
        from trainwire.sinks.images import encode_png, image_file_name

        folder = self.run_dir / "images"
        folder.mkdir(exist_ok=True)
        path = folder / image_file_name(key, epoch)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(encode_png(image))
        os.replace(tmp, path)

    def summary(self, values: Mapping[str, Any]) -> None:
        # Several calls (the stages of one run, each under its prefix) add up to one summary.
        self._summary.update((key, _json_value(value)) for key, value in values.items())
        with _naming(self.summary_path):
            write_atomic(self.summary_path, json.dumps(self._summary, indent=2, sort_keys=True) + "\n")

    def finish(self, status: str = "finished") -> None:
        if self._file is not None:
            with _naming(self.metrics_path):
                self._file.close()
            self._file = None

    def position(self) -> int:
        """The bytes of ``metrics.jsonl`` so far (each line is written whole before ``log`` returns)."""
        try:
            return os.fstat(self._file.fileno()).st_size if self._file is not None else self.metrics_path.stat().st_size
        except FileNotFoundError:
            return 0

    def rewind(self, position: int | None) -> None:
        """Cuts ``metrics.jsonl`` back to ``position`` bytes, the record as the checkpoint resumed from saw it.

        One truncate: a reader sees the rows up to the checkpoint, then the resumed run's, never a
        step twice however often the run was killed. ``None`` (no checkpoint to continue from) over
        a record that holds rows raises ConfigError: a second run would be appended to the first.
        """
        size = self.position()
        if position is None:
            if size:
                with open(self.metrics_path, "rb") as handle:
                    rows = sum(1 for _ in handle)
                raise ConfigError(f"{self.metrics_path} holds the record of a run ({rows} rows) and there is no "
                                  "checkpoint to continue it from (trainer.resume=auto): a new run would be "
                                  "appended to it; train in another run folder, or move the record away to "
                                  "start over")
            return
        if type(position) is not int or position < 0:
            raise RunRecordError(f"the checkpoint's record position {position!r} is not a byte count of {self.metrics_path}")
        if size > position:
            with _naming(self.metrics_path):
                os.truncate(self.metrics_path, position)
                with open(self.metrics_path, "rb") as handle:
                    os.fsync(handle.fileno())


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Turns an OSError inside the block into a one-line RunRecordError naming ``path``."""
    try:
        yield
    except OSError as error:
        raise RunRecordError(f"cannot write the run record {path}: {error.strerror or error}") from None
