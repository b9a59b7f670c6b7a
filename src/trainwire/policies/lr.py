"""Learning-rate policies: what the learning rate is at each optimizer step (or epoch).

Every policy is a thin layer over one of torch's own schedulers, so its values are exactly
torch's. A policy is attached to an optimizer once per run, when the length of the run is
known, and then advanced by the Trainer after each optimizer step and after each epoch; it
acts only on the calls that match its ``interval``.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LinearLR,
    LRScheduler,
    ReduceLROnPlateau,
    SequentialLR,
)

from trainwire.errors import ConfigError

INTERVALS = ("step", "epoch")


class LRPolicy(ABC):
    """Port: moves the optimizer's learning rate over the run."""

    interval: str = "step"

    @abstractmethod
    def attach(self, optimizer: Optimizer, *, steps_per_epoch: int, max_epochs: int) -> None:
        """Called once at the start of fit, before the first batch; builds the schedule.

        Raises ConfigError when the schedule does not fit the run (e.g. warmup too long).
        """

    def after_step(self) -> None:
        """Called after every optimizer step that was taken (not after a skipped one)."""

    def after_epoch(self, metrics: Mapping[str, float]) -> None:
        """Called after each epoch's evaluation, with that epoch's metrics."""

    def state_dict(self) -> dict[str, Any]:
        """The state needed to continue the schedule exactly after a resume."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what ``state_dict`` returned; called after ``attach``.

        ``attach`` was told this run's length, which may be longer than the saved run's (an
        extended run, ADR 0031): a policy planned from the length re-plans for the one attached,
        as if the run had been planned for it from the start.
        """


class _SchedulerPolicy(LRPolicy):
    """A policy backed by one torch LRScheduler, stepped on its ``interval``."""

    def __init__(self, interval: str = "step") -> None:
        if interval not in INTERVALS:
            raise ConfigError(f"lr.interval={interval!r} is not one of {', '.join(INTERVALS)}")
        self.interval = interval
        self._scheduler: LRScheduler | None = None

    def attach(self, optimizer: Optimizer, *, steps_per_epoch: int, max_epochs: int) -> None:
        per_epoch = steps_per_epoch if self.interval == "step" else 1
        self._optimizer, self._total, self._per_epoch = optimizer, per_epoch * max_epochs, per_epoch
        self._scheduler = self._build(optimizer, total=self._total, per_epoch=per_epoch)

    @abstractmethod
    def _build(self, optimizer: Optimizer, *, total: int, per_epoch: int) -> LRScheduler:
        """Builds the scheduler; ``total`` and ``per_epoch`` are counted in ``interval`` units."""

    def after_step(self) -> None:
        if self.interval == "step":
            self._scheduler.step()

    def after_epoch(self, metrics: Mapping[str, float]) -> None:
        if self.interval == "epoch":
            self._scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self._scheduler.state_dict(), "total": self._total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("total", self._total) == self._total:
            self._scheduler.load_state_dict(state["scheduler"])
        else:  # planned for another length (an extended run): this length's schedule, as far on as the saved one
            self._replan(state["scheduler"]["last_epoch"])

    def _replan(self, done: int) -> None:
        """Moves this run's schedule (built by ``attach``) on by ``done`` units, as a run planned for this
        length from the start would have: replayed on a throwaway optimizer, then loaded with its lrs."""
        groups = self._optimizer.param_groups
        shadow = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": group["initial_lr"]}
                                  for group in groups])
        scheduler = self._build(shadow, total=self._total, per_epoch=self._per_epoch)
        shadow.step()  # (no gradient: nothing moves) torch's schedulers expect an optimizer step before their first
        for _ in range(done):
            scheduler.step()
        self._scheduler.load_state_dict(scheduler.state_dict())
        for group, replayed in zip(groups, shadow.param_groups):
            group["lr"] = replayed["lr"]


