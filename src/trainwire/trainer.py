"""The Trainer: runs the loop, owns the order of events and the counters, and no policy."""

from __future__ import annotations

import functools
import math
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn
from torch.optim import Optimizer

from trainwire import logs
from trainwire import state as checkpoint_state
from trainwire.checkpoints import CheckpointStore
from trainwire.data import epoch_batches, resumable_sampler
from trainwire.distributed import STRATEGIES, Strategy, make_strategy
from trainwire.errors import ConfigError, NonFiniteError, TrainingInterrupted
from trainwire.gradients import GradientPolicy, NoClip
from trainwire.hooks import emit
from trainwire.lr import Constant, LRPolicy, steps_per_epoch
from trainwire.objectives import Objective
from trainwire.precision import Precision
from trainwire.signals import stop_requests
from trainwire.sinks.base import MetricsSink, NullSink
from trainwire.stopping import NeverStop, StoppingPolicy

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
NONFINITE = ("skip", "raise", "off")


@dataclass
class TrainerSettings:
    """How the loop runs; also the schema of the ``trainer`` config group."""

    max_epochs: int = 100
    accumulate_steps: int = 1
    precision: str = "32"
    log_every_n_steps: int = 10
    device: str = "auto"
    checkpoint_every: int = 10  # epochs between periodic epoch-XXXX.pt (last.pt is written every epoch)
    checkpoint_every_n_steps: Optional[int] = None  # also write last.pt every n optimizer steps
    keep_last: int = 3  # periodic checkpoints kept
    resume: Optional[str] = None  # null, "auto" (newest valid checkpoint, else fresh) or a checkpoint path
    # A non-finite loss or gradient: skip the step, or raise. Checking reads the grad norm on every
    # optimizer step (on CUDA, one device sync a step); "off" checks nothing and never syncs.
    nonfinite: str = "skip"
    max_nonfinite: int = 10  # consecutive skipped steps that end the run
    strategy: str = "single"  # single, ddp or fsdp (several processes: launch with torchrun)

    def __post_init__(self) -> None:
        for key in ("max_epochs", "accumulate_steps", "log_every_n_steps", "checkpoint_every", "keep_last",
                    "max_nonfinite", "checkpoint_every_n_steps"):
            value = getattr(self, key)
            if not (value is None and key == "checkpoint_every_n_steps") and (type(value) is not int or value < 1):
                raise ConfigError(f"trainer.{key}={value!r} must be an integer >= 1")
        if self.nonfinite not in NONFINITE:
            raise ConfigError(f"trainer.nonfinite={self.nonfinite!r} is not one of {', '.join(NONFINITE)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"trainer.strategy={self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.resume is not None and (not isinstance(self.resume, str) or not self.resume.strip()):
            raise ConfigError(f"trainer.resume={self.resume!r} must be null, 'auto' or a checkpoint path")


@dataclass
class TrainState:
    """The counters, and what hooks may look at. ``step`` counts optimizer steps taken so far."""

    model: nn.Module
    optimizer: Optimizer
    module: nn.Module | None = None  # what runs forward: the model, or its DDP/FSDP form
    epoch: int = 0
    step: int = 0
    batch: int = 0
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    bad_steps: int = 0  # of them, how many in a row just now


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
        checkpoints: CheckpointStore | None = None,
        strategy: Strategy | None = None,
        hooks: Sequence[Any] = (),
        logger: Any = None,
    ) -> None:
        self.objective = objective
        self.optimizer_factory = optimizer
        self.settings = settings or TrainerSettings()
        self.lr_policy = lr_policy or Constant()
        self.stopping = stopping_policy or NeverStop()
        self.gradients = gradient_policy or NoClip()
        self.strategy = strategy or make_strategy(self.settings.strategy)
        self.sink = self.strategy.rank0_only(sink or NullSink())  # only rank 0 writes
        self.checkpoints = checkpoints
        self.hooks = list(hooks)
        self.log = logger or logs.get_logger()

    def _emit(self, event: str, *args: Any) -> None:
        emit(self.hooks, event, *args)

    def fit(self, model: nn.Module, train_data: Iterable[Any], val_data: Iterable[Any] | None = None) -> FitResult:
        """Trains ``model`` on ``train_data`` and returns what happened. The loop, in short::

            resume from a checkpoint if trainer.resume says so
            for epoch in range(max_epochs):
                for batch in train_data (from the resumed batch on):
                    loss = objective.training_loss(model, batch) / accumulate_steps
                    backward(loss)
                    if at the accumulation boundary:
                        grads = gradient_policy.apply(parameters)   # after unscaling
                        optimizer.step() unless not finite; lr_policy.after_step(); log every n steps
                        checkpoint every n steps, or now and stop if SIGTERM/SIGINT came
                metrics = objective.evaluate(model, val_data)        # eval mode, no_grad
                verdict = stopping_policy.update(epoch, metrics)     # keep best weights
                lr_policy.after_epoch(metrics); log; checkpoint; stop if verdict.stop
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
        device = self.strategy.device(settings.device)
        precision = Precision(settings.precision, device)
        model.to(device)
        module = self.strategy.setup(model)  # before the optimizer: FSDP replaces the parameters
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        self.lr_policy.attach(
            optimizer, steps_per_epoch=steps_per_epoch(n_batches, settings.accumulate_steps),
            max_epochs=settings.max_epochs,
        )
        state = TrainState(model=model, optimizer=optimizer, module=module)
        # Before the sinks start: a checkpoint that fails verification changes nothing.
        plan = {"max_epochs": settings.max_epochs, "accumulate_steps": settings.accumulate_steps,
                "batches_per_epoch": n_batches}
        progress = checkpoint_state.resume(self, state, precision, plan, resumable_sampler(train_data))
        with stop_requests() as stop:
            self.sink.start()
            try:
                result = self._run(state, params, precision, train_data, val_data, n_batches, progress, stop)
            except BaseException as error:
                self._emit("on_exception", state, error)
                self.sink.finish("killed" if isinstance(error, (KeyboardInterrupt, TrainingInterrupted)) else "failed")
                raise
        self.sink.summary(result.summary())
        self.sink.finish("finished")
        self.log.info("train_end", **result.summary())
        self._emit("on_train_end", state, result)
        return result

    def _save(self, names: list[str], state: TrainState, precision: Precision, progress, train_data) -> None:
        if self.checkpoints is None:
            return
        saved = checkpoint_state.capture(self, state, precision, progress, resumable_sampler(train_data))
        if self.strategy.is_rank0:  # every process captures (FSDP gathers), one writes
            meta = {"epoch": progress.epoch, "batch": progress.batch, "step": state.step}
            self.checkpoints.save(saved, names, meta=meta)

    def _skipped(self, state: TrainState, epoch: int) -> None:
        state.skipped_steps, state.bad_steps = state.skipped_steps + 1, state.bad_steps + 1
        self.sink.log({"train/skipped_steps": state.skipped_steps}, step=state.step, epoch=epoch)
        self.log.warning("nonfinite_step_skipped", epoch=epoch, step=state.step, in_a_row=state.bad_steps)
        if self.settings.nonfinite == "raise":
            raise NonFiniteError(f"non-finite loss or gradients after step {state.step} (trainer.nonfinite=raise)")
        if state.bad_steps >= self.settings.max_nonfinite:
            raise NonFiniteError(f"{state.bad_steps} optimizer steps in a row had a non-finite loss or gradients "
                                 f"(trainer.max_nonfinite={self.settings.max_nonfinite}); stopping")

    def _run(self, state, params, precision, train_data, val_data, n_batches, progress, stop) -> FitResult:
        settings, model, module, optimizer = self.settings, state.model, state.module, state.optimizer
        strategy = self.strategy
        accumulate, log_every = settings.accumulate_steps, settings.log_every_n_steps
        save_every = settings.checkpoint_every_n_steps
        guard = settings.nonfinite != "off"  # a NaN/inf loss makes the gradients non-finite too
        move = (lambda batch: batch) if precision.device.type == "cpu" else (lambda b: _to_device(b, precision.device))
        save = functools.partial(self._save, state=state, precision=precision, progress=progress, train_data=train_data)
        self._emit("on_train_start", state)
        model.train()
        for epoch in range(progress.epoch, settings.max_epochs if progress.stop_reason is None else 0):
            state.epoch, started, skip = epoch, time.perf_counter(), progress.batch
            self._emit("on_epoch_start", state)
            losses = progress.epoch_losses  # detached; read once at the end of the epoch
            for index, batch in enumerate(epoch_batches(train_data, epoch, skip), start=skip):
                state.batch = index
                window = min(accumulate, n_batches - index // accumulate * accumulate)
                with precision.autocast():
                    loss = self.objective.training_loss(module, move(batch))
                precision.backward(loss if window == 1 else loss / window)
                losses.append(loss.detach())
                self._emit("on_batch_end", state, losses[-1])
                if (index + 1) % accumulate and index + 1 != n_batches:
                    continue
                precision.unscale(optimizer)
                grads = self.gradients.apply(params)
                lr = optimizer.param_groups[0]["lr"]
                taken = precision.step(optimizer, grads if guard else None)  # skips non-finite gradients
                optimizer.zero_grad(set_to_none=True)
                progress.batch = index + 1
                if taken:
                    self.lr_policy.after_step()
                    state.step, state.bad_steps = state.step + 1, 0
                    if state.step % log_every == 0:  # the only per-step device sync besides `taken`, and only here
                        self.sink.log(
                            {
                                "train/loss": strategy.mean(torch.stack(losses[-window:]).mean()),
                                "train/lr": lr,
                                "train/grad_norm": grads.norm.item(),
                                "train/grad_norm_clipped": grads.clipped_norm.item(),
                            },
                            step=state.step, epoch=epoch,
                        )
                else:  # non-finite, or fp16 overflow (the scaler has lowered its scale): the schedule waits
                    self._skipped(state, epoch)
                stopping = strategy.any(stop.signum is not None)  # every process stops at the same step
                if stopping or (taken and save_every and state.step % save_every == 0):
                    save(["last"])
                    if stopping:
                        raise TrainingInterrupted(stop.signum or signal.SIGTERM, saved=self.checkpoints is not None)
            metrics = {"train/epoch_loss": strategy.mean(torch.stack(losses).mean())}
            if val_data is not None:
                model.eval()
                with torch.no_grad(), precision.autocast():
                    measured = self.objective.evaluate(module, map(move, val_data), reduce=strategy.reduce)
                model.train()
                metrics.update((f"val/{key}", value) for key, value in measured.items())
                self._emit("on_validation_end", state, {k: v for k, v in metrics.items() if k.startswith("val/")})
            verdict = strategy.broadcast(self.stopping.update(epoch, metrics))  # rank 0 decides for every process
            if verdict.improved:
                progress.best_model = strategy.model_state(model)
            self.lr_policy.after_epoch(metrics)
            metrics["time/epoch_s"] = time.perf_counter() - started
            metrics["train/skipped_steps"] = state.skipped_steps
            progress.history.append(metrics)
            self.sink.log(metrics, step=state.step, epoch=epoch)
            self.log.info("epoch", epoch=epoch, step=state.step, **metrics)
            self._emit("on_epoch_end", state, metrics)
            progress.epoch, progress.batch, progress.epoch_losses = epoch + 1, 0, []
            progress.stop_reason = (verdict.reason or "stopped") if verdict.stop else None
            periodic = [f"epoch-{epoch:04d}"] if (epoch + 1) % settings.checkpoint_every == 0 else []
            stopping = strategy.any(stop.signum is not None)
            save(["last", *periodic, *(["best"] if verdict.improved else [])])
            if stopping:
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, saved=self.checkpoints is not None)
            if verdict.stop:
                self.log.info("early_stop", epoch=epoch, reason=progress.stop_reason, monitor=self.stopping.monitor,
                              best_value=self.stopping.best_value, best_epoch=self.stopping.best_epoch)
                break
        if progress.best_model is not None:
            strategy.load_model_state(model, progress.best_model)
        history = progress.history
        return FitResult(
            epochs_completed=len(history),
            best_epoch=self.stopping.best_epoch,
            best_value=self.stopping.best_value,
            monitor=self.stopping.monitor,
            stop_reason=progress.stop_reason or "max_epochs",
            history=history,
            steps=state.step,
            avg_epoch_time_s=math.fsum(h["time/epoch_s"] for h in history) / max(len(history), 1),
        )
