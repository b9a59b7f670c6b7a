"""The Fréchet distance between generated and real samples, in the feature space of a small digits classifier.

For two Gaussians fitted to features (means μ₁, μ₂, covariances Σ₁, Σ₂) the distance is
``‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)`` (the squared 2-Wasserstein distance; FID
when the features are Inception's). ``(Σ₁ Σ₂)^½`` is usually taken with ``scipy.linalg.sqrtm``
of a non-symmetric product, which turns complex or NaN when the covariances are singular (few
samples in many dimensions). Here both roots are of symmetric positive semi-definite
matrices, taken by eigen-decomposition in float64 with negative rounding noise clipped to
zero, so the result is real and finite; only the trace of the inner root is needed, and that
is the sum of the square roots of ``Σ₁^½ Σ₂ Σ₁^½``'s eigenvalues.

The features are the last hidden layer (64 wide) of ``DigitsFeatures``, an MLP trained once on
the bundled 8×8 digits by ``scripts/train_digits_features.py`` and shipped as
``trainwire/data/datasets/digits_features.pt`` (nothing is downloaded).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from importlib import resources

import numpy as np
import torch
from torch import Tensor, nn

from trainwire.errors import ConfigError
from trainwire.models import MLP
from trainwire.policies.objectives import Reduce, local
from trainwire.sinks.images import grid

FEATURES_FILE = "digits_features.pt"


def sqrtm_psd(matrix: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below 0 read as 0)."""
    matrix = matrix.double()
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½), in float64."""
    mean_a, cov_a, mean_b, cov_b = (t.double() for t in (mean_a, cov_a, mean_b, cov_b))
    root_a = sqrtm_psd(cov_a)
    inner = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(distance.item(), 0.0)  # rounding can leave -1e-12 for identical distributions


class Moments:
    """Sums that give a mean and a covariance, added over batches and over processes (``reduce``)."""

    def __init__(self) -> None:
        self.sums: Tensor | None = None  # [count, Σx, Σxxᵀ] flattened, float64

    def add(self, features: Tensor) -> None:
        features = features.double()
        batch = torch.cat([torch.tensor([float(len(features))], dtype=torch.float64, device=features.device),
                           features.sum(0), (features.T @ features).flatten()])
        self.sums = batch if self.sums is None else self.sums + batch

    def mean_cov(self, dims: int, reduce: Reduce = local) -> tuple[Tensor, Tensor]:
        sums = self.sums if self.sums is not None else torch.zeros(1 + dims + dims * dims, dtype=torch.float64)
        sums = reduce(sums).cpu()
        count, total, outer = sums[0].item(), sums[1 : 1 + dims], sums[1 + dims :].reshape(dims, dims)
        if count < 2:
            raise ValueError(f"a covariance needs at least 2 samples; got {count:g}")
        mean = total / count
        return mean, (outer - count * torch.outer(mean, mean)) / (count - 1)


class DigitsFeatures(nn.Module):
    """The shipped digits classifier (64 → 128 → 64 → 10); ``forward`` gives the 64 features before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = MLP(64, 10, hidden=[128, 64])

    def forward(self, inputs: Tensor) -> Tensor:
        for layer in list(self.classifier)[:-1]:  # every layer but the class head
            inputs = layer(inputs)
        return inputs


def digits_features() -> DigitsFeatures:
    """The shipped feature network, in eval mode, on the CPU."""
    # Building the layers draws their initial weights from the global RNG; loading it mid-run must
    # not move the run's random stream (a resumed run would then differ from an uninterrupted one).
    with torch.random.fork_rng(devices=[]):
        network = DigitsFeatures()
    with resources.files("trainwire.data.datasets").joinpath(FEATURES_FILE).open("rb") as handle:
        network.classifier.load_state_dict(torch.load(handle, weights_only=True))
    return network.eval().requires_grad_(False)


def sample_grid(samples: Tensor, count: int = 64) -> np.ndarray:
    """The first ``count`` samples as a grid image: 8×8 tiles for digits, square tiles when the width is a square."""
    width = samples.shape[-1]
    side = math.isqrt(width)
    return grid(samples[:count], (side, side) if side * side == width else (1, width))


class FrechetDistance:
    """Measures generated samples against real ones in ``DigitsFeatures``' space (8×8 digits, pixels in [0, 1])."""

    def __init__(self) -> None:
        self._network: DigitsFeatures | None = None  # loaded at first use (a few ms)

    def features(self, inputs: Tensor) -> Tensor:
        if inputs.shape[-1] != 64:
            raise ConfigError(f"the Fréchet distance is measured on 8x8 digits (64 features); the data have "
                              f"{inputs.shape[-1]} (use data=digits, or objective.eval_samples=0)")
        if self._network is None:
            self._network = digits_features()
        network = self._network.to(inputs.device)
        return network(inputs.float())

    def __call__(self, generated: Tensor, real: Iterable[Tensor], reduce: Reduce = local) -> float:
        """The distance of ``generated`` (this process's, the same on each) to every batch of ``real`` (sharded)."""
        real_moments, generated_moments = Moments(), Moments()
        for inputs in real:
            real_moments.add(self.features(inputs))
        generated_moments.add(self.features(generated))
        dims = 64
        return frechet_distance(*generated_moments.mean_cov(dims), *real_moments.mean_cov(dims, reduce))
