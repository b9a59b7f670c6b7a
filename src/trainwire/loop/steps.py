"""Steps: what one batch does to the weights. The loop calls a step and never touches an optimizer.

A ``Step`` builds its optimizers (from the trainable parameters, once the model is on its
device), applies objective → backward → gradient policy → optimizer → LR policy, and tells
the loop at each counted optimizer step whether the update was applied. Precision, the
strategy and the non-finite check come in the ``StepContext``, so every step gets them
the same way; a step that cannot honour a setting refuses it in ``check`` with one line.
``SupervisedStep`` is the default; ``trainwire.paradigms.gan.GANStep`` is the adversarial one.
The ``step`` config group picks one (``step=gan``): what a step needs besides its own keys
(the objective, the optimizer, the LR and gradient policies, a Trainer for a nested stage) it
names in its signature and the container supplies (ADR 0025).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from trainwire.checkpointing.parts import Losses, OptimizerPart
from trainwire.policies.gradients import GradientPolicy, GradStats, NoClip
from trainwire.policies.lr import Constant, LRPolicy, steps_per_epoch
from trainwire.policies.objectives import Objective

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
_result = tuple.__new__  # builds a StepResult without the Python-level __new__ that NamedTuple generates


@dataclass
class StepContext:
    """What a step is told once per fit, after the model is on its device and before any checkpoint is restored."""

    strategy: Any  # trainwire.runtime.distributed.Strategy
    precision: Any  # trainwire.runtime.precision.Precision: autocast, backward, unscale, the guarded optimizer step
    check_finite: bool  # whether to read the gradients' finiteness before stepping (the non-finite policy's call)
    batches_per_epoch: int
    max_epochs: int
    accumulate_steps: int
    objective: Objective  # the run's objective (evaluation is the loop's; training may use it)
    train_data: Any = None
    val_data: Any = None
    stop: Any = None  # the run's StopToken, for work a step runs itself (a nested fit)
    log: Any = None
    health: Any = None  # trainwire.runtime.health.GradientHealth: told each counted step's gradients (None: nobody listens)


class StepResult(NamedTuple):
    """One micro-batch's result: its detached loss, whether it ended a counted optimizer step, and whether it was applied."""

    loss: Tensor
    counted: bool = False
    taken: bool = True


class Step(ABC):
    """Port: turns one batch into an update of the weights."""

    optimizer: Optimizer  # the main optimizer, what hooks see as ``state.optimizer``
    # Whether the model runs forward before this step first trains it, so the objective can check the
    # fit's first batch against its output (``Objective.check_batch``); a step that checks its data itself says no.
    checks_first_batch: bool = True

    def check(self, settings: Any, strategy: Any) -> None:
        """Called when the Trainer is built, with its ``TrainerSettings`` and ``Strategy``: raises ConfigError
        (one line, naming the key) for a setting it cannot honour."""

    @abstractmethod
    def setup(self, model: nn.Module, context: StepContext) -> dict[str, Any]:
        """Once per fit, before a checkpoint is restored: builds optimizers and attaches LR policies.

        Returns the step's stateful parts by name (each has ``state_dict``/``load_state_dict``);
        they are checkpointed and restored with the loop's.
        """

    def compile(self, module: nn.Module, compile: Callable[[nn.Module], nn.Module]) -> nn.Module:
        """With ``trainer.compile``: once per fit, before ``setup`` builds the optimizers; returns what runs forward.

        ``compile`` wraps a module in ``torch.compile`` and shares its parameters. A step whose
        work calls submodules rather than the module's forward compiles those instead.
        """
        return compile(module)

    def plan(self) -> dict[str, Any]:
        """What a checkpoint must have been planned with to resume under this step (config key -> value)."""
        return {}

    def start(self, model: nn.Module, resumed: bool) -> None:
        """After a checkpoint was restored (``resumed``) or not, before the first batch."""

    @abstractmethod
    def train_step(self, module: nn.Module, batch: Any, index: int) -> StepResult:
        """Runs batch ``index`` of the epoch (already on the device) in train mode."""

    @abstractmethod
    def log_values(self) -> dict[str, float]:
        """What the last counted step logs (read only on logged steps: reading tensors syncs the device)."""

    @abstractmethod
    def end_epoch(self, model: nn.Module, metrics: dict[str, float]) -> None:
        """After validation, before the stopping verdict: adds the epoch's ``train/`` metrics to ``metrics``,
        clears them for the next epoch, and lets LR policies see the epoch's metrics."""


