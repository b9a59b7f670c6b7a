"""Objectives: how a batch becomes a loss, and how a validation pass becomes metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


Reduce = Callable[[Tensor], Tensor]


def _local(totals: Tensor) -> Tensor:
    return totals


class Objective(ABC):
    """Port: the task being learned."""

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        """Called per micro-batch in train mode (under autocast); returns the scalar mean loss."""

    @abstractmethod
    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = _local) -> dict[str, float]:
        """Called once per validation pass in eval mode under ``no_grad``, batches already on the device.

        Returns metrics over the whole set (not means of per-batch values), ``loss`` among them.
        ``reduce`` sums a tensor of totals over every process (each sees a shard of the set; it
        may be empty): apply it to the sums, then divide, so the metrics cover the whole set.
        """


class Classification(Objective):
    """Cross-entropy on ``(inputs, class_index)`` batches; reports loss and accuracy."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        inputs, targets = batch
        return F.cross_entropy(model(inputs), targets, label_smoothing=self.label_smoothing)

    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = _local) -> dict[str, float]:
        totals: Tensor | None = None  # loss sum, correct, count
        for inputs, targets in batches:
            logits = model(inputs)
            batch = torch.stack([F.cross_entropy(logits.float(), targets, reduction="sum"),
                                 (logits.argmax(dim=-1) == targets).sum().float(),
                                 torch.tensor(float(targets.numel()), device=logits.device)]).double()
            # Sums stay on the device: one sync at the end of the pass, not one per batch.
            totals = batch if totals is None else totals + batch
        loss_sum, correct, count = reduce(torch.zeros(3, dtype=torch.float64) if totals is None else totals).tolist()
        if not count:
            raise ValueError("validation data is empty (0 samples)")
        return {"loss": loss_sum / count, "accuracy": correct / count}


class Regression(Objective):
    """Mean squared error on ``(inputs, targets)`` batches; reports loss (MSE), MAE, RMSE and R²."""

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        inputs, targets = batch
        predictions = model(inputs)
        return F.mse_loss(predictions, targets.reshape(predictions.shape).to(predictions.dtype))

    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = _local) -> dict[str, float]:
        sums: Tensor | None = None
        for inputs, targets in batches:
            predictions = model(inputs).float()
            targets = targets.reshape(predictions.shape).float()
            error = predictions - targets
            batch_sums = torch.stack(
                [error.square().sum(), error.abs().sum(), targets.sum(), targets.square().sum(),
                 torch.tensor(targets.numel(), dtype=torch.float32, device=targets.device)]
            ).double()
            sums = batch_sums if sums is None else sums + batch_sums
        sse, sae, total, total_sq, n = reduce(torch.zeros(5, dtype=torch.float64) if sums is None else sums).tolist()
        if n == 0:
            raise ValueError("validation data is empty (0 samples)")
        mse = sse / n
        variance_sum = total_sq - total * total / n
        return {
            "loss": mse,
            "mse": mse,
            "rmse": mse**0.5,
            "mae": sae / n,
            "r2": 1.0 - sse / variance_sum if variance_sum > 0 else float("nan"),
        }
