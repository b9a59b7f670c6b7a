"""Validation metrics are computed over the whole set, not averaged per batch, and logged as val/<name>."""

from __future__ import annotations

import functools

import pytest
import torch

from trainwire import Classification, Regression, Trainer, TrainerSettings
from trainwire.testing import RecordingSink


class Fixed(torch.nn.Module):
    """Returns the first input column as the prediction: metrics are then known by hand."""

    def forward(self, x):
        return x[:, :1]


def regression_batches():
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(13, 1, generator=g) * 3 + 1
    predictions = targets + torch.randn(13, 1, generator=g) * torch.linspace(0.1, 3, 13).unsqueeze(-1)
    sizes = (2, 8, 3)  # uneven batches make per-batch means differ from whole-set values
    return list(zip(predictions.split(sizes), targets.split(sizes))), predictions, targets


def whole_set(p, t):
    e = p - t
    mse = e.square().mean().item()
    return {"mse": mse, "rmse": mse**0.5, "mae": e.abs().mean().item(), "mape": (e.abs() / t.abs()).mean().item(),
            "r2": 1 - e.square().sum().item() / (t - t.mean()).square().sum().item()}


def test_regression_metrics_are_whole_set_values_that_differ_from_per_batch_means():
    data, p, t = regression_batches()
    with torch.no_grad():
        got = Regression().evaluate(Fixed(), data)
        per_batch = [Regression().evaluate(Fixed(), [batch]) for batch in data]
    expected = whole_set(p, t)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-5), name
    assert got["loss"] == pytest.approx(expected["mse"], rel=1e-5)
    for name in ("rmse", "mae", "mape", "r2"):
        averaged = sum(m[name] for m in per_batch) / len(per_batch)
        assert abs(averaged - got[name]) > 0.02 * abs(got[name]), name  # a per-batch average would be wrong


def test_accuracy_is_whole_set_not_a_mean_of_batch_accuracies():
    logits = torch.eye(3)[[0, 1, 2, 0, 0, 0]]
    targets = torch.tensor([0, 0, 0, 0, 0, 0])  # right on samples 0, 3, 4, 5 -> 4/6
    data = [(logits[:2], targets[:2]), (logits[2:], targets[2:])]  # batch accuracies 1/2 and 3/4
    with torch.no_grad():
        got = Classification().evaluate(torch.nn.Identity(), data)
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert (0.5 + 0.75) / 2 != pytest.approx(4 / 6)


class FirstColumn(torch.nn.Module):
    """Predicts the first input column plus 0 × a parameter: trainable, yet its predictions never change."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x[:, :1] + 0 * self.unused


def test_the_trainer_logs_the_whole_set_values_as_val_names():
    data, p, t = regression_batches()
    sink = RecordingSink()
    trainer = Trainer(objective=Regression(), optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                      settings=TrainerSettings(max_epochs=1, device="cpu"), sink=sink)
    trainer.fit(FirstColumn(), [(torch.randn(4, 1), torch.randn(4, 1))], data)
    logged = [r.metrics for r in sink.records if "val/rmse" in r.metrics][0]
    for name, value in whole_set(p, t).items():
        assert logged[f"val/{name}"] == pytest.approx(value, rel=1e-5), name