class Constant(LRPolicy):
    """Keeps the optimizer's learning rate as configured."""

    def attach(self, optimizer: Optimizer, *, steps_per_epoch: int, max_epochs: int) -> None:
        pass


class WarmupCosine(_SchedulerPolicy):
    """Linear warmup from ``start_factor``·lr to lr, then cosine annealing to ``min_lr``.

    The warmup is ``warmup_steps`` optimizer steps, or ``warmup_epochs`` epochs, or else
    ``warmup_ratio`` of the run (rounded down), so a ratio fits a run of any length: the
    packaged preset sets the ratio, and a user's ``warmup_steps`` or ``warmup_epochs`` wins
    over it without any other key set to null. Steps and epochs together are an error, and so
    is an explicit warmup as long as the run.

    With ``w`` warmup units and ``T`` units in the run (units are optimizer steps or epochs,
    per ``interval``), the lr at unit ``k`` is::

        k < w:   lr · (start_factor + (1 - start_factor) · k / w)
        k >= w:  min_lr + (lr - min_lr) · (1 + cos(π · (k - w) / (T - w))) / 2

    so the switch to cosine happens exactly at ``k == w``. Built on torch's ``LinearLR``,
    ``CosineAnnealingLR`` and ``SequentialLR``.
    """

    def __init__(
        self,
        warmup_epochs: int | None = None,
        warmup_steps: int | None = None,
        start_factor: float = 1e-3,
        min_lr: float = 0.0,
        interval: str = "step",
        warmup_ratio: float | None = None,
    ) -> None:
        super().__init__(interval)
        if warmup_ratio is not None and not 0.0 <= warmup_ratio < 1.0:
            raise ConfigError(f"lr.warmup_ratio={warmup_ratio} must be in [0, 1) (a fraction of the run)")
        if warmup_epochs is not None and warmup_steps is not None:
            raise ConfigError(
                f"lr.warmup_epochs={warmup_epochs} and lr.warmup_steps={warmup_steps} are both set; "
                "set one and the other to null"
            )
        for key, value in (("warmup_epochs", warmup_epochs), ("warmup_steps", warmup_steps)):
            if value is not None and value < 0:
                raise ConfigError(f"lr.{key}={value} must be >= 0")
        if warmup_steps is not None and interval == "epoch":
            raise ConfigError(f"lr.warmup_steps={warmup_steps} needs lr.interval=step (it is 'epoch')")
        if not 0.0 < start_factor <= 1.0:
            raise ConfigError(f"lr.start_factor={start_factor} must be in (0, 1]")
        if min_lr < 0:
            raise ConfigError(f"lr.min_lr={min_lr} must be >= 0")
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = warmup_steps
        self.warmup_ratio = warmup_ratio
        self.start_factor = start_factor
        self.min_lr = min_lr

    def _warmup_units(self, per_epoch: int, total: int) -> tuple[int, str]:
        if self.warmup_steps is not None:
            return self.warmup_steps, f"lr.warmup_steps={self.warmup_steps}"
        if self.warmup_epochs is not None:
            return self.warmup_epochs * per_epoch, f"lr.warmup_epochs={self.warmup_epochs}"
        return int((self.warmup_ratio or 0.0) * total), f"lr.warmup_ratio={self.warmup_ratio}"

    def _build(self, optimizer: Optimizer, *, total: int, per_epoch: int) -> LRScheduler:
        check_min_lr(self.min_lr, optimizer)
        warmup, key = self._warmup_units(per_epoch, total)
        if warmup >= total:
            unit = "optimizer steps" if self.interval == "step" else "epochs"
            raise ConfigError(
                f"{key} must be shorter than the run (trainer.max_epochs={total // per_epoch}: {total} {unit})"
            )
        cosine = CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=self.min_lr)
        if warmup == 0:
            return cosine
        linear = LinearLR(optimizer, start_factor=self.start_factor, end_factor=1.0, total_iters=warmup)
        return SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


