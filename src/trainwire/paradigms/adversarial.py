"""Adversarial-robustness training: an Objective wrapper that trains on perturbed inputs.

``AdversarialObjective(inner, attack)`` asks ``attack`` for inputs within an L∞ ball of radius
``epsilon`` that raise ``inner``'s loss, then returns ``inner``'s loss on them. The Trainer
does not know: to it this is one more Objective. The attack differentiates the loss with
respect to the inputs only (``torch.autograd.grad``), so no parameter's ``.grad`` is touched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from trainwire.errors import ConfigError
from trainwire.policies.objectives import Objective, Reduce, local

LossOfInputs = Callable[[Tensor], Tensor]


class Attack(ABC):
    """Port: finds a perturbation of a batch's inputs that raises the loss."""

    @abstractmethod
    def perturb(self, loss: LossOfInputs, inputs: Tensor) -> Tensor:
        """Returns perturbed inputs (detached), given the loss as a function of the inputs."""


def _check(epsilon: float, steps: int | None = None) -> None:
    if not epsilon > 0:
        raise ConfigError(f"objective.epsilon={epsilon} must be > 0")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"objective.steps={steps!r} must be an integer >= 1")


class FGSM(Attack):
    """One signed-gradient step of size ``epsilon``; inputs clamped to ``[low, high]``."""

    def __init__(self, epsilon: float = 0.1, low: float | None = 0.0, high: float | None = 1.0) -> None:
        _check(epsilon)
        self.epsilon, self.low, self.high = epsilon, low, high

    def perturb(self, loss: LossOfInputs, inputs: Tensor) -> Tensor:
        x = inputs.detach().requires_grad_(True)
        grad, = torch.autograd.grad(loss(x), x)
        return (inputs + self.epsilon * grad.sign()).clamp(self.low, self.high).detach()


class PGD(Attack):
    """``steps`` signed-gradient steps of ``step_size`` (default 2.5·epsilon/steps) from a random start,
    each projected back into the ``epsilon`` L∞ ball and ``[low, high]``."""

    def __init__(self, epsilon: float = 0.1, steps: int = 5, step_size: float | None = None,
                 random_start: bool = True, low: float | None = 0.0, high: float | None = 1.0) -> None:
        _check(epsilon, steps)
        if step_size is not None and not step_size > 0:
            raise ConfigError(f"objective.step_size={step_size} must be > 0 (or null)")
        self.epsilon, self.steps, self.random_start = epsilon, steps, random_start
        self.step_size = step_size if step_size is not None else 2.5 * epsilon / steps
        self.low, self.high = low, high

    def perturb(self, loss: LossOfInputs, inputs: Tensor) -> Tensor:
        inputs = inputs.detach()
        x = inputs
        if self.random_start:
            x = x + torch.empty_like(x).uniform_(-self.epsilon, self.epsilon)
        for _ in range(self.steps):
            x = x.clamp(self.low, self.high).detach().requires_grad_(True)
            grad, = torch.autograd.grad(loss(x), x)
            x = x.detach() + self.step_size * grad.sign()
            x = inputs + (x - inputs).clamp(-self.epsilon, self.epsilon)
        return x.clamp(self.low, self.high).detach()


class AdversarialObjective(Objective):
    """Trains ``inner`` on inputs perturbed by ``attack``; batches are ``(inputs, targets)``.

    ``evaluate`` reports ``inner``'s metrics on clean inputs and, prefixed ``robust_``, on
    inputs perturbed by ``eval_attack`` (default: ``attack``), e.g. ``val/robust_accuracy``.
    """

    def __init__(self, inner: Objective, attack: Attack, eval_attack: Attack | None = None) -> None:
        self.inner, self.attack, self.eval_attack = inner, attack, eval_attack or attack

    def _perturbed(self, attack: Attack, model: nn.Module, batch: Any) -> tuple[Tensor, Any]:
        inputs, targets = batch
        return attack.perturb(lambda x: self.inner.training_loss(model, (x, targets)), inputs), targets

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        return self.inner.training_loss(model, self._perturbed(self.attack, model, batch))

    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = local) -> dict[str, float]:
        batches = list(batches)
        metrics = self.inner.evaluate(model, batches, reduce=reduce)
        with torch.enable_grad():  # the Trainer evaluates under no_grad; the attack needs input gradients
            attacked = [self._perturbed(self.eval_attack, model, batch) for batch in batches]
        robust = self.inner.evaluate(model, attacked, reduce=reduce)
        return {**metrics, **{f"robust_{key}": value for key, value in robust.items()}}


def adversarial_classification(attack: str = "pgd", epsilon: float = 0.1, steps: int = 5,
                               step_size: float | None = None, label_smoothing: float = 0.0) -> AdversarialObjective:
    """What ``objective=adversarial`` builds: classification trained on FGSM or PGD inputs."""
    from trainwire.policies.objectives import Classification

    if attack == "fgsm":
        chosen: Attack = FGSM(epsilon)
    elif attack == "pgd":
        chosen = PGD(epsilon, steps, step_size)
    else:
        raise ConfigError(f"objective.attack={attack!r} is not one of fgsm, pgd")
    return AdversarialObjective(Classification(label_smoothing), chosen)