class SupervisedStep(Step):
    """Objective → backward (scaled by 1/N over an accumulation window of N) → at the window's end: unscale,
    gradient policy, optimizer step unless non-finite, LR policy."""

    def __init__(self, objective: Objective, optimizer: OptimizerFactory, lr_policy: LRPolicy | None = None,
                 gradient_policy: GradientPolicy | None = None) -> None:
        self.objective, self.optimizer_factory = objective, optimizer
        self.lr_policy = lr_policy or Constant()
        self.gradients = gradient_policy or NoClip()

    def setup(self, model: nn.Module, context: StepContext) -> dict[str, Any]:
        self.context, self.accumulate = context, context.accumulate_steps
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = self.optimizer_factory(self.params)
        self.lr_policy.attach(self.optimizer, steps_per_epoch=steps_per_epoch(context.batches_per_epoch, self.accumulate),
                              max_epochs=context.max_epochs)
        self.losses = Losses(context.precision.device)
        # Looked up once: a step pays for the step, not for settings it does not use (no autocast in fp32,
        # no gradient monitor when it is off). A tiny model's step is about 0.5 ms, and a µs is 0.2% of it.
        self._autocast = context.precision.autocast if context.precision.autocasting else None
        self._observe = context.health.gradients if context.health is not None else None
        self._last: tuple[int, float, GradStats] | None = None  # the last counted step's window, lr and norms
        return {"optimizer": OptimizerPart(context.strategy, model, self.optimizer), "lr_policy": self.lr_policy,
                "gradients": self.gradients, "epoch_losses": self.losses}

    def train_step(self, module: nn.Module, batch: Any, index: int) -> StepResult:
        precision, accumulate = self.context.precision, self.accumulate
        if self._autocast is None:
            loss = self.objective.training_loss(module, batch)
        else:
            with self._autocast():
                loss = self.objective.training_loss(module, batch)
        detached = loss.detach()
        self.losses.append(detached)
        window = 1
        if accumulate > 1:  # the window's length: a short last one when the epoch does not divide
            n_batches = self.context.batches_per_epoch
            window = min(accumulate, n_batches - index // accumulate * accumulate)
            loss = loss / window
            if (index + 1) % accumulate and index + 1 != n_batches:
                precision.backward(loss)
                return StepResult(detached)
        optimizer, check = self.optimizer, self.context.check_finite
        if precision.scaler is None:  # fp32 and bf16: backward and the optimizer as they are, guarded as precision.step does
            loss.backward()
            grads = self.gradients.apply(self.params)
            lr = optimizer.param_groups[0]["lr"]
            taken = not check or grads.finite
            if taken:
                optimizer.step()
        else:  # fp16: the scaler scales the loss, unscales the gradients and decides the step
            precision.backward(loss)
            precision.unscale(optimizer)
            grads = self.gradients.apply(self.params)
            lr = optimizer.param_groups[0]["lr"]
            taken = precision.step(optimizer, grads if check else None)
        if self._observe is not None:
            self._observe(grads)
        optimizer.zero_grad(set_to_none=True)
        if taken:
            self.lr_policy.after_step()
        self._last = (window, lr, grads)
        return _result(StepResult, (detached, True, taken))

    def log_values(self) -> dict[str, float]:
        window, lr, grads = self._last
        # Floats the finite check has read already where it could: no tensor op on a logged step but the loss's
        # mean over an accumulation window (one host read; a mean over processes under DDP).
        loss = self.losses[-1] if window == 1 else torch.stack(self.losses[-window:]).mean()
        return {"train/loss": self.context.strategy.mean(loss), "train/lr": lr,
                "train/grad_norm": grads.norm_value(), "train/grad_norm_clipped": grads.clipped_value()}

    def end_epoch(self, model: nn.Module, metrics: dict[str, float]) -> None:
        metrics["train/epoch_loss"] = self.context.strategy.mean(torch.stack(self.losses).mean())
        self.losses.clear()
        self.lr_policy.after_epoch(metrics)