class CosineWarmRestarts(_SchedulerPolicy):
    """Cosine annealing to ``min_lr`` restarted after T0, then T0·T_mult, T0·T_mult² … units."""

    def __init__(self, T0: int = 10, T_mult: int = 2, min_lr: float = 0.0, interval: str = "epoch") -> None:
        super().__init__(interval)
        if T0 < 1:
            raise ConfigError(f"lr.T0={T0} must be >= 1")
        if T_mult < 1:
            raise ConfigError(f"lr.T_mult={T_mult} must be >= 1")
        self.T0, self.T_mult, self.min_lr = T0, T_mult, min_lr

    def _build(self, optimizer: Optimizer, *, total: int, per_epoch: int) -> LRScheduler:
        check_min_lr(self.min_lr, optimizer)
        return CosineAnnealingWarmRestarts(optimizer, T_0=self.T0, T_mult=self.T_mult, eta_min=self.min_lr)


class ReduceOnPlateau(LRPolicy):
    """Multiplies the lr by ``factor`` when ``monitor`` has not improved for ``patience`` epochs."""

    interval = "epoch"

    def __init__(
        self, monitor: str = "val/loss", mode: str = "min", factor: float = 0.1, patience: int = 5, min_lr: float = 0.0
    ) -> None:
        if not 0.0 < factor < 1.0:
            raise ConfigError(f"lr.factor={factor} must be in (0, 1)")
        if patience < 0:
            raise ConfigError(f"lr.patience={patience} must be >= 0")
        if mode not in ("min", "max"):
            raise ConfigError(f"lr.mode={mode!r} is not one of min, max")
        if min_lr < 0:
            raise ConfigError(f"lr.min_lr={min_lr} must be >= 0")
        self.monitor, self.mode, self.factor, self.patience, self.min_lr = monitor, mode, factor, patience, min_lr
        self._scheduler: ReduceLROnPlateau | None = None

    def attach(self, optimizer: Optimizer, *, steps_per_epoch: int, max_epochs: int) -> None:
        check_min_lr(self.min_lr, optimizer)
        self._scheduler = ReduceLROnPlateau(
            optimizer, mode=self.mode, factor=self.factor, patience=self.patience, min_lr=self.min_lr
        )

    def after_epoch(self, metrics: Mapping[str, float]) -> None:
        if not metrics:  # nothing was measured (an lr preview): nothing to react to
            return
        if self.monitor not in metrics:
            raise ConfigError(f"lr.monitor={self.monitor!r} is not among the metrics: {', '.join(sorted(metrics))}")
        self._scheduler.step(metrics[self.monitor])

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self._scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._scheduler.load_state_dict(state["scheduler"])


def check_min_lr(min_lr: float, optimizer: Optimizer) -> None:
    """Refuses an ``lr.min_lr`` above the optimizer's lr: the schedule would raise the lr, not anneal it."""
    lr = optimizer.param_groups[0]["lr"]
    if min_lr > lr:
        raise ConfigError(f"lr.min_lr={min_lr} is above optimizer.lr={lr}: the schedule would raise the lr")


def preview(policy: LRPolicy, *, lr: float, steps_per_epoch: int, max_epochs: int) -> list[float]:
    """The lr that each optimizer step of a run would use, computed without training.

    Works on a copy of ``policy`` and a throwaway optimizer, so ``policy`` stays unattached.
    Epoch-level policies that need metrics (``ReduceOnPlateau``) see none and stay constant.
    """
    policy = copy.deepcopy(policy)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    policy.attach(optimizer, steps_per_epoch=steps_per_epoch, max_epochs=max_epochs)
    lrs: list[float] = []
    for _ in range(max_epochs):
        for _ in range(steps_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            policy.after_step()
        policy.after_epoch({})
    return lrs


def steps_per_epoch(batches: int, accumulate_steps: int) -> int:
    """Optimizer steps in an epoch of ``batches`` micro-batches (a short last window still steps)."""
    return math.ceil(batches / accumulate_steps)
