"""Objectives: how a batch becomes a loss, and how a validation pass becomes metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainwire.errors import ConfigError
from trainwire.losses import Loss, as_loss


Reduce = Callable[[Tensor], Tensor]


def local(totals: Tensor) -> Tensor:
    """The reduction of a single process: the totals as they are."""
    return totals


class Objective(ABC):
    """Port: the task being learned."""

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        """Called per micro-batch in train mode (under autocast); returns the scalar mean loss."""

    @abstractmethod
    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = local) -> dict[str, float]:
        """Called once per validation pass in eval mode under ``no_grad``, batches already on the device.

        Returns metrics over the whole set (not means of per-batch values), ``loss`` among them.
        ``reduce`` sums a tensor of totals over every process (each sees a shard of the set; it
        may be empty): apply it to the sums, then divide, so the metrics cover the whole set.
        """

    def images(self) -> dict[str, Any]:
        """Images the last ``evaluate`` made (name -> ``numpy.uint8`` ``[H, W]`` or ``[H, W, 3]``), for the sinks.

        The Trainer sends each to ``sink.log_image`` as ``val/<name>`` after the validation pass;
        most objectives make none.
        """
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What the objective must keep across a resume (a metric schedule's position); most keep nothing."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""


class Classification(Objective):
    """Cross-entropy on ``(inputs, class_index)`` batches; reports loss and accuracy."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        inputs, targets = batch
        return F.cross_entropy(model(inputs), targets, label_smoothing=self.label_smoothing)

    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = local) -> dict[str, float]:
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
    """A registered loss (``mse`` by default, see ``trainwire.losses``) on ``(inputs, targets)`` batches.

    Reports, over the whole validation set: ``loss`` (the mean of the loss's unreduced values),
    ``mse``, ``rmse``, ``mae``, ``mape`` (a fraction, |error| / max(|target|, MAPE_EPSILON)) and ``r2``.
    """

    MAPE_EPSILON = 1.17e-6  # as torchmetrics and scikit-learn, so the numbers compare

    def __init__(self, loss: Loss | str | Mapping[str, Any] | Callable[[Tensor, Tensor], Tensor] = "mse") -> None:
        self.loss = as_loss(loss)
        if getattr(self.loss, "reduction", "mean") == "none":
            raise ConfigError("objective.loss.reduction='none' cannot train: the Trainer needs a scalar loss (mean or sum)")

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        inputs, targets = batch
        predictions = model(inputs)
        return self.loss(predictions, targets.reshape(predictions.shape).to(predictions.dtype))

    def _loss_sum(self, predictions: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        if isinstance(self.loss, Loss):
            values = self.loss.unreduced(predictions, targets)
            return values.sum(), values.numel()
        # Any other callable is taken to return a batch mean: weight it by the batch's size.
        return self.loss(predictions, targets) * len(targets), len(targets)

    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = local) -> dict[str, float]:
        sums: Tensor | None = None
        for inputs, targets in batches:
            predictions = model(inputs).float()
            targets = targets.reshape(predictions.shape).float()
            error = predictions - targets
            loss_sum, loss_count = self._loss_sum(predictions, targets)
            batch_sums = torch.stack(
                [error.square().sum(), error.abs().sum(), targets.sum(), targets.square().sum(),
                 torch.tensor(targets.numel(), dtype=torch.float32, device=targets.device),
                 (error.abs() / targets.abs().clamp(min=self.MAPE_EPSILON)).sum(),
                 loss_sum.float(), torch.tensor(loss_count, dtype=torch.float32, device=targets.device)]
            ).double()
            # Sums stay on the device: one sync at the end of the pass, not one per batch.
            sums = batch_sums if sums is None else sums + batch_sums
        totals = reduce(torch.zeros(8, dtype=torch.float64) if sums is None else sums)
        sse, sae, total, total_sq, n, sape, loss_total, loss_n = totals.tolist()
        if n == 0:
            raise ValueError("validation data is empty (0 samples)")
        mse = sse / n
        variance_sum = total_sq - total * total / n
        return {
            "loss": loss_total / loss_n,
            "mse": mse,
            "rmse": mse**0.5,
            "mae": sae / n,
            "mape": sape / n,
            "r2": 1.0 - sse / variance_sum if variance_sum > 0 else float("nan"),
        }
