"""Weights & Biases, through the real ``wandb`` client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainwire.sinks.base import MetricsSink

WANDB_MODES = ("online", "offline", "disabled")


class WandbSink(MetricsSink):
    """Logs to a W&B run: ``init`` at start, every metric with its step, the summary, ``finish``.

    ``wandb`` is imported when this sink is built, never when trainwire is imported.
    ``mode=offline`` writes the run locally for a later ``wandb sync``.
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
        self.run = self._wandb.init(**self._init_args, reinit="create_new")

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        self.run.log({**metrics, "epoch": epoch}, step=step)

    def log_histograms(self, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
        # commit=False: the loop's own log at this step (if any) completes the same W&B step.
        self.run.log({key: self._wandb.Histogram(value.numpy()) for key, value in values.items()}, step=step,
                     commit=False)

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(values))

    def finish(self, status: str = "finished") -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "finished" else 1)
            self.run = None
