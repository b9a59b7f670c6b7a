"""Hooks: code of the user's that runs at fixed points of the loop.

A hook is any object with some of the methods below (duck typing): the Trainer calls the
ones it has, in the order the hooks were given. Subclassing ``Hook`` is a convenience.
A hook observes; to change a decision, write a policy instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainwire.loop.trainer import FitResult, TrainState

HOOK_EVENTS = (
    "on_train_start",
    "on_epoch_start",
    "on_batch_end",
    "on_validation_end",
    "on_epoch_end",
    "on_train_end",
    "on_exception",
)


def emit(hooks: Sequence[Any], event: str, *args: Any) -> None:
    """Calls ``event`` on each hook that has it, in order (what every loop does at its fixed points)."""
    for hook in hooks:
        method = getattr(hook, event, None)
        if method is not None:
            method(*args)


class Hook:
    """No-op base class listing every event; override the ones you need."""

    def on_train_start(self, state: TrainState) -> None:
        """Once, after the model and optimizer are ready, before the first batch."""

    def on_epoch_start(self, state: TrainState) -> None:
        """Before the first batch of each epoch (``state.epoch`` is the new epoch)."""

    def on_batch_end(self, state: TrainState, loss: Any) -> None:
        """After each micro-batch's step work (at an optimizer-step boundary, after the optimizer step;
        ``state.step`` counts it only afterwards), before it is logged; ``loss`` is detached (reading it syncs).
        Gradients are already cleared at a boundary: to look at them, write a ``GradientPolicy``."""

    def on_validation_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        """After each validation pass, with its ``val/`` metrics."""

    def on_epoch_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        """After each epoch is judged by the stopping policy, with all of its metrics."""

    def on_train_end(self, state: TrainState, result: FitResult) -> None:
        """Once, after the best weights are restored and the sinks summarised."""

    def on_exception(self, state: TrainState, error: BaseException) -> None:
        """When fit is leaving because of an exception (KeyboardInterrupt included)."""
