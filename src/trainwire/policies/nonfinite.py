"""Non-finite policies: what a run does when an optimizer step meets a NaN/inf loss or gradient.

The step decides, per optimizer step, whether the update was applied (a non-finite gradient
is never stepped past when the policy ``checks``); the policy answers what that means for the
run: go on (counting it), or stop with ``NonFiniteError``. Its counters are checkpointed.
The ``nonfinite`` config group picks one (``nonfinite=raise``, ``nonfinite.max_in_a_row=3``);
each constructor's signature is its option's schema (ADR 0025).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from trainwire.errors import ConfigError, NonFiniteError


class NonFinitePolicy(ABC):
    """Port: judges each optimizer step that was not taken. ``skipped`` counts them over the run."""

    checks: bool = True  # whether steps read their gradients' finiteness (on CUDA, one device sync a step)

    def __init__(self) -> None:
        self.skipped = 0  # steps not taken, over the whole run
        self.in_a_row = 0

    def taken(self) -> None:
        """Called after an optimizer step that was applied and ends a run of skipped ones (``in_a_row`` > 0).

        Not on every applied step: with nothing skipped there is nothing to reset, and the loop
        pays no call for it (issue 22).
        """
        self.in_a_row = 0

    @abstractmethod
    def not_taken(self, step: int) -> None:
        """Called after an optimizer step that was skipped (``step``: steps taken so far); raises NonFiniteError to stop."""

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped, self.in_a_row = state["skipped"], state["in_a_row"]

    def _count(self) -> None:
        self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1


class SkipNonFinite(NonFinitePolicy):
    """Skips the update (and the LR schedule's step); stops after ``max_in_a_row`` skipped steps in a row."""

    def __init__(self, max_in_a_row: int = 10) -> None:
        if type(max_in_a_row) is not int or max_in_a_row < 1:
            raise ConfigError(f"nonfinite.max_in_a_row={max_in_a_row!r} must be an integer >= 1")
        super().__init__()
        self.max_in_a_row = max_in_a_row

    def not_taken(self, step: int) -> None:
        self._count()
        if self.in_a_row >= self.max_in_a_row:
            raise NonFiniteError(f"{self.in_a_row} optimizer steps in a row had a non-finite loss or gradients "
                                 f"(nonfinite.max_in_a_row={self.max_in_a_row}); stopping")


class RaiseOnNonFinite(NonFinitePolicy):
    """Stops at the first non-finite step, its update not applied."""

    def not_taken(self, step: int) -> None:
        self._count()
        raise NonFiniteError(f"non-finite loss or gradients after step {step} (nonfinite=raise)")


class IgnoreNonFinite(NonFinitePolicy):
    """Checks nothing, so never syncs for it; only an fp16 grad scaler can still skip a step (it is counted)."""

    checks = False

    def not_taken(self, step: int) -> None:
        self._count()
