"""Stopping policies: after each evaluation, did the monitored metric improve, and stop now?

A policy only answers; the Trainer acts on the answer (keeps the best weights, ends the loop).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainwire.errors import ConfigError

MODES = ("min", "max")


@dataclass(frozen=True)
class Verdict:
    """The answer to one evaluation: ``improved`` (a new best) and ``stop`` with its ``reason``."""

    improved: bool
    stop: bool = False
    reason: str | None = None


class StoppingPolicy(ABC):
    """Port: judges each epoch's metrics.

    ``monitor`` names the metric judged (None: nothing is monitored and no best is kept).
    """

    monitor: str | None = None
    best_value: float | None = None
    best_epoch: int | None = None

    @abstractmethod
    def update(self, epoch: int, metrics: Mapping[str, float]) -> Verdict:
        """Called once per epoch after evaluation with all that epoch's metrics."""

    def state_dict(self) -> dict[str, Any]:
        """The state needed to continue judging exactly after a resume."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""


class NeverStop(StoppingPolicy):
    """Never stops early and keeps no best: the run ends at ``max_epochs`` with its last weights."""

    def update(self, epoch: int, metrics: Mapping[str, float]) -> Verdict:
        return Verdict(improved=False)


class PatienceStopper(StoppingPolicy):
    """Stops after ``patience`` epochs without improvement, or as soon as ``goal`` is reached.

    An epoch improves when the monitored value beats the best so far by more than
    ``min_delta`` (lower for mode ``min``, higher for ``max``). A non-finite value never
    improves, so it is never recorded as the best.
    """

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: str = "min",
        patience: int = 10,
        min_delta: float = 0.0,
        goal: float | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"stopping.mode={mode!r} is not one of {', '.join(MODES)}")
        if patience < 0:
            raise ConfigError(f"stopping.patience={patience} must be >= 0")
        if min_delta < 0:
            raise ConfigError(f"stopping.min_delta={min_delta} must be >= 0")
        self.monitor, self.mode, self.patience, self.min_delta, self.goal = monitor, mode, patience, min_delta, goal
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def _better(self, value: float, than: float) -> bool:
        if self.mode == "min":
            return value < than - self.min_delta
        return value > than + self.min_delta

    def _reached_goal(self, value: float) -> bool:
        if self.goal is None:
            return False
        return value <= self.goal if self.mode == "min" else value >= self.goal

    def update(self, epoch: int, metrics: Mapping[str, float]) -> Verdict:
        if self.monitor not in metrics:
            raise ConfigError(
                f"stopping.monitor={self.monitor!r} is not among the metrics: {', '.join(sorted(metrics))}"
            )
        value = float(metrics[self.monitor])
        improved = math.isfinite(value) and (self.best_value is None or self._better(value, self.best_value))
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        if math.isfinite(value) and self._reached_goal(value):
            return Verdict(improved, stop=True, reason="goal")
        if not improved and self.bad_epochs >= max(self.patience, 1):  # patience 0: the first bad epoch stops
            return Verdict(improved, stop=True, reason="patience")
        return Verdict(improved)

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_value, self.best_epoch, self.bad_epochs = state["best_value"], state["best_epoch"], state["bad_epochs"]
