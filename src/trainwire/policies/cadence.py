"""Checkpoint cadence: which checkpoints to write at a step or an epoch end (the loop writes them).

A policy answers with names (``last``, ``best``, ``epoch-0009``); the loop captures the state
once and the store commits it under all of them. A stop request always writes ``last``,
whatever the cadence says: that is the loop's promise, not a policy's choice. The
``checkpoint`` config group picks the policy (``checkpoint.every_n_steps=500``, ADR 0025).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from trainwire.errors import ConfigError


class CheckpointPolicy(ABC):
    """Port: when to checkpoint."""

    @abstractmethod
    def at_step(self, step: int) -> list[str]:
        """Called after each optimizer step that was taken (``step``: steps so far); names to write now."""

    def next_step(self, step: int) -> int | None:
        """The first step after ``step`` at which ``at_step`` may name a checkpoint; None: none ever.

        The loop asks ``at_step`` only from that step on (and once after the first step, when the
        checkpoint writer prepares its buffers), so a step that saves nothing costs it one comparison
        (issue 22). The default asks at every step; a policy that knows better says so.
        """
        return step + 1

    @abstractmethod
    def at_epoch(self, epoch: int, improved: bool) -> list[str]:
        """Called at the end of each epoch (from 0), after the stopping verdict; names to write now."""


class Cadence(CheckpointPolicy):
    """``last`` every epoch (and every ``every_n_steps`` steps), ``epoch-XXXX`` every ``every_n_epochs``, ``best`` on improvement.

    ``every_n_steps`` None: ``last`` only at epoch ends.
    """

    def __init__(self, every_n_epochs: int = 10, every_n_steps: int | None = None) -> None:
        for key, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if not (value is None and key == "every_n_steps") and (type(value) is not int or value < 1):
                raise ConfigError(f"checkpoint.{key}={value!r} must be an integer >= 1")
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps

    def at_step(self, step: int) -> list[str]:
        return ["last"] if self.every_n_steps and step % self.every_n_steps == 0 else []

    def next_step(self, step: int) -> int | None:
        every = self.every_n_steps
        return None if every is None else (step // every + 1) * every

    def at_epoch(self, epoch: int, improved: bool) -> list[str]:
        periodic = [f"epoch-{epoch:04d}"] if (epoch + 1) % self.every_n_epochs == 0 else []
        return ["last", *periodic, *(["best"] if improved else [])]
