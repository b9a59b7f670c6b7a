"""A checkpoint is the union of named stateful parts, each with ``state_dict()`` / ``load_state_dict()``.

The Trainer registers its parts (the model, the step's optimizers and LR policies, the
stopping and non-finite policies, the sampler, the RNGs, the objective's metric schedule,
the loop's own counters and history, and any hook that has state) in a mapping; ``capture``
asks each for its state at a step boundary (gradients are zero there, so no partial
accumulation window needs saving), ``restore`` checks that every part is in the checkpoint
and the plan is the same before it touches any, then loads them in order. Adding a part is
adding an entry, not editing this module. Everything saved is a tensor or a plain container,
so a checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from trainwire.checkpointing import runfolder
from trainwire.checkpointing.format import read_checkpoint
from trainwire.checkpointing.sharding import ShardedState
from trainwire.checkpointing.store import CheckpointStore
from trainwire.errors import CheckpointError, ConfigError, NonFiniteError
from trainwire.runtime.process import SEEDING

FORMAT = 2  # 1: the fixed component list of the first build (refused: no release has shipped)
WEIGHTS_WAY = "or start a new run from its weights with trainer.init_from="


@runtime_checkable
class Stateful(Protocol):
    """Anything a checkpoint can hold: its state as tensors and plain containers, and putting it back."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


def is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def finite(weights: dict[str, Tensor], strategy: Any = None) -> dict[str, Tensor]:
    """``weights``, once checked: never let a diverged model overwrite a good checkpoint (one sync per save).

    Sharded weights (DTensors) are checked shard by shard, and every process learns the verdict from ``strategy``.
    """
    local = [getattr(value, "to_local", lambda: value)() for value in weights.values()]
    floats = [value for value in local if value.is_floating_point()]
    # A sum is finite only if every element is (NaN and inf carry through it), and it needs no temporary as
    # large as the tensor: 1 ms for 32 MiB here, where isfinite().all() takes 20 and stalled every save. Half
    # types are summed in float32, so a sum of finite values cannot overflow; one that does anyway (float32
    # weights near 1e31) is checked element by element before anything is refused.
    sums = [value.sum(dtype=torch.float32) if value.element_size() < 4 else value.sum() for value in floats]
    diverged = bool(sums) and not bool(torch.stack([total.float() for total in sums]).isfinite().all())
    if diverged:
        diverged = not bool(torch.stack([value.isfinite().all() for value in floats]).all())
    if strategy is not None:
        diverged = strategy.any(diverged)
    if diverged:
        raise NonFiniteError("the model has non-finite parameters; refusing to save them as a checkpoint")
    return weights


class ModelPart:
    """The model's state for a checkpoint, through the strategy (its live tensors; each rank's shards under FSDP).

    Checked finite before it is saved. The checkpoint writer copies what it keeps (ADR 0009).
    """

    def __init__(self, strategy: Any, model: nn.Module) -> None:
        self.strategy, self.model = strategy, model

    def state_dict(self) -> dict[str, Tensor]:
        return finite(self.strategy.checkpoint_model_state(self.model), self.strategy)

    def unchecked_state_dict(self) -> dict[str, Tensor]:
        """The same tensors, not checked: for the layout of a save (``capture(checked=False)``), not for a save."""
        return self.strategy.checkpoint_model_state(self.model)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if isinstance(state, ShardedState):
            state.load_model(self.model)
        else:
            self.strategy.load_model_state(self.model, state)


class OptimizerPart:
    """An optimizer's state through the strategy (FSDP: each rank's shards, keyed by parameter name)."""

    def __init__(self, strategy: Any, model: nn.Module, optimizer: Optimizer) -> None:
        self.strategy, self.model, self.optimizer = strategy, model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return self.strategy.optimizer_state(self.model, self.optimizer)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if isinstance(state, ShardedState):
            state.load_optimizer(self.model, self.optimizer)
        else:
            self.strategy.load_optimizer_state(self.model, self.optimizer, state)


