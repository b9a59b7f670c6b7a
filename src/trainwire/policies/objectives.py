"""Objectives: how a batch becomes a loss, and how a validation pass becomes metrics."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainwire.errors import ConfigError
from trainwire.policies.losses import Loss, aligned, as_loss

Reduce = Callable[[Tensor], Tensor]
IGNORE_INDEX = -100  # the label that Hugging Face models and torch's cross_entropy leave out of the loss


def local(totals: Tensor) -> Tensor:
    """The reduction of a single process: the totals as they are."""
    return totals


class Objective(ABC):
    """Port: the task being learned.

    ``metric_names``, when an objective's own class states them, are the names its ``evaluate``
    reports: a ``metrics_every`` entry or a ``val/`` monitor for any other name is refused before
    the run starts (a subclass that adds metrics states its own, or none).
    """

    metric_names: tuple[str, ...] | None = None

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

    def check_batch(self, model: nn.Module, batch: Any) -> str | None:
        """What makes ``batch`` one this objective cannot learn from with ``model``, in one line; None when it fits.

        Called once per fit, on its first training batch (already on the device), in eval mode
        under ``no_grad``, before that batch trains: cheap checks of labels against the model's
        output (range, shape, dtype) that would otherwise fail inside the loss as a traceback
        (or, on a GPU, as a device-side assert). The default checks nothing and runs no forward.
        """
        return None

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


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {list(value.shape)} ({str(value.dtype).removeprefix('torch.')})"
    if isinstance(value, (tuple, list)):
        kinds = sorted({type(item).__name__ for item in value})
        return f"a {type(value).__name__} of {len(value)} {'/'.join(kinds) or 'items'}"
    return f"a {type(value).__name__}"


def _pair_output(model: nn.Module, batch: Any, name: str) -> tuple[Tensor, Tensor] | str:
    """The model's output and the targets of an ``(inputs, targets)`` batch, or why there are none (one line)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        return f"objective={name} takes (inputs, targets) batches; the batch is {_describe(batch)}"
    inputs, targets = batch
    if not isinstance(targets, Tensor):
        return f"the targets are {_describe(targets)}; objective={name} takes a tensor of them"
    if not isinstance(inputs, Tensor):  # a model's own error on strings or lists says nothing of the data
        try:
            output = model(inputs)
        except Exception as error:
            return (f"the inputs are {_describe(inputs)}, which the model cannot take ({type(error).__name__}: "
                    f"{' '.join(str(error).split())}); a sample's features must be numbers or tensors")
    else:
        output = model(inputs)
    if not isinstance(output, Tensor):
        return f"the model's output is {_describe(output)}; objective={name} takes a tensor"
    return output, targets


class Classification(Objective):
    """Cross-entropy on ``(inputs, class_index)`` batches; reports loss and accuracy."""

    metric_names = ("loss", "accuracy")

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing <= 1.0:
            raise ConfigError(f"objective.label_smoothing={label_smoothing} must be in [0, 1]")
        self.label_smoothing = label_smoothing

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        inputs, targets = batch
        return F.cross_entropy(model(inputs), targets, label_smoothing=self.label_smoothing)

    def check_batch(self, model: nn.Module, batch: Any) -> str | None:
        pair = _pair_output(model, batch, "classification")
        if isinstance(pair, str):
            return pair
        output, targets = pair
        if not output.is_floating_point() or output.dim() < 1:
            return f"the model's output is {_describe(output)}; objective=classification takes floating-point logits [batch, classes]"
        classes = output.shape[1] if output.dim() > 1 else output.shape[0]
        index_shape = output.shape[:1] + output.shape[2:] if output.dim() > 1 else torch.Size([])
        expected = (f"class indices of shape {list(index_shape)} (integers in [0, {classes - 1}]) or class "
                    f"probabilities of shape {list(output.shape)} (floats)")
        if targets.is_floating_point():
            if targets.shape != output.shape:
                return (f"the targets are {_describe(targets)} and the model's output is {_describe(output)}; "
                        f"objective=classification takes {expected}")
            return None
        if targets.dtype in (torch.bool, torch.complex64, torch.complex128) or targets.shape != index_shape:
            return (f"the targets are {_describe(targets)} and the model's output is {_describe(output)}; "
                    f"objective=classification takes {expected}")
        bad = ((targets < 0) & (targets != IGNORE_INDEX)) | (targets >= classes)  # -100: left out of the loss
        if bool(bad.any()):  # one sync, once per fit
            where = bad.nonzero()[0].tolist()
            return (f"label {int(targets[tuple(where)])} (sample {where[0]} of the batch) is out of range for the "
                    f"model's {classes} outputs: objective=classification takes class indices in [0, {classes - 1}] "
                    f"(or {IGNORE_INDEX}, left out of the loss); give the model one output per class")
        return None

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
    """A registered loss (``mse`` by default, see ``trainwire.policies.losses``) on ``(inputs, targets)`` batches.

    Predictions and targets must have one shape, up to a trailing 1 (``aligned``). Reports, over
    the whole validation set: ``loss`` (the mean of the loss's unreduced values), ``mse``,
    ``rmse``, ``mae``, ``mape`` and ``r2``. ``mape`` is relative to |target|: a fraction (0.05 is
    5 %), the mean of |error| / max(|target|, MAPE_EPSILON); on targets near zero, such as
    standardised ones, it is large and says little (read ``mae`` or ``r2`` there).
    """

    MAPE_EPSILON = 1.17e-6  # as torchmetrics and scikit-learn, so the numbers compare
    metric_names = ("loss", "mse", "rmse", "mae", "mape", "r2")

    def __init__(self, loss: Loss | str | Mapping[str, Any] | Callable[[Tensor, Tensor], Tensor] = "mse") -> None:
        self.loss = as_loss(loss)
        if getattr(self.loss, "reduction", "mean") == "none":
            raise ConfigError("objective.loss.reduction='none' cannot train: the Trainer needs a scalar loss (mean or sum)")

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        inputs, targets = batch
        predictions, targets = aligned(model(inputs), targets)
        return self.loss(predictions, targets.to(predictions.dtype))

    def check_batch(self, model: nn.Module, batch: Any) -> str | None:
        pair = _pair_output(model, batch, "regression")
        if isinstance(pair, str):
            return pair
        output, targets = pair
        if not output.is_floating_point() or targets.dtype in (torch.bool, torch.complex64, torch.complex128):
            return (f"the targets are {_describe(targets)} and the model's output is {_describe(output)}; "
                    "objective=regression takes floating-point predictions and numeric targets")
        try:
            aligned(output, targets)
        except ConfigError:
            return (f"the targets are {_describe(targets)} and the model's output is {_describe(output)}; "
                    "objective=regression takes targets of the output's shape (a trailing 1 on either is squeezed)")
        return None

    def _loss_sum(self, predictions: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        if isinstance(self.loss, Loss):
            values = self.loss.unreduced(predictions, targets)
            return values.sum(), values.numel()
        # Any other callable is taken to return a batch mean: weight it by the batch's size.
        return self.loss(predictions, targets) * len(targets), len(targets)

    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = local) -> dict[str, float]:
        sums: Tensor | None = None
        for inputs, targets in batches:
            predictions, targets = aligned(model(inputs).float(), targets.float())
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


