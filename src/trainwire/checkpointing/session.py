"""What the loop asks of checkpointing during one fit: resume, save at a step or an epoch end, close.

``Checkpointing`` is made once per ``fit``, after the step has built its optimizers. It holds
the run's stateful parts (what a checkpoint is: by name, in the order they are restored, the
RNGs last; ADR 0016), restores the checkpoint ``trainer.resume`` names before the sinks start
(so a checkpoint that fails verification changes nothing), and at each optimizer step and epoch
end writes what the cadence policy names, through a ``CheckpointWriter`` (in the background,
unless the strategy shards its checkpoints: ADR 0009, 0014). It keeps the loop's two promises
about saves: a stop request writes ``last`` at that boundary and raises ``TrainingInterrupted``
once the save in flight is committed; a save that failed in the background is raised at the
next boundary. ``close`` waits for the last save (ADR 0026).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from trainwire.checkpointing.parts import (
    ModelPart,
    Position,
    RNGPart,
    capture,
    find,
    is_stateful,
    restore,
)
from trainwire.checkpointing.store import CheckpointStore
from trainwire.checkpointing.writer import CheckpointWriter
from trainwire.data import resumable_sampler
from trainwire.errors import ConfigError, TrainingInterrupted
from trainwire.policies.cadence import CheckpointPolicy
from trainwire.sinks.base import MetricsSink, NullSink

RECORD = "record"  # the checkpoint's entry for where the run's record (metrics.jsonl) ended when it was taken


class Checkpointing:
    """One fit's checkpoints: ``hold`` the parts first, then ``resume``, ``at_step`` / ``at_epoch``, and ``close``.

    With no ``store`` nothing is saved or resumed, but a stop request still ends the run at its
    boundary (``TrainingInterrupted(saved=False)``). ``stop`` is the run's ``StopToken``; ``strategy``
    makes a stop every process's and says who writes. Not thread-safe: the loop's thread calls it.
    """

    def __init__(self, store: CheckpointStore | None, cadence: CheckpointPolicy, strategy: Any, stop: Any,
                 log: Any, *, asynchronous: bool = True, record: MetricsSink | None = None) -> None:
        self.store, self.cadence, self.strategy, self.stop, self.log = store, cadence, strategy, stop, log
        self.record = record or NullSink()  # the run's sink: where its record ends goes into each checkpoint
        # Sharded saves are collectives of every process: written in the loop's thread (ADR 0014).
        self.writer = None if store is None else CheckpointWriter(
            store, asynchronous=asynchronous and not strategy.sharded_checkpoints, on_failure=self._failed)
        # The step from which the loop must call ``at_step`` (a stop request aside): the cadence's next
        # save, or the next step when a save has failed in the background, when the processes must agree
        # on a stop at every step (a collective), or while the writer's buffers are still to be
        # prepared. 0 until the first ``at_step`` has asked the cadence.
        self.due: float = 0
        self.prepared = self.writer is None or not self.writer.asynchronous  # see ``_prepare``
        self.parts: dict[str, Any] = {}  # set by hold, before anything else is asked
        self.plan: dict[str, Any] = {}
        self.position = Position()

    def hold(self, model: nn.Module, step_parts: Mapping[str, Any], *, precision: Any, stopping: Any, nonfinite: Any,
             objective: Any, throughput: Any, gradient_health: Any, train_data: Any, position: Position,
             hooks: Sequence[Any] = (), plan: Mapping[str, Any]) -> None:
        """Registers what a checkpoint holds, by name, in the order it is restored (the RNGs last).

        The model (through the strategy; checked finite when saved), the step's parts, the run's
        policies and meters, the sampler's position, the loop's ``position``, each hook that has
        state (``hook<i>.<Class>``). Whatever lacks ``state_dict``/``load_state_dict`` is left out.
        ``plan`` (config key -> value) must match for a checkpoint to be resumed.
        """
        sampler = resumable_sampler(train_data)
        parts = {"model": ModelPart(self.strategy, model), **step_parts, "precision": precision, "stopping": stopping,
                 "nonfinite": nonfinite, "objective": objective, "throughput": throughput,
                 "gradient_health": gradient_health, **({"sampler": sampler} if sampler is not None else {}),
                 "loop": position}
        parts.update((f"hook{index}.{type(hook).__name__}", hook) for index, hook in enumerate(hooks))
        self.parts = {name: part for name, part in parts.items() if is_stateful(part)} | {"rng": RNGPart()}
        self.position, self.plan = position, dict(plan)

    def resume(self, resume: str | None) -> str | None:
        """Starts the store and restores every part from the checkpoint ``resume`` names; returns where from.

        None: a fresh start (``resume`` None, or ``auto`` over an empty store). The whole
        checkpoint is verified and checked against the parts and the plan before any part is
        touched; a refusal raises CheckpointError or ConfigError and changes nothing.
        """
        where, checkpoint = find(resume, self.store, self.log, self.strategy.world_size)
        if checkpoint is None:
            if resume == "auto":  # nothing to continue: a record already there would get a second run
                self._fresh_record()
            return None
        extended = restore(checkpoint, self.parts, self.plan, name=f"checkpoint {where}")
        if checkpoint.get(RECORD) is not None:  # (None: saved without a record, or before records were kept)
            self.record.rewind(checkpoint[RECORD])  # the rows a killed run logged after this checkpoint go
        position = self.position
        self.log.info("resumed", checkpoint=where, epoch=position.epoch, batch=position.batch, step=position.step)
        if extended:
            self._extend(extended)
        return where

    def _extend(self, extended: Mapping[str, Any]) -> None:
        """The run goes on past its planned end (ADR 0031): the record says from what, and a stopping
        policy that had ended it judges the new epochs from its saved state (its patience carries on)."""
        position = self.position
        for key, then in extended.items():
            position.extended_from.setdefault(key, then)  # the length the run was first planned for
        self.log.info("run_extended", changes="; ".join(f"{key}: {then} -> {self.plan[key]}"
                                                        for key, then in extended.items()),
                      **({"stopped_by": position.stop_reason} if position.stop_reason else {}))
        position.stop_reason = None

    def _fresh_record(self) -> None:
        """Refuses (every process, as rank 0 says) a fresh start over a record that holds a run."""
        refusal = None
        try:
            self.record.rewind(None)
        except ConfigError as error:
            refusal = error
        if self.strategy.any(refusal is not None):
            raise refusal or ConfigError("rank 0's run record holds a run and there is no checkpoint to continue it")

    def at_start(self) -> None:
        """Before the first batch: a stop asked for before the run ends it here (with ``last`` written)."""
        self._boundary([])
        self._plan(self.position.step)

    def at_step(self, step: int, taken: bool = True) -> None:
        """After each counted optimizer step (``step``: steps taken so far; ``taken``: whether this one was applied).

        Writes what the cadence names for a step taken (nothing for one skipped), ``last`` too when
        a stop was asked for; raises a background save's failure, or ``TrainingInterrupted``.
        """
        # _boundary, inlined for the common step that saves nothing: this runs after every optimizer step.
        writer = self.writer
        if writer is not None:
            writer.check()
        stopping = self.strategy.any(self.stop.stopped)  # every process stops at the same step
        names = self.cadence.at_step(step) if taken else []
        if names or stopping:
            self._save(names, stopping)
        elif taken and not self.prepared:
            self._prepare()
        self._plan(step)

    def _prepare(self) -> None:
        """After the first step taken (the optimizer's state exists now): the writer makes the buffers of
        the first save beside the loop, so that save costs a copy, as the later ones do (ADR 0009)."""
        self.prepared = True
        layout = capture(self.parts, self.plan, self.strategy.world_size, checked=False)  # every process, as a save
        if self.strategy.is_rank0:  # the one that writes (sharded saves, by every process, are not in the background)
            self.writer.prepare(layout)

    def _plan(self, step: int) -> None:
        """Sets ``due`` after step ``step``: the cadence's next save, or the next step when it must be every step."""
        if self.strategy.world_size == 1:
            after = self.cadence.next_step(step)
            self.due = float("inf") if after is None else after
            if self.writer is not None and self.writer.failed:  # (set by the writer's thread just now: ``_failed``)
                self.due = 0
            elif not self.prepared:
                self.due = min(self.due, step + 1)

    def _failed(self) -> None:
        """Called by the writer's thread when a background save fails: the loop comes here at its next step."""
        self.due = 0

    def at_epoch(self, epoch: int, improved: bool) -> None:
        """At the end of epoch ``epoch`` (from 0), after the stopping verdict and the epoch's bookkeeping."""
        self._boundary(self.cadence.at_epoch(epoch, improved))

    def _boundary(self, names: list[str]) -> None:
        """Writes the checkpoints ``names`` (and ``last`` when a stop was asked for), then stops if asked.

        A save that failed in the background is raised here, at the next boundary after it failed.
        A stop waits for the save in flight to commit before it raises.
        """
        writer = self.writer
        if writer is not None:
            writer.check()
        self._save(names, self.strategy.any(self.stop.stopped))  # every process stops at the same step

    def _save(self, names: list[str], stopping: bool) -> None:
        """Writes ``names`` (with ``last`` when ``stopping``), then raises ``TrainingInterrupted`` if ``stopping``."""
        writer = self.writer
        if stopping and "last" not in names:
            names = ["last", *names]
        if names and writer is not None:
            self.prepared = True  # the first save made its own buffers
            saved = capture(self.parts, self.plan, self.strategy.world_size)  # every process (FSDP: its shards)
            saved[RECORD] = self.record.position()  # after this step's rows: a resume cuts the record back to here
            if self.strategy.is_rank0 or self.strategy.sharded_checkpoints:  # one writes, or each its shards
                position = self.position
                waited = writer.save(saved, names, meta={"epoch": position.epoch, "batch": position.batch,
                                                         "step": position.step})
                if waited > 0:  # the save before this one was still being written; the total goes to the summary
                    # Said once; a run that saves faster than it writes would say it at every save (34 lines).
                    if writer.waits == 1:
                        self.log.info("checkpoint_wait", step=position.step, wait_s=waited, waits=1,
                                      note="later waits at debug level; their total is checkpoint/wait_s in summary.json")
                    else:
                        self.log.debug("checkpoint_wait", step=position.step, wait_s=waited, waits=writer.waits)
        if stopping:
            if writer is not None:
                writer.wait()
            raise TrainingInterrupted(self.stop.signum, saved=writer is not None)

    @property
    def waited_s(self) -> float:
        """Seconds the loop spent waiting for a save still in flight (``checkpoint/wait_s`` of the summary)."""
        return self.writer.waited_s if self.writer is not None else 0.0

    @property
    def waits(self) -> int:
        """Saves that had to wait for the one before (``checkpoint/waits`` of the summary)."""
        return self.writer.waits if self.writer is not None else 0

    def close(self, error: BaseException | None = None) -> None:
        """When fit ends: waits until the last save is committed.

        Without ``error`` a failure of that save is raised. With ``error`` (fit is leaving because
        of it) the save is settled instead: its own failure is logged, not raised over the first
        one, and a ``TrainingInterrupted`` learns whether a checkpoint to resume from exists.
        """
        if error is None:
            if self.writer is not None:
                self.writer.wait()
            return
        failure = self.writer.settle() if self.writer is not None else None
        if failure is not None and failure is not error:  # the run is failing already: say, don't replace
            self.log.error("checkpoint_failed", error=str(failure))
        if isinstance(error, TrainingInterrupted) and not error.saved and self.store is not None:
            error.saved = self.store.latest() is not None  # stopped inside a step's own work
