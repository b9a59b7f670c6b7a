"""Metric frequency: cheap validation metrics every epoch, expensive ones every N epochs."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from trainwire.errors import ConfigError
from trainwire.policies.objectives import Objective, Reduce, local


def stated_metrics(objective: Objective) -> tuple[str, ...] | None:
    """The metrics ``objective`` says it reports, when its own class says (a subclass may add some: then None)."""
    return vars(type(objective)).get("metric_names")


class ScheduledMetrics(Objective):
    """Wraps an Objective so that metric ``name`` is reported only every ``every[name]`` epochs.

    ``metrics_due(epoch)`` says which metrics an epoch computes: those listed with
    ``epoch % n == 0`` (epoch 0 computes them all), every unlisted one, and ``loss`` always.
    The Trainer calls ``evaluate`` once per epoch, so the n-th call is epoch n - 1; the count is
    checkpointed (``state_dict``), so a resumed run computes them at the same epochs.
    An objective whose ``evaluate`` takes a ``skip`` keyword gets the listed names that are not
    due and can skip their work (an image, ``samples``, is scheduled the same way); one that
    takes ``only`` gets the listed names that are due, ``loss`` among them (it cannot tell an
    unlisted metric from one not due: prefer ``skip``); with any other the metrics are computed
    and those not due are left out.
    """

    def __init__(self, objective: Objective, every: Mapping[str, int]) -> None:
        for name, n in every.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ConfigError(f"metrics_every.{name}={n!r} must be an integer >= 1")
        names = stated_metrics(objective)
        for name in every if names else ():
            if name not in names:
                nearest = difflib.get_close_matches(name, names, n=1)
                hint = f" (did you mean metrics_every.{nearest[0]}?)" if nearest else ""
                raise ConfigError(f"metrics_every.{name}={every[name]!r}: the objective reports no metric {name!r}{hint}; "
                                  f"its metrics are: {', '.join(names)}")
        if every.get("loss", 1) != 1:
            raise ConfigError(f"metrics_every.loss={every['loss']!r}: the validation loss is computed every epoch")
        self.objective, self.every = objective, dict(every)
        parameters = inspect.signature(objective.evaluate).parameters
        self._passes_skip, self._passes_only = "skip" in parameters, "only" in parameters
        self.evaluations = 0

    def metrics_due(self, epoch: int) -> set[str]:
        """The listed metrics due at ``epoch`` (unlisted metrics are always due)."""
        return {name for name, n in self.every.items() if epoch % n == 0} | {"loss"}

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        return self.objective.training_loss(model, batch)

    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = local) -> dict[str, float]:
        due = self.metrics_due(self.evaluations)
        self.evaluations += 1
        if self._passes_skip:
            return self.objective.evaluate(model, batches, skip=set(self.every) - due, reduce=reduce)
        if self._passes_only:
            return self.objective.evaluate(model, batches, only=due, reduce=reduce)
        measured = self.objective.evaluate(model, batches, reduce=reduce)
        return {name: value for name, value in measured.items() if name not in self.every or name in due}

    def images(self) -> dict[str, Any]:
        return self.objective.images()

    def state_dict(self) -> dict[str, Any]:
        return {"evaluations": self.evaluations}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.evaluations = state.get("evaluations", 0)