class RNGPart:
    """Every random generator the loop may draw from: python, numpy (when importable), torch, CUDA."""

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
        try:
            import numpy
        except ImportError:
            pass
        else:
            kind, keys, pos, has_gauss, gauss = numpy.random.get_state(legacy=True)
            state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss]
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        with SEEDING:  # not while another run in another thread seeds the generator and draws its weights from it
            torch.set_rng_state(state["torch"])
        if "numpy" in state:
            try:
                import numpy
            except ImportError:
                pass
            else:
                kind, keys, pos, has_gauss, gauss = state["numpy"]
                numpy.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


class Losses(list):
    """An epoch's detached losses so far (read once at the epoch's end); saved as one CPU tensor."""

    def __init__(self, device: torch.device | None = None) -> None:
        super().__init__()
        self.device = device

    def state_dict(self) -> dict[str, Tensor]:
        return {"losses": torch.stack(self).cpu() if self else torch.zeros(0)}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self[:] = list(state["losses"].to(self.device).unbind()) if self.device else list(state["losses"].unbind())


@dataclass
class Position:
    """The loop's own state: where it is, what it has produced. ``epoch``/``batch`` is the next batch to run."""

    epoch: int = 0
    batch: int = 0
    step: int = 0  # optimizer steps taken so far
    history: list[dict[str, float]] = field(default_factory=list)
    best_model: dict[str, Tensor] | None = None
    stop_reason: str | None = None  # set once the stopping policy has ended the run
    extended_from: dict[str, Any] = field(default_factory=dict)  # plan key -> the value first planned (ADR 0031)

    def state_dict(self) -> dict[str, Any]:
        return {"position": {"epoch": self.epoch, "batch": self.batch}, "step": self.step, "history": self.history,
                "best_model": self.best_model, "stop_reason": self.stop_reason, "extended_from": self.extended_from}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.batch = state["position"]["epoch"], state["position"]["batch"]
        self.step, self.history, self.best_model = state["step"], list(state["history"]), state["best_model"]
        self.stop_reason, self.extended_from = state["stop_reason"], dict(state.get("extended_from") or {})


