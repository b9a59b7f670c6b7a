"""What a checkpoint holds, and putting it back: the union of every stateful part's ``state_dict``.

The Trainer calls ``capture`` at a step boundary (gradients are zero there, so no partial
accumulation window needs saving) and ``restore`` before its first batch. Everything in a
checkpoint is a tensor or a plain container, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trainwire.checkpoints import CheckpointStore, read_checkpoint
from trainwire.errors import CheckpointError, ConfigError, NonFiniteError

if TYPE_CHECKING:
    from trainwire.precision import Precision
    from trainwire.trainer import Trainer, TrainState

FORMAT = 1
PLAN_LABELS = {"max_epochs": "trainer.max_epochs", "accumulate_steps": "trainer.accumulate_steps",
               "batches_per_epoch": "batches per epoch (data.batch_size)"}
COMPONENTS = ("format", "plan", "model", "optimizer", "lr_policy", "precision", "stopping", "gradients", "rng", "sampler",
              "position", "counters", "history", "best_model", "epoch_losses", "versions")


@dataclass
class Progress:
    """What the loop has produced beyond the counters; ``epoch``/``batch`` is the next batch to run."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_model: dict[str, Tensor] | None = None
    epoch_losses: list[Tensor] = field(default_factory=list)  # this epoch's detached micro-batch losses
    epoch: int = 0
    batch: int = 0
    stop_reason: str | None = None  # set once the stopping policy has ended the run
    plan: dict[str, int] = field(default_factory=dict)  # what the schedule and positions were planned on


def rng_state() -> dict[str, Any]:
    """Every random generator the loop may draw from: python, numpy (when importable), torch, CUDA."""
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


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
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


