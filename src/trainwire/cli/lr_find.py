"""The LR range test (``trainwire lr-find``): the run's own step, under an lr that grows exponentially each step.

Nothing here loops over data: a ``Trainer`` built from the run's config fits a fresh copy of
the model with the supervised step's LR policy replaced by ``ExponentialRamp``, no validation,
no checkpoint store and no sink but ``RangeTestRecord``, which keeps each step's lr and loss and
ends the test through the run's ``StopToken`` once the loss diverges or the steps are done. So
precision, gradient policy, accumulation and DDP are those of ``trainwire train`` (under DDP
every process stops at the same step; the record, like every sink, is rank 0's), and the run
folder's checkpoints are never opened.

The suggestion is the lr at the smoothed loss's minimum divided by ten: the loss is still
falling fast there and far from the divergence that follows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from trainwire.errors import ConfigError, TrainingInterrupted
from trainwire.loop.signals import StopToken
from trainwire.policies.lr import LRPolicy
from trainwire.sinks.base import MetricsSink


class ExponentialRamp(LRPolicy):
    """lr at optimizer step k = ``start_lr`` · (``end_lr`` / ``start_lr``)^(k / (``steps`` − 1)), every param group."""

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100) -> None:
        if not 0 < start_lr < end_lr:
            raise ConfigError(f"lr-find --start-lr={start_lr:g} and --end-lr={end_lr:g} need 0 < start < end")
        if type(steps) is not int or steps < 2:
            raise ConfigError(f"lr-find --steps={steps!r} must be an integer >= 2")
        self.start_lr, self.end_lr, self.steps = start_lr, end_lr, steps
        self.step = 0

    def lr(self, step: int) -> float:
        """The lr of optimizer step ``step`` (from 0)."""
        return self.start_lr * (self.end_lr / self.start_lr) ** (step / (self.steps - 1))

    def attach(self, optimizer: Optimizer, *, steps_per_epoch: int, max_epochs: int) -> None:
        self.optimizer, self.step = optimizer, 0
        self._apply()

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.step)

    def after_step(self) -> None:
        self.step += 1
        self._apply()

    def after_epoch(self, metrics: Mapping[str, float]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = state["step"]


class RangeTestRecord(MetricsSink):
    """Keeps the lr and loss of every optimizer step; stops the test once the loss diverges or ``steps`` are recorded.

    Diverged: the smoothed loss (an exponential moving average, bias-corrected) exceeds
    ``diverge`` times its lowest value so far, or a step's loss or gradient is not finite.
    The stop goes through ``stop`` (the run's StopToken), so the loop ends it at this very step.
    """

    def __init__(self, stop: StopToken, *, steps: int, diverge: float = 4.0, smoothing: float = 0.9) -> None:
        if not diverge > 1:
            raise ConfigError(f"lr-find --diverge={diverge:g} must be > 1")
        self.stop, self.steps, self.diverge, self.smoothing = stop, steps, diverge, smoothing
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.reason: str | None = None
        self._ema = 0.0

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        if set(metrics) == {"train/skipped_steps"}:  # the loop's line for a non-finite step
            self._end("diverged")
        if "train/loss" not in metrics or "train/lr" not in metrics or self.reason is not None:
            return
        loss = float(metrics["train/loss"])
        self.lrs.append(float(metrics["train/lr"]))
        self.losses.append(loss)
        self._ema = self.smoothing * self._ema + (1 - self.smoothing) * loss
        average = self._ema / (1 - self.smoothing ** len(self.losses))  # bias-corrected: the EMA starts at 0
        self.smoothed.append(average)
        if not math.isfinite(average) or average > self.diverge * min(self.smoothed):
            self._end("diverged")
        elif len(self.losses) >= self.steps:
            self._end("steps")

    def _end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.stop.stop()

    def suggestion(self) -> float:
        """The lr at the smoothed loss's minimum, divided by 10."""
        if len(self.smoothed) < 3:
            raise ValueError(f"lr-find recorded {len(self.smoothed)} steps; too few to suggest an lr "
                             "(lower --start-lr, or raise --steps)")
        best = min(range(len(self.smoothed)), key=self.smoothed.__getitem__)
        return self.lrs[best] / 10


@dataclass
class LRFindResult:
    """What the range test saw: the lr and loss of each step, the smoothed loss, why it ended, the suggestion."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    reason: str  # diverged, steps or epochs (the data ran out first)
    suggestion: float
    is_rank0: bool = True


def lr_find(cfg: Any, *, steps: int = 100, start_lr: float = 1e-7, end_lr: float = 10.0,
            diverge: float = 4.0) -> LRFindResult:
    """Runs the LR range test on the config's model, data, objective, optimizer and step; trains nothing that is kept.

    ``cfg`` is a composed config or a built container. The model is a fresh one built from the
    config (as ``trainwire train`` would build it), seeded with ``seed`` in a forked RNG.
    Raises ConfigError for a paradigm whose step is not the supervised one (the GAN's two
    optimizers, LightGBM's boosting rounds).
    """
    from dependency_injector import providers
    from dependency_injector.containers import Container

    from trainwire.containers import build_container
    from trainwire.loop.steps import SupervisedStep
    from trainwire.policies.stopping import NeverStop

    container = cfg if isinstance(cfg, Container) else build_container(cfg)
    token = StopToken()
    ramp = ExponentialRamp(start_lr, end_lr, steps)
    record = RangeTestRecord(token, steps=steps, diverge=diverge)
    strategy = container.strategy()
    strategy.start()  # before the data: the loaders are sharded by rank
    loaders = container.data()
    settings = container.settings()
    per_epoch = math.ceil(len(loaders.train) / settings.accumulate_steps)
    overrides = {
        container.lr_policy: providers.Object(ramp),
        container.sink: providers.Object(record),
        container.checkpoint_store: providers.Object(None),  # the run folder's checkpoints are never opened
        container.stopping_policy: providers.Factory(NeverStop),
        container.hooks: providers.List(),
        container.run_dir: providers.Object(None),  # nothing is written to a run folder (a Pretrain saves no encoder)
        container.settings: providers.Object(dataclasses.replace(
            settings, max_epochs=math.ceil(steps / per_epoch), log_every_n_steps=1, resume=None,
            grad_monitor=False)),  # a range test explodes on purpose
    }
    for provider, replacement in overrides.items():
        provider.override(replacement)
    try:
        trainer = getattr(container.paradigm(), "trainer", None)  # the paradigm's trainer: its step is the paradigm's
        if trainer is None or not isinstance(trainer.step, SupervisedStep):
            step = container.config.step().get("type", "custom")
            raise ConfigError(f"lr-find ramps the lr of the supervised step; step={step} has "
                              f"{type(getattr(trainer, 'step', None)).__name__} (use step=supervised)")
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(container.config.seed())
            model = container.model()
            try:
                trainer.fit(model, loaders.train, None, stop=token)
            except TrainingInterrupted as interrupted:
                if interrupted.signum is not None:  # a real SIGTERM/SIGINT, not the test's own stop
                    raise
    finally:
        for provider in overrides:
            provider.reset_override()
    strategy.teardown()
    if not strategy.is_rank0:
        return LRFindResult([], [], [], record.reason or "steps", float("nan"), is_rank0=False)
    return LRFindResult(record.lrs, record.losses, record.smoothed, record.reason or "epochs",
                        record.suggestion())