@functools.cache  # importlib.metadata scans the installed distributions: about 2 ms, once a process
def versions() -> dict[str, str]:
    """The trainwire and torch versions that wrote a checkpoint."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        trainwire = version("trainwire")
    except PackageNotFoundError:
        trainwire = "unknown"
    return {"trainwire": trainwire, "torch": str(torch.__version__)}  # TorchVersion is not a plain str


def capture(parts: Mapping[str, Any], plan: Mapping[str, Any], processes: int = 1, *,
            checked: bool = True) -> dict[str, Any]:
    """The whole training state: every part's ``state_dict``, with the plan, the number of processes
    that trained it and the versions that wrote it. ``checked=False`` skips the model's finite check
    (and its collective): a state for its layout, never to be saved."""
    return {"format": FORMAT, "plan": dict(plan),
            **{name: part.state_dict() if checked or not isinstance(part, ModelPart) else part.unchecked_state_dict()
               for name, part in parts.items()},
            "processes": processes, "versions": dict(versions())}


def check(checkpoint: Mapping[str, Any], parts: Mapping[str, Any], plan: Mapping[str, Any],
          name: str) -> dict[str, Any]:
    """Refuses (CheckpointError) a checkpoint of another format, missing a part, or planned otherwise.

    Called before any state is touched, so a refused resume changes nothing. The plan's keys
    name each entry as the user sets it (a config key). Returns what this run extends: each
    ``EXTENDABLE`` key the run plans higher than the checkpoint, with the checkpoint's value.
    """
    if checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{name} has format {checkpoint.get('format')}; this trainwire reads format {FORMAT} "
                              "(a checkpoint of an earlier build: start a fresh run)")
    missing = [key for key in parts if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{name} lacks {', '.join(missing)}; refusing to resume from part of a state "
                              "(was it written by another paradigm or model?)")
    extended = {}
    for key, value in plan.items():
        then = checkpoint["plan"].get(key)
        if then == value:
            continue
        if key in runfolder.EXTENDABLE and type(then) is int and type(value) is int:
            if value > then:
                extended[key] = then
                continue
            raise CheckpointError(f"{name} was planned with {key}={then}, this run has {value}: a run can be "
                                  f"extended, not shortened; resume with {key} >= {then}, {WEIGHTS_WAY}<checkpoint>")
        raise CheckpointError(f"{name} was planned with {key}={then}, this run has {value}: the LR schedule and "
                              f"the batch position would not line up; resume with the same settings, "
                              f"{WEIGHTS_WAY}<checkpoint>")
    return extended


def restore(checkpoint: Mapping[str, Any], parts: Mapping[str, Any], plan: Mapping[str, Any],
            name: str = "checkpoint") -> dict[str, Any]:
    """Checks the whole checkpoint, then loads every part in the order they were registered.

    Returns what the run extends (``check``); the parts planned from it re-plan as they load.
    """
    extended = check(checkpoint, parts, plan, name)
    for key, part in parts.items():
        part.load_state_dict(checkpoint[key])
    return extended


def restores(resume: str | None, store: CheckpointStore | None) -> bool:
    """Whether ``trainer.resume`` will restore a checkpoint (a path; ``auto`` over a folder that holds one),
    told from the folder's listing alone: a new run's first weights (``trainer.init_from``) are then not read.

    A store of one's own (no ``directory``) may restore: False, so the first weights are loaded (and replaced).
    """
    if resume is None:
        return False
    if resume != "auto":
        return True
    directory = getattr(store, "directory", None)
    return directory is not None and runfolder.holds_checkpoints(directory)


def find(resume: str | None, store: CheckpointStore | None, log: Any,
         processes: int = 1) -> tuple[str | None, dict[str, Any] | None]:
    """Starts ``store``, then the checkpoint ``trainer.resume`` names, verified and loaded: (where, state),
    or (None, None) to start fresh.

    ``auto`` is the store's newest valid checkpoint, or a fresh start when there is none; any
    other value is a checkpoint name of the store or a path. A fresh run (``resume`` None) into
    a store that holds checkpoints is refused, and so is ``auto`` when the checkpoint's config
    differs from the store's (the run's) in a key that changes the trajectory (ADR 0023).
    """
    if store is not None:
        store.start()  # cleans what a crash left, before anything is looked for
    if resume is None:
        directory = getattr(store, "directory", None)
        if directory is not None and runfolder.holds_checkpoints(directory):
            raise ConfigError(f"{directory} already holds checkpoints of a run; continue it with trainer.resume=auto, "
                              "or save into another folder")
        return None, None
    if resume == "auto":
        if store is None:
            raise ConfigError("trainer.resume='auto' needs a checkpoint store, and the Trainer has none")
        resume = store.latest()
        if resume is None:
            log.info("resume_fresh", reason="no valid checkpoint")
            return None, None
        checkpoint = store.load(resume)
        current = getattr(store, "config_yaml", None)
        if current is not None and isinstance(checkpoint.get("config_yaml"), str):
            changes = runfolder.config_changes(checkpoint["config_yaml"], current,
                                               saved_processes=checkpoint.get("processes", 1), processes=processes)
            if changes:
                directory = getattr(store, "directory", "")
                raise ConfigError(runfolder.refusal(f"checkpoint {resume} of {directory}", changes,
                                                    Path(directory).parent if directory else "RUN"))
        return resume, checkpoint
    if Path(resume).is_dir():  # a run folder (or its checkpoints/): its newest valid checkpoint
        from trainwire.checkpointing.export import newest_checkpoint

        resume = str(newest_checkpoint(resume))
    return resume, store.load(resume) if store is not None else read_checkpoint(resume)