def model_output_loss(output: Any) -> Tensor:
    """The loss a model returned: ``output.loss``, ``output["loss"]``, or the output itself when it is a scalar."""
    if isinstance(output, Mapping) and "loss" in output:
        loss = output["loss"]
    elif hasattr(output, "loss") and not isinstance(output, Tensor):
        loss = output.loss
    else:
        loss = output
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shown = type(output).__name__ if not isinstance(output, Tensor) else f"Tensor of shape {tuple(output.shape)}"
        raise ConfigError(f"objective=model_loss: the model returned a {shown}; it must return its loss as "
                          "output.loss, output['loss'] or a scalar tensor")
    return loss.reshape(())


def call_model(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a dict batch, ``model(*batch)`` for a tuple or list, ``model(batch)`` otherwise."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


class ModelLoss(Objective):
    """For models that compute their own loss (Hugging Face style): the batch goes in, the loss comes out.

    Dict batches call ``model(**batch)``, tuple batches ``model(*batch)``; the loss is the output's
    ``.loss`` or ``["loss"]`` (or the output, when it is a scalar). Validation reports ``loss``
    over the whole set: each batch's loss weighted by its number of target tokens when the batch
    has ``labels`` (those other than -100, the ignored label), by its number of samples otherwise;
    so a token-mean loss per batch becomes the exact token-mean over the set. ``perplexity``,
    ``exp(loss)``, is reported for language models: by default (``perplexity=None``) when the
    labels are integer token ids.
    """

    metric_names = ("loss", "perplexity")

    def __init__(self, perplexity: bool | None = None) -> None:
        self.perplexity = perplexity

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        return model_output_loss(call_model(model, batch))

    @staticmethod
    def _weight(batch: Any, device: torch.device) -> tuple[Tensor, bool]:
        """The batch's weight in the set's loss, and whether it counted integer labels (tokens)."""
        labels = batch.get("labels") if isinstance(batch, Mapping) else None
        if isinstance(labels, Tensor):
            if not labels.is_floating_point():
                return (labels != IGNORE_INDEX).sum().to(device, torch.float64), True
            return torch.tensor(float(len(labels)), dtype=torch.float64, device=device), False
        first = next(iter(batch.values() if isinstance(batch, Mapping) else batch
                          if isinstance(batch, (tuple, list)) else [batch]), None)
        size = len(first) if isinstance(first, Tensor) and first.dim() else 1
        return torch.tensor(float(size), dtype=torch.float64, device=device), False

    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = local) -> dict[str, float]:
        sums: Tensor | None = None  # weighted loss, weight, batches with token labels
        for batch in batches:
            loss = model_output_loss(call_model(model, batch)).detach().double()
            weight, tokens = self._weight(batch, loss.device)
            batch_sums = torch.stack([loss * weight, weight, torch.tensor(float(tokens), dtype=torch.float64,
                                                                           device=loss.device)])
            sums = batch_sums if sums is None else sums + batch_sums  # on the device: one sync per pass
        total, weight, token_batches = reduce(torch.zeros(3, dtype=torch.float64) if sums is None else sums).tolist()
        if not weight:
            raise ValueError("validation data is empty (0 samples or target tokens)")
        metrics = {"loss": total / weight}
        if self.perplexity or (self.perplexity is None and token_batches):
            metrics["perplexity"] = math.exp(min(metrics["loss"], 700.0))  # exp overflows a float past ~709
        return metrics
