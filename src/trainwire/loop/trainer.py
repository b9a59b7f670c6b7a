"""The Trainer: runs the one loop, owns the order of events and the counters, and no policy."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from trainwire import logs
from trainwire.checkpointing.initial import load_initial_weights
from trainwire.checkpointing.parts import Position, restores
from trainwire.checkpointing.session import Checkpointing
from trainwire.checkpointing.store import CheckpointStore
from trainwire.data import epoch_batches, not_resumable
from trainwire.data.reading import read
from trainwire.errors import ConfigError, DataError, NonFiniteError, TrainingInterrupted
from trainwire.loop.hooks import emit
from trainwire.loop.settings import TrainerSettings, gradient_health
from trainwire.loop.signals import StopToken, stop_requests
from trainwire.loop.steps import OptimizerFactory, Step, StepContext, SupervisedStep
from trainwire.policies.cadence import Cadence, CheckpointPolicy
from trainwire.policies.gradients import GradientPolicy
from trainwire.policies.lr import LRPolicy
from trainwire.policies.nonfinite import NonFinitePolicy, SkipNonFinite
from trainwire.policies.objectives import Objective
from trainwire.policies.stopping import NeverStop, StoppingPolicy
from trainwire.runtime.compiling import Compiler
from trainwire.runtime.distributed import Strategy, auto_strategy
from trainwire.runtime.health import GradientHealth
from trainwire.runtime.precision import Precision
from trainwire.runtime.throughput import Throughput
from trainwire.sinks.base import MetricsSink, NullSink

__all__ = ["FitResult", "OptimizerFactory", "TrainState", "Trainer", "TrainerSettings"]


@dataclass
class TrainState:
    """What hooks may look at. ``step`` counts optimizer steps taken so far; ``batch`` is the batch just run."""

    model: nn.Module
    optimizer: Optimizer
    module: nn.Module | None = None  # what runs forward: the model, or its DDP/FSDP form
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
    history: list[dict[str, float]] = field(default_factory=list)  # one row an epoch: ``epoch`` (from 0), its metrics
    steps: int = 0
    avg_epoch_time_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # flagged gradient steps, recompilations
    notes: list[str] = field(default_factory=list)  # what the user should know about the run (data not resumable)
    checkpoint_wait_s: float = 0.0  # time the loop waited for a checkpoint still being written (ADR 0009)
    checkpoint_waits: int = 0  # saves that had to wait for the one before
    extended_from: dict[str, Any] = field(default_factory=dict)  # plan key -> first planned value (ADR 0031)
    # The verdict: finished, failed (``error``: its first line), interrupted (SIGTERM/SIGINT) or cancelled
    # (``StopToken.stop()``); ``resumable``: whether a checkpoint to continue from exists after a stop.
    status: str = "finished"
    error: str | None = None
    resumable: bool | None = None
    test: dict[str, float] = field(default_factory=dict)  # ``test/<metric>`` of the best weights (ADR 0034)

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
            "status": self.status,
            **({"error": self.error} if self.error is not None else {}),
            **({"resumable": self.resumable} if self.resumable is not None else {}),
            "epochs_completed": self.epochs_completed,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "monitor": self.monitor,
            "stop_reason": self.stop_reason,
            "avg_epoch_time_s": self.avg_epoch_time_s,
            "steps": self.steps,
            **self.counts,
            **({"notes": list(self.notes)} if self.notes else {}),
            **({"extended_from": dict(self.extended_from)} if self.extended_from else {}),
            "checkpoint/wait_s": self.checkpoint_wait_s,
            "checkpoint/waits": self.checkpoint_waits,
            **best_val,
            **self.test,
        }


def _one_line(error: BaseException) -> str:
    """``error`` as one line for a summary: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _batch_count(data: Any, name: str) -> int:
    try:
        count = len(data)
    except TypeError:
        raise ConfigError(f"{name} must know its length (a DataLoader over a map-style dataset, or a list)") from None
    if count == 0:
        raise ConfigError(f"{name} is empty (0 batches)")
    return count


