"""Optimizer factories: the model's parameters are only known inside ``fit``, so the Trainer gets a factory."""

from __future__ import annotations

import functools
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
        options["betas"] = tuple(options["betas"])
    return functools.partial(OPTIMIZERS[type], lr=lr, weight_decay=weight_decay, **options)