def versions() -> dict[str, str]:
    """The trainwire and torch versions that wrote a checkpoint."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        trainwire = version("trainwire")
    except PackageNotFoundError:
        trainwire = "unknown"
    return {"trainwire": trainwire, "torch": str(torch.__version__)}  # TorchVersion is not a plain str


def stacked(losses: list[Tensor]) -> Tensor:
    """An epoch's detached losses so far as one CPU tensor (empty at the epoch's start), to save."""
    return torch.stack(losses).cpu() if losses else torch.zeros(0)


def finite(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """``weights``, once checked: never let a diverged model overwrite a good checkpoint (one sync per save)."""
    checks = [value.isfinite().all() for value in weights.values() if value.is_floating_point()]
    if checks and not bool(torch.stack(checks).all()):
        raise NonFiniteError("the model has non-finite parameters; refusing to save them as a checkpoint")
    return weights


def check(checkpoint: dict[str, Any], components: tuple[str, ...], plan: dict[str, int], name: str,
          labels: dict[str, str]) -> None:
    """Refuses (CheckpointError) a checkpoint missing a component, of another format, or planned otherwise.

    Called before any state is touched, so a refused resume changes nothing. ``labels`` names
    each plan entry as the user sets it (a config key).
    """
    missing = [key for key in components if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{name} lacks {', '.join(missing)}; refusing to resume from part of a state")
    if checkpoint["format"] != FORMAT:
        raise CheckpointError(f"{name} has format {checkpoint['format']}; this trainwire reads format {FORMAT}")
    for key, value in plan.items():
        if checkpoint["plan"].get(key) != value:
            raise CheckpointError(f"{name} was planned with {labels[key]}={checkpoint['plan'].get(key)}, this run "
                                  f"has {value}: the LR schedule and the batch position would not line up; resume "
                                  "with the same settings")


def capture(trainer: Trainer, state: TrainState, precision: Precision, progress: Progress,
            sampler: Any = None) -> dict[str, Any]:
    """The whole training state at a step boundary. Refuses (NonFiniteError) when a parameter is not finite."""
    model, strategy = state.model, trainer.strategy
    weights = finite(strategy.model_state(model))  # the whole model, also when it is sharded over processes
    return {
        "format": FORMAT,
        "plan": progress.plan,
        "model": weights,
        "optimizer": strategy.optimizer_state(model, state.optimizer),
        "lr_policy": trainer.lr_policy.state_dict(),
        "precision": precision.state_dict(),
        "stopping": trainer.stopping.state_dict(),
        "gradients": trainer.gradients.state_dict(),
        "rng": rng_state(),
        "sampler": sampler.state_dict() if sampler is not None else {},
        "position": {"epoch": progress.epoch, "batch": progress.batch},
        "counters": {"step": state.step, "skipped_steps": state.skipped_steps, "bad_steps": state.bad_steps,
                     "stop_reason": progress.stop_reason},
        "history": progress.history,
        "best_model": progress.best_model,
        "epoch_losses": stacked(progress.epoch_losses),
        "versions": versions(),
    }


def resume(trainer: Trainer, state: TrainState, precision: Precision, plan: dict[str, int],
           sampler: Any = None) -> Progress:
    """Starts the trainer's store and restores what ``trainer.resume`` names; a fresh Progress when nothing.

    ``plan`` (max_epochs, accumulate_steps, batches_per_epoch) must match the checkpoint's:
    the LR schedule and the batch position only mean the same thing under the same plan.
    """
    where, checkpoint = find(trainer.settings.resume, trainer.checkpoints, trainer.log)
    if checkpoint is None:
        return Progress(plan=plan)
    progress = restore(checkpoint, trainer, state, precision, sampler, name=f"checkpoint {where}", plan=plan)
    trainer.log.info("resumed", checkpoint=where, epoch=progress.epoch, batch=progress.batch, step=state.step)
    return progress


def find(resume: str | None, store: CheckpointStore | None, log: Any) -> tuple[str | None, dict[str, Any] | None]:
    """Starts ``store``, then the checkpoint ``trainer.resume`` names, verified and loaded: (where, state),
    or (None, None) to start fresh.

    ``auto`` is the store's newest valid checkpoint, or a fresh start when there is none; any
    other value is a checkpoint name of the store or a path.
    """
    if store is not None:
        store.start()  # cleans what a crash left, before anything is looked for
    if resume is None:
        return None, None
    if resume == "auto":
        if store is None:
            raise ConfigError("trainer.resume='auto' needs a checkpoint store, and the Trainer has none")
        resume = store.latest()
        if resume is None:
            log.info("resume_fresh", reason="no valid checkpoint")
            return None, None
    return resume, store.load(resume) if store is not None else read_checkpoint(resume)


def restore(checkpoint: dict[str, Any], trainer: Trainer, state: TrainState, precision: Precision,
            sampler: Any = None, *, name: str = "checkpoint", plan: dict[str, int] | None = None) -> Progress:
    """Puts every part back; checks every component is present, and the plan the same, before touching any."""
    check(checkpoint, COMPONENTS, plan or {}, name, PLAN_LABELS)
    trainer.strategy.load_model_state(state.model, checkpoint["model"])
    trainer.strategy.load_optimizer_state(state.model, state.optimizer, checkpoint["optimizer"])
    trainer.lr_policy.load_state_dict(checkpoint["lr_policy"])
    precision.load_state_dict(checkpoint["precision"])
    trainer.stopping.load_state_dict(checkpoint["stopping"])
    trainer.gradients.load_state_dict(checkpoint["gradients"])
    if sampler is not None and checkpoint["sampler"]:
        sampler.load_state_dict(checkpoint["sampler"])
    set_rng_state(checkpoint["rng"])
    counters, position = checkpoint["counters"], checkpoint["position"]
    state.step, state.skipped_steps, state.bad_steps = counters["step"], counters["skipped_steps"], counters["bad_steps"]
    state.epoch = position["epoch"]
    return Progress(
        history=list(checkpoint["history"]),
        best_model=checkpoint["best_model"],
        epoch_losses=list(checkpoint["epoch_losses"].to(precision.device).unbind()),
        epoch=position["epoch"],
        batch=position["batch"],
        stop_reason=counters["stop_reason"],
        plan=dict(plan or checkpoint["plan"]),
    )