class Trainer:
    """Runs ``fit``; every decision inside it is delegated to the injected step and policies.

    ``step`` is what one batch does to the weights; without one, ``objective``, ``optimizer``,
    ``lr_policy`` and ``gradient_policy`` make the ``SupervisedStep``. Each part left out is its
    config group's default option, built with its own defaults: ``SkipNonFinite()``,
    ``Cadence()``, the ``auto`` strategy; ``health`` (the gradient monitor and watch) is what
    ``settings`` name.
    """

    def __init__(
        self,
        *,
        objective: Objective,
        optimizer: OptimizerFactory | None = None,
        settings: TrainerSettings | None = None,
        step: Step | None = None,
        lr_policy: LRPolicy | None = None,
        stopping_policy: StoppingPolicy | None = None,
        gradient_policy: GradientPolicy | None = None,
        nonfinite: NonFinitePolicy | None = None,
        checkpoint_policy: CheckpointPolicy | None = None,
        health: GradientHealth | None = None,
        sink: MetricsSink | None = None,
        checkpoints: CheckpointStore | None = None,
        strategy: Strategy | None = None,
        hooks: Sequence[Any] = (),
        logger: Any = None,
        test_data: Iterable[Any] | None = None,
    ) -> None:
        if (step is None) == (optimizer is None):
            raise ConfigError("Trainer takes either step= or optimizer= (which makes the supervised step), not both")
        self.objective = objective
        self.settings = settings = settings or TrainerSettings()
        self.strategy = strategy or auto_strategy()
        self.step = step or SupervisedStep(objective, optimizer, lr_policy, gradient_policy)
        self.step.check(settings, self.strategy)
        self.stopping = stopping_policy or NeverStop()
        self.nonfinite = nonfinite or SkipNonFinite()
        self.cadence = checkpoint_policy or Cadence()
        self.health = health or gradient_health(settings)
        if self.health.every is not None and self.strategy.name == "fsdp":
            raise ConfigError("trainer.watch_every_n_steps needs whole parameters; under strategy=fsdp they "
                              "are sharded (set it to null)")
        self.sink = self.strategy.rank0_only(sink or NullSink())  # only rank 0 writes
        self.checkpoints = checkpoints  # one ``Checkpointing`` per fit saves through it
        self.hooks = list(hooks)
        self.log = logger or logs.get_logger()
        self.test_data = test_data  # scored once with the best weights when training finishes (ADR 0034)

    def _emit(self, event: str, *args: Any) -> None:
        emit(self.hooks, event, *args)

    def fit(self, model: nn.Module, train_data: Iterable[Any], val_data: Iterable[Any] | None = None, *,
            stop: StopToken | None = None) -> FitResult:
        """Trains ``model`` on ``train_data`` and returns what happened. The loop, in short::

            compile what runs forward if trainer.compile says so (before the step builds its optimizers)
            checkpointing.resume(): restore every stateful part if trainer.resume says so
            for epoch in range(max_epochs):
                for batch in train_data (from the resumed batch on):
                    result = step.train_step(module, batch)   # objective, backward, gradients (told to the
                                                              # gradient health), optimizer, lr; FLOPs counted once
                    at each counted optimizer step: non-finite policy; log every n steps;
                    checkpointing.at_step()   # as the cadence says, or `last` and stop if a stop was asked for
                metrics = throughput of the epoch's training
                metrics += objective.evaluate(model, val_data)       # eval mode, no_grad
                step.end_epoch(metrics)                              # train metrics, lr policies
                verdict = stopping_policy.update(epoch, metrics)     # keep best weights
                log; checkpointing.at_epoch(); stop if asked or if verdict.stop
            restore the best weights; checkpointing.close(); sink.summary(...); sink.finish()

        ``stop`` is a ``StopToken``: ``stop.stop()`` from any thread ends the run at its next
        optimizer step, with ``last.pt`` written there; SIGTERM/SIGINT in the main thread set it.
        """
        settings, strategy = self.settings, self.strategy
        n_batches = self._check_data(train_data, val_data)
        precision, module = self._place(model)
        token = stop if stop is not None else StopToken()
        context = StepContext(strategy, precision, self.nonfinite.checks, n_batches, settings.max_epochs,
                              settings.accumulate_steps, self.objective, train_data, val_data, token, self.log,
                              self.health)
        position = Position()  # where the loop is: restored with the other parts
        checkpointing = Checkpointing(self.checkpoints, self.cadence, strategy, token, self.log,
                                      asynchronous=settings.async_checkpoint, record=self.sink)
        checkpointing.hold(model, self.step.setup(model, context), precision=precision, stopping=self.stopping,
                           nonfinite=self.nonfinite, objective=self.objective, throughput=self._meter,
                           gradient_health=self.health, train_data=train_data, position=position, hooks=self.hooks,
                           plan=self._plan(n_batches))  # after the step's setup has built its optimizers
        resumed = checkpointing.resume(settings.resume)  # before the sinks start: a refusal changes nothing
        state = TrainState(model=model, optimizer=self.step.optimizer, module=module, epoch=position.epoch,
                           step=position.step)
        self.health.start(model, position, self.sink, self.log)
        with stop_requests(token):
            self.sink.start()
            if self._compiler is not None:
                self._compiler.listen()
            try:
                self.step.start(model, resumed=resumed is not None)
                result = self._loop(state, position, checkpointing, precision, train_data, val_data)
                checkpointing.close()  # the last save is committed (or its failure raised) before fit returns
                result.checkpoint_wait_s, result.checkpoint_waits = checkpointing.waited_s, checkpointing.waits
                result.test = self._test(state, precision)  # the best weights, restored by the loop (ADR 0034)
            except BaseException as error:
                checkpointing.close(error)
                self._emit("on_exception", state, error)
                self._not_finished(state, position, error)
                raise
            finally:
                if self._compiler is not None:
                    self._compiler.stop()
        failure = self._no_step(result)  # the record says so, and the run is not a success
        self.sink.summary(result.summary())
        self.sink.finish(result.status)
        if failure is not None:
            raise failure
        self.log.info("train_end", **result.summary())
        self._emit("on_train_end", state, result)
        return result

    def _check_data(self, train_data: Any, val_data: Any) -> int:
        """Refuses data the run cannot use, before any work; returns the batches of an epoch."""
        n_batches = _batch_count(train_data, "train_data")
        accumulate = self.settings.accumulate_steps
        if accumulate > n_batches:
            raise ConfigError(f"trainer.accumulate_steps={accumulate} is more than the "
                              f"{n_batches} batches of an epoch (data.batch_size): no window would fill")
        self._unrestorable = unrestorable = not_resumable(train_data)  # a note in the result
        if unrestorable:  # said once, at the start and in the summary, rather than resumed inexactly in silence
            self.log.warning("data_order_not_resumable", reason=unrestorable)
        if val_data is not None:
            _batch_count(val_data, "val_data")
        elif self.stopping.monitor is not None and self.stopping.monitor.startswith("val/"):
            raise ConfigError(
                f"stopping.monitor={self.stopping.monitor!r} needs validation data, and none was given "
                "(monitor a train/ metric or use stopping=none)"
            )
        return n_batches

    def _plan(self, n_batches: int) -> dict[str, Any]:
        """What a checkpoint must have been planned with for this run to resume it (config key -> value)."""
        return {"trainer.max_epochs": self.settings.max_epochs, "trainer.accumulate_steps": self.settings.accumulate_steps,
                "batches per epoch (data.batch_size)": n_batches, **self.step.plan()}

    def _place(self, model: nn.Module, *, initial: bool = True) -> tuple[Precision, nn.Module]:
        """Loads ``trainer.init_from``'s weights, moves ``model`` to its device, makes what runs forward (the
        strategy's form, compiled if asked) and starts the throughput meter there.

        All before the step builds its optimizers: FSDP replaces the parameters, and the compiled
        module shares them (the checkpoint keeps the plain model's keys).
        """
        settings = self.settings
        # A new run's first weights, into the plain module before any strategy wraps it; not when a checkpoint
        # will be restored (its weights win, and the source need not be there any more).
        if initial and settings.init_from is not None and not restores(settings.resume, self.checkpoints):
            load_initial_weights(model, settings.init_from, strict=settings.init_strict, log=self.log)
        precision = Precision(self.settings.precision, self.strategy.device(self.settings.device))
        self.log.info("model", parameters=sum(p.numel() for p in model.parameters()),  # what trains, and where
                      trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                      device=str(precision.device), precision=precision.precision)
        model.to(precision.device)
        module = self.strategy.setup(model)
        self._compiler = Compiler(self.settings.compile_mode) if self.settings.compile else None
        if self._compiler is not None:
            module = self.step.compile(module, self._compiler)
        self._meter = Throughput(self.settings.peak_tflops)  # the run's throughput, on that device
        self._meter.start(precision.device, self.strategy.world_size)
        self._unchecked = True  # the fit's first batch is checked before it trains
        return precision, module

    def _batches(self, model: nn.Module, train_data: Iterable[Any], epoch: int, skip: int, move: Any,
                 precision: Precision) -> Iterator[tuple[int, Any]]:
        """Epoch ``epoch``'s batches from ``skip`` on, numbered and on the device; the fit's first one is
        checked by the objective before it trains. DataError when an epoch gives no batch from its start."""
        index = -1
        for index, batch in enumerate(read(epoch_batches(train_data, epoch, skip), "train", skip), start=skip):
            batch = move(batch)
            if self._unchecked:
                self._check_batch(model, batch, index, precision)
                self._unchecked = False
            yield index, batch
        if index < 0 and skip == 0:  # (a resume at an epoch's last batch has none left, rightly)
            raise DataError(f"data (train split, epoch {epoch}): the training data gave no batch "
                            f"(its length says {len(train_data)}): no optimizer step can be taken")

    def _check_batch(self, model: nn.Module, batch: Any, index: int, precision: Precision) -> None:
        """The objective's check of one batch (eval mode, no_grad: no running statistics or random draws
        change, so a resumed run stays exact); raises DataError (exit 2) with the objective's line."""
        if not self.step.checks_first_batch:
            return
        model.eval()
        try:
            with torch.no_grad(), precision.autocast():
                problem = self.objective.check_batch(model, batch)
        finally:
            model.train()
        if problem:
            raise DataError(f"data (train split, batch {index}): {problem}", exit_code=2)

    def _not_taken(self, state: TrainState) -> None:
        self.sink.log({"train/skipped_steps": self.nonfinite.skipped + 1}, step=state.step, epoch=state.epoch)
        self.log.warning("nonfinite_step_skipped", epoch=state.epoch, step=state.step,
                         in_a_row=self.nonfinite.in_a_row + 1)
        self.nonfinite.not_taken(state.step)  # the policy counts it, and may stop the run

    def evaluate(self, model: nn.Module, data: Iterable[Any], *, split: str = "val") -> dict[str, float]:
        """The objective's metrics of ``model`` as it is over ``data``, as ``<split>/<name>``: the validation
        pass of ``fit`` on its own (``trainwire evaluate``). The model is placed as ``fit`` places it, its
        weights as they are (``trainer.init_from`` is for a fit's start)."""
        precision, module = self._place(model, initial=False)
        model.eval()
        return self._measure(module, data, self.strategy.mover(precision.device), precision, split)

    def _test(self, state: TrainState, precision: Precision) -> dict[str, float]:
        """The test split's metrics of the weights the loop left (the best), logged as one ``test/`` row; none
        without a test split."""
        if self.test_data is None:
            return {}
        state.model.eval()
        metrics = self._measure(state.module, self.test_data, self.strategy.mover(precision.device), precision, "test")
        state.model.train()
        self.sink.log(metrics, step=state.step, epoch=state.epoch)
        return metrics

    def _measure(self, module: nn.Module, data: Iterable[Any], move: Any, precision: Precision,
                 split: str) -> dict[str, float]:
        """One pass of the objective's ``evaluate`` over ``data`` (the model in eval mode), under no_grad."""
        with torch.no_grad(), precision.autocast():
            measured = self.objective.evaluate(module, map(move, read(data, split)), reduce=self.strategy.reduce)
        return {f"{split}/{key}": value for key, value in measured.items()}

    def _validate(self, state: TrainState, val_data, move, precision: Precision) -> dict[str, float]:
        """The objective's metrics over the validation data (eval mode, no_grad), as ``val/<name>``."""
        state.model.eval()
        metrics = self._measure(state.module, val_data, move, precision, "val")
        state.model.train()
        for key, image in self.objective.images().items():  # generated samples, for image-capable sinks
            self.sink.log_image(f"val/{key}", image, step=state.step, epoch=state.epoch)
        self._emit("on_validation_end", state, dict(metrics))
        return metrics

    def _loop(self, state: TrainState, position: Position, checkpointing: Checkpointing, precision: Precision,
              train_data: Iterable[Any], val_data: Iterable[Any] | None) -> FitResult:
        """The epochs and their batches, as ``fit``'s docstring shows them; returns what the run did."""
        settings, step, model, module, meter = self.settings, self.step, state.model, state.module, self._meter
        log_every, move, stop, nonfinite = settings.log_every_n_steps, self.strategy.mover(precision.device), \
            checkpointing.stop, self.nonfinite
        batch_ends = [hook.on_batch_end for hook in self.hooks if getattr(hook, "on_batch_end", None) is not None]
        self._emit("on_train_start", state)
        checkpointing.at_start()  # a token stopped before the run stops it before the first step
        model.train()
        for epoch in range(position.epoch, settings.max_epochs if position.stop_reason is None else 0):
            state.epoch, started, skip, first_step = epoch, time.perf_counter(), position.batch, state.step
            self._emit("on_epoch_start", state)
            meter.start_epoch()
            for index, batch in self._batches(model, train_data, epoch, skip, move, precision):
                state.batch = index  # a fresh run's first optimizer step runs under the meter: FLOPs counted once
                result = step.train_step(module, batch, index) if meter.counted else \
                    meter.count(step.train_step, module, batch, index)
                meter.batch(batch)
                for on_batch_end in batch_ends:  # (looked up once: the only event that runs every batch)
                    on_batch_end(state, result.loss)
                if not result.counted:
                    continue
                position.batch = index + 1
                if result.taken:
                    if nonfinite.in_a_row:  # a run of skipped steps ends: the policy's only bookkeeping
                        nonfinite.taken()
                    position.step = state.step = state.step + 1
                    if state.step % log_every == 0:  # the only per-step host reads besides the finite check
                        self.sink.log(step.log_values(), step=state.step, epoch=epoch)
                        self.health.judge()
                else:  # non-finite, or fp16 overflow (the scaler has lowered its scale): the schedule waits
                    self._not_taken(state)
                if state.step >= checkpointing.due or stop.asked:  # else nothing to save, stop or raise here
                    checkpointing.at_step(state.step, result.taken)
            verdict = self._end_epoch(state, position, precision, move, val_data, started, first_step)
            checkpointing.at_epoch(epoch, verdict.improved)
            if verdict.stop:
                self.log.info("early_stop", epoch=epoch, reason=position.stop_reason, monitor=self.stopping.monitor,
                              best_value=self.stopping.best_value, best_epoch=self.stopping.best_epoch)
                break
        if position.best_model is not None:
            self.strategy.load_model_state(model, position.best_model)
        return self._result(state, position)

    def _end_epoch(self, state: TrainState, position: Position, precision: Precision, move: Any,
                   val_data: Iterable[Any] | None, started: float, first_step: int) -> Any:
        """Measures, validates and judges the epoch just trained, logs it, and moves ``position`` past it.

        Returns the stopping policy's verdict (rank 0's, on every process).
        """
        epoch, model = state.epoch, state.model
        metrics = self._meter.end_epoch(state.step - first_step)  # training alone: before validation
        self.health.judge()
        if val_data is not None:
            metrics.update(self._validate(state, val_data, move, precision))
        self.step.end_epoch(model, metrics)
        verdict = self.strategy.broadcast(self.stopping.update(epoch, metrics))  # rank 0 decides for every process
        if verdict.improved:
            position.best_model = self.strategy.model_state(model)
        metrics["time/epoch_s"] = time.perf_counter() - started
        metrics["train/skipped_steps"] = self.nonfinite.skipped
        if self._compiler is not None:
            self._compiler.report(metrics, self.log, epoch)
        position.history.append({"epoch": epoch, **metrics})
        self.sink.log(metrics, step=state.step, epoch=epoch)
        self.log.info("epoch", epoch=epoch, step=state.step, **metrics)
        self._emit("on_epoch_end", state, metrics)
        position.epoch, position.batch = epoch + 1, 0
        position.stop_reason = (verdict.reason or "stopped") if verdict.stop else None
        return verdict

    def _not_finished(self, state: TrainState, position: Position, error: BaseException) -> None:
        """The verdict on a run that ``error`` ends, in its summary, then the sinks' finish (the error is raised on).

        ``interrupted`` by SIGTERM/SIGINT, ``cancelled`` by ``StopToken.stop()`` (with ``resumable``:
        whether a checkpoint to continue from was written), else ``failed`` with the error's first line.
        """
        status = "failed"
        if isinstance(error, (KeyboardInterrupt, TrainingInterrupted)):
            status = "cancelled" if isinstance(error, TrainingInterrupted) and error.signum is None else "interrupted"
        try:
            result = self._result(state, position)
            result.status = status
            if isinstance(error, TrainingInterrupted):
                result.resumable = error.saved
            elif status == "failed":
                result.error = _one_line(error)
            self.sink.summary(result.summary())
        except Exception as failure:  # (a record that cannot be written): the run's own error is the one to raise
            self.log.warning("summary_not_written", error=str(failure))
        self.sink.finish("failed" if status == "failed" else "killed")

    def _no_step(self, result: FitResult) -> NonFiniteError | None:
        """A run that took no optimizer step learned nothing: its cause goes into ``result`` and is returned to raise."""
        if result.steps or not self.nonfinite.skipped:  # no batch at all is the loop's DataError
            return None
        error = NonFiniteError(
            f"no optimizer step was taken: every step ({self.nonfinite.skipped}) had a non-finite loss or gradient "
            "and was skipped (nonfinite.max_in_a_row is more than the run's steps); check the data and the lr")
        result.stop_reason, result.status, result.error = "no_step_taken", "failed", _one_line(error)
        result.notes.append(str(error))
        return error

    def _result(self, state: TrainState, position: Position) -> FitResult:
        history = position.history
        return FitResult(
            epochs_completed=len(history), best_epoch=self.stopping.best_epoch, best_value=self.stopping.best_value,
            monitor=self.stopping.monitor, stop_reason=position.stop_reason or "max_epochs", history=history,
            steps=state.step, avg_epoch_time_s=math.fsum(h["time/epoch_s"] for h in history) / max(len(history), 1),
            counts={**self.health.counts(),
                    **({"compile/recompiles": self._compiler.recompiles} if self._compiler is not None else {})},
            notes=[f"data order not resumable: {self._unrestorable}"] if self._unrestorable else [],
            extended_from=dict(position.extended_from),
        )
