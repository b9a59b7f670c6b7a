"""Bundled datasets and their loaders.

Both sets ship inside the package (``trainwire/datasets``), so nothing is downloaded at run
time: the UCI 8×8 handwritten digits (1,797 images, 10 classes) for classification and the
diabetes progression set (442 patients, 10 features) for regression.
"""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainwire.errors import ConfigError


class Loaders(NamedTuple):
    train: DataLoader
    val: DataLoader | None


def _load(name: str) -> dict[str, torch.Tensor]:
    with resources.files("trainwire.datasets").joinpath(f"{name}.pt").open("rb") as handle:
        return torch.load(handle, weights_only=True)


def _split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return order[n_val:], order[:n_val]


def _loaders(x: torch.Tensor, y: torch.Tensor, val_idx: torch.Tensor, train_idx: torch.Tensor,
             batch_size: int, seed: int, num_workers: int, train_samples: int | None = None) -> Loaders:
    if batch_size < 1:
        raise ConfigError(f"data.batch_size={batch_size} must be >= 1")
    if train_samples is not None:
        if not 1 <= train_samples <= len(train_idx):
            raise ConfigError(f"data.train_samples={train_samples} must be in [1, {len(train_idx)}] (the training split)")
        train_idx = train_idx[:train_samples]  # the split is already shuffled: a random subset, the same for a seed
    train = DataLoader(
        TensorDataset(x[train_idx], y[train_idx]), batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed), num_workers=num_workers,
    )
    val = None
    if len(val_idx):
        val = DataLoader(TensorDataset(x[val_idx], y[val_idx]), batch_size=batch_size * 4, num_workers=num_workers)
    return Loaders(train, val)


def digits(batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0,
           train_samples: int | None = None) -> Loaders:
    """8×8 digits as 64 features scaled to [0, 1]; targets are class indices 0–9.

    ``train_samples`` keeps only that many training samples (e.g. a small labelled subset); the
    validation split is unchanged.
    """
    raw = _load("digits")
    x, y = raw["x"].float() / 16.0, raw["y"].long()
    train_idx, val_idx = _split(len(x), val_fraction, seed)
    return _loaders(x, y, val_idx, train_idx, batch_size, seed, num_workers, train_samples)


def diabetes(batch_size: int = 32, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0,
             train_samples: int | None = None) -> Loaders:
    """Diabetes progression: 10 features and the target, standardised with the training split's statistics."""
    raw = _load("diabetes")
    x, y = raw["x"], raw["y"]
    train_idx, val_idx = _split(len(x), val_fraction, seed)
    x_mean, x_std = x[train_idx].mean(0), x[train_idx].std(0)
    y_mean, y_std = y[train_idx].mean(), y[train_idx].std()
    x, y = (x - x_mean) / x_std, ((y - y_mean) / y_std).unsqueeze(-1)
    return _loaders(x, y, val_idx, train_idx, batch_size, seed, num_workers, train_samples)
