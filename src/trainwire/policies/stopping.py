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


class TrialPruning(StoppingPolicy):
    """Reports each epoch's monitored value to an Optuna trial and stops the run when its pruner says so.

    For a search written with Optuna's Python API (``study.optimize(objective)``), where the
    objective holds the trial: ``Trainer(..., stopping_policy=TrialPruning(trial, PatienceStopper(...)))``.
    ``policy`` judges improvement and its own stops (patience, goal) as it does alone; after it,
    the value goes to ``trial.report(value, epoch)`` and ``trial.should_prune()`` may end the run
    with ``stop_reason: pruned`` (the best weights kept, the summary written, as for any early stop).
    The objective then raises ``optuna.TrialPruned`` so that the study records the trial as pruned.
    Hydra's Optuna sweeper cannot use it: it runs each trial from a config, without its trial.
    Optuna is not imported here: ``trial`` is anything with ``report`` and ``should_prune``.
    """

    def __init__(self, trial: Any, policy: StoppingPolicy | None = None) -> None:
        self.trial, self.policy = trial, policy if policy is not None else PatienceStopper()
        if self.policy.monitor is None:
            raise ConfigError("TrialPruning needs a policy that monitors a metric (its monitor is None)")
        mode = getattr(self.policy, "mode", None)
        direction = getattr(getattr(getattr(trial, "study", None), "direction", None), "name", None)
        if (mode, direction) in (("min", "MAXIMIZE"), ("max", "MINIMIZE")):
            raise ConfigError(f"TrialPruning: the study's direction is {direction.lower()} but {self.policy.monitor} "
                              f"is judged by mode {mode!r}; make them agree")

    @property  # type: ignore[override]
    def monitor(self) -> str | None:
        return self.policy.monitor

    @property  # type: ignore[override]
    def best_value(self) -> float | None:
        return self.policy.best_value

    @property  # type: ignore[override]
    def best_epoch(self) -> int | None:
        return self.policy.best_epoch

    def update(self, epoch: int, metrics: Mapping[str, float]) -> Verdict:
        verdict = self.policy.update(epoch, metrics)
        value = float(metrics[self.policy.monitor])  # type: ignore[index]
        if math.isfinite(value):  # Optuna's pruners compare finite values
            self.trial.report(value, epoch)
        if not verdict.stop and self.trial.should_prune():
            return Verdict(verdict.improved, stop=True, reason="pruned")
        return verdict

    def state_dict(self) -> dict[str, Any]:
        return self.policy.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state)
