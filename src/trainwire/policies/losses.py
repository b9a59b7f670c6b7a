"""Regression losses: a registry of named criteria, each with a ``reduction`` of mean, sum or none.

A registered loss is a function ``fn(predictions, targets, **params) -> Tensor`` that returns
the *unreduced* loss; the registry applies the reduction and checks the parameters. Add your
own with the decorator, then pick it by name (``Regression(loss="mine")`` or
``objective.loss.name=mine``)::

    @register_loss("log_cosh")
    def log_cosh(predictions, targets):
        return torch.log(torch.cosh(predictions - targets))

Built in: ``mse`` (the default), ``mae``, ``huber`` (``delta``), ``mape`` (``epsilon``) and
``physics_informed`` (``monotonicity``, ``smoothness``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trainwire.errors import ConfigError

REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., Tensor]
    defaults: dict[str, Any]
    positive: tuple[str, ...]
    non_negative: tuple[str, ...]


_REGISTRY: dict[str, _Entry] = {}


def register_loss(name: str, *, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()):
    """Registers ``fn(predictions, targets, **params) -> unreduced loss`` under ``name``.

    ``positive`` and ``non_negative`` name parameters whose values are checked when the loss is
    built. Registering a taken name replaces it (so a user may override a built-in on purpose).
    """

    def decorate(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        signature = inspect.signature(fn)
        defaults = {key: p.default for key, p in list(signature.parameters.items())[2:]
                    if p.default is not inspect.Parameter.empty}
        _REGISTRY[name] = _Entry(fn, defaults, tuple(positive), tuple(non_negative))
        return fn

    return decorate


def available_losses() -> dict[str, dict[str, Any]]:
    """Every registered loss's name and its parameters with their defaults (``reduction`` included)."""
    return {name: {**entry.defaults, "reduction": "mean"} for name, entry in sorted(_REGISTRY.items())}


def aligned(predictions: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Predictions and targets of one shape, a trailing 1 squeezed from either; any other mismatch is an error.

    Broadcasting ``(B, T, 1)`` against ``(B, T)`` would compare every prediction with every target
    of its sample, and a sequence loss would read the length-1 axis as the sequence: both wrong
    without a sound, so a mismatch is refused.
    """
    if predictions.shape == targets.shape:
        return predictions, targets
    if predictions.shape[-1:] == (1,) and predictions.shape[:-1] == targets.shape:
        return predictions.squeeze(-1), targets
    if targets.shape[-1:] == (1,) and targets.shape[:-1] == predictions.shape:
        return predictions, targets.squeeze(-1)
    raise ConfigError(f"a regression loss got predictions of shape {tuple(predictions.shape)} and targets "
                      f"of shape {tuple(targets.shape)}; they must match (a trailing 1 on either is squeezed)")


@dataclass(frozen=True)
class Loss:
    """A registered loss bound to its parameters; call it as ``loss(predictions, targets)``."""

    name: str
    reduction: str = "mean"
    params: dict[str, Any] = field(default_factory=dict)

    def unreduced(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The loss before reduction (per element; per sequence for ``physics_informed``)."""
        predictions, targets = aligned(predictions, targets)
        return _REGISTRY[self.name].fn(predictions, targets, **self.params)

    def __call__(self, predictions: Tensor, targets: Tensor) -> Tensor:
        values = self.unreduced(predictions, targets)
        if self.reduction == "mean":
            return values.mean()
        if self.reduction == "sum":
            return values.sum()
        return values


def build_loss(name: str = "mse", reduction: str = "mean", *, key: str = "objective.loss", **params: Any) -> Loss:
    """The registered loss ``name`` with ``params``; raises ConfigError naming ``<key>.<param>`` on a bad value."""
    if name not in _REGISTRY:
        raise ConfigError(f"{key}.name={name!r} is not a registered loss; available: {', '.join(sorted(_REGISTRY))}")
    if reduction not in REDUCTIONS:
        raise ConfigError(f"{key}.reduction={reduction!r} is not one of {', '.join(REDUCTIONS)}")
    entry = _REGISTRY[name]
    unknown = sorted(set(params) - set(entry.defaults))
    if unknown:
        known = ", ".join([*entry.defaults, "reduction"])
        raise ConfigError(f"{key}.{unknown[0]} is not a parameter of loss {name!r}; its parameters are: {known}")
    for param in entry.positive:
        value = params.get(param, entry.defaults[param])
        if not value > 0:
            raise ConfigError(f"{key}.{param}={value} must be > 0")
    for param in entry.non_negative:
        value = params.get(param, entry.defaults[param])
        if not value >= 0:
            raise ConfigError(f"{key}.{param}={value} must be >= 0")
    return Loss(name, reduction, {**entry.defaults, **params})


@register_loss("mse")
def mse(predictions: Tensor, targets: Tensor) -> Tensor:
    """Squared error."""
    return (predictions - targets).square()


@register_loss("mae")
def mae(predictions: Tensor, targets: Tensor) -> Tensor:
    """Absolute error."""
    return (predictions - targets).abs()


@register_loss("huber", positive=("delta",))
def huber(predictions: Tensor, targets: Tensor, delta: float = 1.0) -> Tensor:
    """Squared error / 2 within ``delta`` of the target, ``delta`` · (|error| − delta / 2) beyond."""
    return F.huber_loss(predictions, targets, reduction="none", delta=delta)


@register_loss("mape", positive=("epsilon",))
def mape(predictions: Tensor, targets: Tensor, epsilon: float = 1e-6) -> Tensor:
    """Absolute percentage error as a fraction: |error| / max(|target|, epsilon)."""
    return (predictions - targets).abs() / targets.abs().clamp(min=epsilon)


@register_loss("physics_informed", non_negative=("monotonicity", "smoothness"))
def physics_informed(predictions: Tensor, targets: Tensor, monotonicity: float = 0.1,
                     smoothness: float = 0.1) -> Tensor:
    """Per sequence (the last dimension is the sequence): mean squared error
    + ``monotonicity`` · mean(relu(p[t+1] − p[t])²), a penalty on increases,
    + ``smoothness`` · mean((p[t+2] − 2·p[t+1] + p[t])²), a penalty on curvature.

    A sequence too short for a difference contributes no penalty for it.
    """
    value = (predictions - targets).square().mean(dim=-1)
    first = predictions.diff(dim=-1)
    if first.shape[-1]:
        value = value + monotonicity * torch.relu(first).square().mean(dim=-1)
    second = first.diff(dim=-1)
    if second.shape[-1]:
        value = value + smoothness * second.square().mean(dim=-1)
    return value


def as_loss(loss: Loss | str | Mapping[str, Any] | Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """A loss from a name, a config node (``{"name": ..., **params}``), a ``Loss`` or any callable."""
    if isinstance(loss, str):
        return build_loss(loss)
    if isinstance(loss, Mapping):
        return build_loss(**dict(loss))
    return loss
