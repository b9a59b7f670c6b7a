"""A user's own sequence regression: an LSTM predicts battery capacity fade with the physics_informed loss.

Run from this folder::

    trainwire train model._target_=battery.CapacityLSTM data._target_=battery.cells \\
        objective=regression objective.loss=physics_informed stopping.monitor=val/rmse trainer.max_epochs=8

Each sample is one cell's first ``cycles`` charge cycles: per cycle its temperature and
charge rate, and the capacity left (a fraction of the new cell's), which only falls. The model
outputs ``(batch, cycles, 1)``; trainwire squeezes the trailing 1 to match the ``(batch, cycles)``
targets (any other mismatch is an error), so the loss's monotonicity and smoothness penalties
act along the cycles. Validation reports RMSE, MAE, MAPE (relative to the capacity) and R².
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class CapacityLSTM(nn.Module):
    """An LSTM over the cycles, then a linear read-out of the capacity at each cycle."""

    def __init__(self, features: int = 3, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, cycles: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(cycles)
        return self.head(states)  # (batch, cycles, 1)


def cells(seed: int, count: int = 400, cycles: int = 40) -> tuple[TensorDataset, TensorDataset]:
    """Synthetic cells: capacity 1 − a·(n/N)^b − noise, faster fade when hot or charged fast; 80/20 split."""
    generator = torch.Generator().manual_seed(seed)
    temperature = 0.5 + 0.5 * torch.rand(count, 1, generator=generator)  # scaled: 0.5 is 25 °C, 1.0 is 45 °C
    rate = 0.5 + torch.rand(count, 1, generator=generator)  # C-rate
    progress = torch.linspace(0, 1, cycles).expand(count, cycles)
    fade = (0.1 + 0.25 * temperature * rate) * progress ** (1.0 + 0.5 * torch.rand(count, 1, generator=generator))
    capacity = 1.0 - fade
    inputs = torch.stack([progress, temperature.expand(-1, cycles), rate.expand(-1, cycles)], dim=-1)
    inputs = inputs + 0.01 * torch.randn(inputs.shape, generator=generator)
    cut = count * 4 // 5
    return TensorDataset(inputs[:cut], capacity[:cut]), TensorDataset(inputs[cut:], capacity[cut:])
