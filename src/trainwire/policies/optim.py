"""Optimizer factories: the model's parameters are only known inside ``fit``, so the Trainer gets a factory.

``adamw``, ``adam`` and ``sgd`` are the ``optimizer`` options; their signatures are the options'
config keys and defaults (``optimizer.lr``, ``optimizer.betas``, ...).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from trainwire.errors import ConfigError

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def optimizer_factory(type: str, lr: float, weight_decay: float = 0.0, **options: Any) -> functools.partial:
    """A callable that builds the ``type`` optimizer over the parameters it is given."""
    if type not in OPTIMIZERS:
        raise ConfigError(f"optimizer.type={type!r} is not one of {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise ConfigError(f"optimizer.lr={lr} must be > 0")
    if weight_decay < 0:
        raise ConfigError(f"optimizer.weight_decay={weight_decay} must be >= 0")
    if "betas" in options:
        options["betas"] = betas = tuple(options["betas"])
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"optimizer.betas={list(betas)} must be two numbers in [0, 1)")
    if not options.get("momentum", 0) >= 0:
        raise ConfigError(f"optimizer.momentum={options['momentum']} must be >= 0")
    return functools.partial(OPTIMIZERS[type], lr=lr, weight_decay=weight_decay, **options)


def adamw(lr: float = 1e-3, weight_decay: float = 0.01, betas: Sequence[float] = (0.9, 0.999)) -> functools.partial:
    """AdamW (decoupled weight decay)."""
    return optimizer_factory("adamw", lr, weight_decay, betas=betas)


def adam(lr: float = 1e-3, weight_decay: float = 0.0, betas: Sequence[float] = (0.9, 0.999)) -> functools.partial:
    """Adam (L2 weight decay added to the gradient)."""
    return optimizer_factory("adam", lr, weight_decay, betas=betas)


def sgd(lr: float = 0.1, weight_decay: float = 0.0, momentum: float = 0.9, nesterov: bool = False) -> functools.partial:
    """SGD with momentum."""
    return optimizer_factory("sgd", lr, weight_decay, momentum=momentum, nesterov=nesterov)
