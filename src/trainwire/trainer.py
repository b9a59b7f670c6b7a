"""The Trainer: runs the loop, owns the order of events and the counters, and no policy."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch
from torch import nn
from torch.optim import Optimizer

from trainwire.errors import ConfigError
from trainwire.gradients import GradientPolicy, NoClip
from trainwire.hooks import HOOK_EVENTS
from trainwire.lr import Constant, LRPolicy, steps_per_epoch
from trainwire.objectives import Objective
from trainwire.precision import Precision, resolve_device
from trainwire.sinks.base import MetricsSink, NullSink
from trainwire.stopping import NeverStop, StoppingPolicy

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]


@dataclass
class TrainerSettings:
    """How the loop runs; also the schema of the ``trainer`` config group."""

    max_epochs: int = 100
    accumulate_steps: int = 1
    precision: str = "32"
    log_every_n_steps: int = 10
    device: str = "auto"

    def __post_init__(self) -> None:
        for key in ("max_epochs", "accumulate_steps", "log_every_n_steps"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"trainer.{key}={value!r} must be an integer >= 1")


@dataclass
class TrainState:
    """The counters, and what hooks may look at. ``step`` counts optimizer steps taken so far."""

    model: nn.Module
    optimizer: Optimizer
    epoch: int = 0
    step: int = 0
    batch: int = 0


@dataclass
class FitResult:
    """What a run did: per-epoch metrics and the verdict on them."""

    epochs_completed: int
    best_epoch: int | None
    best_value: float | None
    monitor: str | None
    stop_reason: str
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    avg_epoch_time_s: float = 0.0

    @property
    def best_metrics(self) -> dict[str, float]:
        """The metrics of the best epoch (the last epoch when nothing was monitored)."""
        if not self.history:
            return {}
        return self.history[self.best_epoch if self.best_epoch is not None else -1]

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` and the sinks' summaries hold."""
        best_val = {key: value for key, value in self.best_metrics.items() if key.startswith("val/")}
        return {
            "epochs_completed": self.epochs_completed,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "monitor": self.monitor,
            "stop_reason": self.stop_reason,
            "avg_epoch_time_s": self.avg_epoch_time_s,
            "steps": self.steps,
            **best_val,
        }


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: _to_device(value, device) for key, value in batch.items()}
    return batch


def _batch_count(data: Any, name: str) -> int:
    try:
        count = len(data)
    except TypeError:
        raise ConfigError(f"{name} must know its length (a DataLoader over a map-style dataset, or a list)") from None
    if count == 0:
        raise ConfigError(f"{name} is empty (0 batches)")
    return count


