"""Weights & Biases, through the real ``wandb`` client."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from trainwire.sinks.base import MetricsSink

WANDB_MODES = ("online", "offline", "disabled")
# wandb-core reports its own errors and traces over the network unless started with
# --no-observability, which wandb (0.31) passes only when this variable is false when the
# service starts: it has no Settings field for it.
_OBSERVABILITY = "WANDB_ERROR_REPORTING"
_LAUNCH = threading.Lock()


@contextlib.contextmanager
def _without_observability() -> Iterator[None]:
    """While ``wandb.init`` may start the wandb-core service: its telemetry off, then the variable as it was."""
    with _LAUNCH:
        before = os.environ.get(_OBSERVABILITY)
        os.environ[_OBSERVABILITY] = "false"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(_OBSERVABILITY, None)
            else:
                os.environ[_OBSERVABILITY] = before


class WandbSink(MetricsSink):
    """Logs to a W&B run: ``init`` at start, every metric with its step, the summary, ``finish``.

    ``wandb`` is imported when this sink is built, never when trainwire is imported.
    ``mode=offline`` writes the run locally for a later ``wandb sync`` and makes no network
    call: wandb-core's own telemetry is off when this sink starts it (ADR 0010).
    """

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        mode: str = "online",
        config: Mapping[str, Any] | None = None,
        tags: list[str] | None = None,
        dir: str | None = None,
    ) -> None:
        import wandb  # heavy (~1 s): only runs that log to W&B pay for it

        from trainwire.errors import ConfigError

        if mode not in WANDB_MODES:
            raise ConfigError(f"sink.mode={mode!r} is not one of {', '.join(WANDB_MODES)}")
        self._wandb = wandb
        self._init_args = dict(
            project=project, entity=entity, name=name, mode=mode, config=dict(config or {}), tags=tags, dir=dir
        )
        self.run = None

    def start(self) -> None:
        # reinit: a service may fit several models in one process, each its own W&B run.
        quiet = _without_observability() if self._init_args["mode"] == "offline" else contextlib.nullcontext()
        with quiet:
            self.run = self._wandb.init(**self._init_args, reinit="create_new")

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self.run.log({**metrics, "epoch": epoch}, step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(values))

    def finish(self, status: str = "finished") -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "finished" else 1)
            self.run = None
