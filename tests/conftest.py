from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from trainwire import Classification, Trainer, TrainerSettings


def blobs(n: int = 256, features: int = 8, classes: int = 3, seed: int = 0):
    """Separable Gaussian blobs: a small classification task that trains in milliseconds."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, features, generator=g)
    return x, y


def batches(x, y, size: int):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


@pytest.fixture
def task():
    x, y = blobs()
    return batches(x[:192], y[:192], 16), batches(x[192:], y[192:], 32)


def make_model(seed: int = 0, features: int = 8, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


def nonfinite_policy(name: str):
    """The ``nonfinite=<name>`` option, built with its defaults (as the container builds it)."""
    from trainwire import registry

    return registry.build("nonfinite", {"type": name})


def make_trainer(**overrides) -> Trainer:
    settings = overrides.pop("settings", None) or TrainerSettings(max_epochs=3, device="cpu", log_every_n_steps=1)
    return Trainer(
        objective=overrides.pop("objective", Classification()),
        optimizer=overrides.pop("optimizer", functools.partial(torch.optim.SGD, lr=0.1)),
        settings=settings,
        **overrides,
    )


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module: tiny models gain nothing from more, and on a shared 2-core
    machine two threads per process contend and run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