class Trainer:
    """Runs ``fit``; every decision inside it is delegated to the injected policies."""

    def __init__(
        self,
        *,
        objective: Objective,
        optimizer: OptimizerFactory,
        settings: TrainerSettings | None = None,
        lr_policy: LRPolicy | None = None,
        stopping_policy: StoppingPolicy | None = None,
        gradient_policy: GradientPolicy | None = None,
        sink: MetricsSink | None = None,
        hooks: Sequence[Any] = (),
        logger: Any = None,
    ) -> None:
        self.objective = objective
        self.optimizer_factory = optimizer
        self.settings = settings or TrainerSettings()
        self.lr_policy = lr_policy or Constant()
        self.stopping = stopping_policy or NeverStop()
        self.gradients = gradient_policy or NoClip()
        self.sink = sink or NullSink()
        self.hooks = list(hooks)
        self.log = logger or structlog.get_logger("trainwire")

    def _emit(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            method = getattr(hook, event, None)
            if method is not None:
                method(*args)

    def fit(self, model: nn.Module, train_data: Iterable[Any], val_data: Iterable[Any] | None = None) -> FitResult:
        """Trains ``model`` on ``train_data`` and returns what happened. The loop, in short::

            for epoch in range(max_epochs):
                for batch in train_data:
                    loss = objective.training_loss(model, batch) / accumulate_steps
                    backward(loss)
                    if at the accumulation boundary:
                        grads = gradient_policy.apply(parameters)   # after unscaling
                        optimizer.step(); lr_policy.after_step(); log every n steps
                metrics = objective.evaluate(model, val_data)        # eval mode, no_grad
                verdict = stopping_policy.update(epoch, metrics)     # keep best weights
                lr_policy.after_epoch(metrics); log; stop if verdict.stop
            restore the best weights; sink.summary(...); sink.finish()
        """
        settings = self.settings
        n_batches = _batch_count(train_data, "train_data")
        if val_data is not None:
            _batch_count(val_data, "val_data")
        elif self.stopping.monitor is not None and self.stopping.monitor.startswith("val/"):
            raise ConfigError(
                f"stopping.monitor={self.stopping.monitor!r} needs validation data, and none was given "
                "(monitor a train/ metric or use stopping=none)"
            )
        device = resolve_device(settings.device)
        precision = Precision(settings.precision, device)
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        self.lr_policy.attach(
            optimizer, steps_per_epoch=steps_per_epoch(n_batches, settings.accumulate_steps),
            max_epochs=settings.max_epochs,
        )
        state = TrainState(model=model, optimizer=optimizer)
        self.sink.start()
        try:
            result = self._run(state, params, precision, train_data, val_data, n_batches)
        except BaseException as error:
            self._emit("on_exception", state, error)
            self.sink.finish("killed" if isinstance(error, KeyboardInterrupt) else "failed")
            raise
        self.sink.summary(result.summary())
        self.sink.finish("finished")
        self.log.info("train_end", **result.summary())
        self._emit("on_train_end", state, result)
        return result

    def _run(self, state, params, precision, train_data, val_data, n_batches) -> FitResult:
        settings, model, optimizer = self.settings, state.model, state.optimizer
        accumulate, log_every = settings.accumulate_steps, settings.log_every_n_steps
        move = (lambda batch: batch) if precision.device.type == "cpu" else (lambda b: _to_device(b, precision.device))
        history: list[dict[str, float]] = []
        best_state: dict[str, torch.Tensor] | None = None
        stop_reason, epoch_times = "max_epochs", []
        self._emit("on_train_start", state)
        model.train()
        for epoch in range(settings.max_epochs):
            state.epoch, started = epoch, time.perf_counter()
            self._emit("on_epoch_start", state)
            losses: list[torch.Tensor] = []  # detached; read once at the end of the epoch
            for index, batch in enumerate(train_data):
                state.batch = index
                window = min(accumulate, n_batches - index // accumulate * accumulate)
                with precision.autocast():
                    loss = self.objective.training_loss(model, move(batch))
                precision.backward(loss if window == 1 else loss / window)
                losses.append(loss.detach())
                self._emit("on_batch_end", state, losses[-1])
                if (index + 1) % accumulate and index + 1 != n_batches:
                    continue
                precision.unscale(optimizer)
                grads = self.gradients.apply(params)
                lr = optimizer.param_groups[0]["lr"]
                taken = precision.step(optimizer)
                optimizer.zero_grad(set_to_none=True)
                if not taken:  # fp16 overflow: the scaler has lowered its scale; the schedule waits
                    continue
                self.lr_policy.after_step()
                state.step += 1
                if state.step % log_every == 0:  # the only per-step device sync, and only here
                    self.sink.log(
                        {
                            "train/loss": torch.stack(losses[-window:]).mean().item(),
                            "train/lr": lr,
                            "train/grad_norm": grads.norm.item(),
                            "train/grad_norm_clipped": grads.clipped_norm.item(),
                        },
                        step=state.step, epoch=epoch,
                    )
            metrics = {"train/epoch_loss": torch.stack(losses).mean().item()}
            if val_data is not None:
                model.eval()
                with torch.no_grad(), precision.autocast():
                    measured = self.objective.evaluate(model, map(move, val_data))
                model.train()
                metrics.update((f"val/{key}", value) for key, value in measured.items())
                self._emit("on_validation_end", state, {k: v for k, v in metrics.items() if k.startswith("val/")})
            verdict = self.stopping.update(epoch, metrics)
            if verdict.improved:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.lr_policy.after_epoch(metrics)
            epoch_times.append(time.perf_counter() - started)
            metrics["time/epoch_s"] = epoch_times[-1]
            history.append(metrics)
            self.sink.log(metrics, step=state.step, epoch=epoch)
            self.log.info("epoch", epoch=epoch, step=state.step, **metrics)
            self._emit("on_epoch_end", state, metrics)
            if verdict.stop:
                stop_reason = verdict.reason or "stopped"
                self.log.info("early_stop", epoch=epoch, reason=stop_reason, monitor=self.stopping.monitor,
                              best_value=self.stopping.best_value, best_epoch=self.stopping.best_epoch)
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        return FitResult(
            epochs_completed=len(history),
            best_epoch=self.stopping.best_epoch,
            best_value=self.stopping.best_value,
            monitor=self.stopping.monitor,
            stop_reason=stop_reason,
            history=history,
            steps=state.step,
            avg_epoch_time_s=math.fsum(epoch_times) / len(epoch_times),
        )
