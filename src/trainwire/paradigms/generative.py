"""Generative training by negative log-likelihood: the criterion receives the whole model.

A density model exposes ``energy(x)`` (the unnormalised negative log-density of each sample)
and ``log_normaliser()`` (log Z, which depends on the parameters); ``nll(model, x) = energy(x) +
log Z``. Predictions alone would not be enough: the normaliser is a property of the model, so
``NegativeLogLikelihood`` hands its criterion the model, not a model output. Any module with
those two methods (a normalising flow, an energy model with a tractable Z) trains the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainwire.errors import ConfigError
from trainwire.paradigms.frechet import FrechetDistance, sample_grid
from trainwire.policies.objectives import Objective, Reduce, local


class Density(Protocol):
    def energy(self, inputs: Tensor) -> Tensor:
        """Unnormalised negative log-density, one value per sample."""

    def log_normaliser(self) -> Tensor:
        """log Z, a scalar: the log of the integral of exp(-energy)."""


def nll(model: Density, inputs: Tensor) -> Tensor:
    """Negative log-likelihood of each sample, in nats: energy + log Z."""
    return model.energy(inputs) + model.log_normaliser()


class GaussianDensity(nn.Module):
    """A full-covariance Gaussian with learned mean and Cholesky factor (diagonal ≥ ``min_scale``)."""

    def __init__(self, features: int, min_scale: float = 0.05) -> None:
        if not min_scale > 0:
            raise ConfigError(f"model.min_scale={min_scale} must be > 0")
        super().__init__()
        self.min_scale = min_scale
        self.loc = nn.Parameter(torch.zeros(features))
        # softplus(0.5413) ≈ 1: the density starts as a unit Gaussian.
        self.raw_scale = nn.Parameter(torch.eye(features) * 0.5413)

    def scale_tril(self) -> Tensor:
        diagonal = F.softplus(self.raw_scale.diagonal()) + self.min_scale
        return torch.tril(self.raw_scale, diagonal=-1) + torch.diag_embed(diagonal)

    def energy(self, inputs: Tensor) -> Tensor:
        centred = (inputs - self.loc).unsqueeze(-1)
        z = torch.linalg.solve_triangular(self.scale_tril(), centred, upper=False).squeeze(-1)
        return 0.5 * z.square().sum(-1)

    def log_normaliser(self) -> Tensor:
        d = self.loc.numel()
        return 0.5 * d * math.log(2 * math.pi) + self.scale_tril().diagonal().log().sum()

    def forward(self, inputs: Tensor) -> Tensor:
        """The log-density of each sample."""
        return -nll(self, inputs)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(n, self.loc.numel(), generator=generator).to(self.loc.device)  # a CPU generator, any device
        return self.loc + noise @ self.scale_tril().T


class NegativeLogLikelihood(Objective):
    """Trains a density model on the inputs of each batch (labels ignored); ``criterion(model, inputs)``.

    Reports ``loss`` (the whole-set mean NLL per sample, in nats) and ``bits_per_dim``. With
    ``eval_samples`` > 0 it also draws that many samples from the model (``model.sample(n, generator)``)
    and reports their ``frechet_distance`` to the validation inputs (``trainwire.paradigms.frechet``) and a
    grid of them as the ``samples`` image.
    """

    def __init__(self, criterion: Callable[[Any, Tensor], Tensor] = nll, eval_samples: int = 0) -> None:
        if type(eval_samples) is not int or eval_samples == 1 or eval_samples < 0:
            raise ConfigError(f"objective.eval_samples={eval_samples!r} must be 0 (no samples) or an integer >= 2")
        self.criterion, self.eval_samples = criterion, eval_samples
        self.frechet, self._images = FrechetDistance(), {}

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.criterion(model, inputs).mean()

    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = local,
                 skip: Collection[str] = ()) -> dict[str, float]:
        total, count, dims, real = None, 0, 1, []
        for batch in batches:
            inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
            real.append(inputs)
            batch_total = self.criterion(model, inputs).float().sum()
            total = batch_total if total is None else total + batch_total
            count, dims = count + len(inputs), inputs[0].numel()
        sums = torch.tensor([0.0 if total is None else total.item(), count], dtype=torch.float64)
        total_sum, count_sum = reduce(sums).tolist()
        if not count_sum:
            raise ValueError("validation data is empty (0 samples)")
        mean = total_sum / count_sum
        metrics = {"loss": mean, "bits_per_dim": mean / (dims * math.log(2))}
        self._images = {}
        if self.eval_samples:
            if not callable(getattr(model, "sample", None)):
                raise ConfigError(f"objective.eval_samples={self.eval_samples} needs a model with sample(n, generator); "
                                  f"{type(model).__name__} has none (set objective.eval_samples=0)")
            # The same noise every epoch (and on every process): the samples change only with the model.
            generated = model.sample(self.eval_samples, generator=torch.Generator().manual_seed(0))
            if "frechet_distance" not in skip:
                metrics["frechet_distance"] = self.frechet(generated, real, reduce)
            if "samples" not in skip:
                self._images = {"samples": sample_grid(generated)}
        return metrics

    def images(self) -> dict[str, Any]:
        return self._images
