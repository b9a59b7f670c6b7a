"""Staged training: self-supervised pre-training of an encoder, then a predictor that reuses it.

Stage 1 trains a ``MaskedAutoencoder`` (an ``Encoder`` and a linear decoder) with the
``MaskedReconstruction`` objective: a random share of the input features is zeroed and the
model is scored on how well it fills them back in; labels are never read. ``save_encoder``
writes the encoder to a file (``paradigm=pretrain`` does it at the end of the run, to
``<run_dir>/encoder.pt``). Stage 2 builds a ``Predictor`` (the encoder and a linear head) with
``Predictor.build(..., encoder=path, freeze_base=...)``: frozen, the encoder's parameters do
not require gradients, so the Trainer leaves them out of the optimizer.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainwire.checkpointing.format import load_weights_only
from trainwire.errors import ConfigError
from trainwire.models import ACTIVATIONS
from trainwire.policies.objectives import Objective, Reduce, local

ENCODER_FORMAT = "trainwire.encoder/1"


class Encoder(nn.Sequential):
    """Linear → activation for each hidden width, then Linear → activation to ``embedding`` features."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (128,), embedding: int = 64,
                 activation: str = "relu") -> None:
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if embedding < 1:
            raise ConfigError(f"model.embedding={embedding} must be >= 1")
        self.arch = {"in_features": in_features, "hidden": list(hidden), "embedding": embedding,
                     "activation": activation}
        layers: list[nn.Module] = []
        width = in_features
        for size in [*hidden, embedding]:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            width = size
        super().__init__(*layers)


class MaskedAutoencoder(nn.Module):
    """Stage 1's model: ``decoder(encoder(x))`` reconstructs all ``in_features`` inputs."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (128,), embedding: int = 64,
                 activation: str = "relu") -> None:
        super().__init__()
        self.encoder = Encoder(in_features, hidden, embedding, activation)
        self.decoder = nn.Linear(embedding, in_features)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.decoder(self.encoder(inputs))


class Predictor(nn.Module):
    """Stage 2's model: ``head(encoder(x))``. With ``freeze_base`` the encoder stays fixed, in eval mode."""

    def __init__(self, encoder: Encoder, out_features: int, freeze_base: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.arch["embedding"], out_features)
        self.freeze_base = freeze_base
        if freeze_base:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> Predictor:
        super().train(mode)
        if self.freeze_base:  # a frozen base never switches to train mode (dropout, batch-norm statistics)
            self.encoder.eval()
        return self

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.encoder(inputs))

    @classmethod
    def build(cls, in_features: int, out_features: int, hidden: Sequence[int] = (128,), embedding: int = 64,
              activation: str = "relu", encoder: str | None = None, freeze_base: bool = False) -> Predictor:
        """A predictor whose encoder is loaded from ``encoder`` (a file of ``save_encoder``), or fresh when None."""
        if freeze_base and not encoder:
            raise ConfigError("freeze_base=true needs encoder=<path of a pre-trained encoder.pt>; "
                              "a frozen random encoder would learn nothing")
        base = Encoder(in_features, hidden, embedding, activation)
        if encoder:
            load_encoder(base, encoder)
        return cls(base, out_features, freeze_base)


def save_encoder(encoder: Encoder, path: str | os.PathLike) -> Path:
    """Writes the encoder's architecture and weights to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": ENCODER_FORMAT, "arch": encoder.arch,
               "state_dict": {k: v.detach().to("cpu") for k, v in encoder.state_dict().items()}}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_encoder(encoder: Encoder, path: str | os.PathLike) -> Encoder:
    """Loads weights saved by ``save_encoder`` into ``encoder`` (``weights_only=True``); checks the architecture."""
    if not Path(path).is_file():
        raise ConfigError(f"encoder={str(path)!r} is not a file (stage 1 writes <run_dir>/encoder.pt)")
    try:
        payload = load_weights_only(path)
    except ValueError as error:
        raise ConfigError(f"encoder={str(path)!r} was refused: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
        raise ConfigError(f"encoder={str(path)!r} is not an encoder saved by trainwire ({ENCODER_FORMAT})")
    if payload["arch"] != encoder.arch:
        raise ConfigError(f"encoder={str(path)!r} holds an encoder with {payload['arch']}, "
                          f"but the config builds {encoder.arch}")
    encoder.load_state_dict(payload["state_dict"])
    return encoder


def _inputs(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (list, tuple)) else batch


class MaskedReconstruction(Objective):
    """Self-supervised: zero a random ``mask_ratio`` of the features, score the reconstruction of those features.

    Reads only the inputs of each batch (labels, if any, are ignored). Validation uses a fixed
    mask (seeded by ``seed``), so epochs compare; it reports ``loss``, the whole-set mean
    squared error over the masked features.
    """

    def __init__(self, mask_ratio: float = 0.5, seed: int = 0) -> None:
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"objective.mask_ratio={mask_ratio} must be in (0, 1)")
        self.mask_ratio, self.seed = mask_ratio, seed

    def _sums(self, model: nn.Module, inputs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        reconstruction = model(inputs.masked_fill(mask, 0.0)).float()
        return ((reconstruction - inputs.float()).square() * mask).sum(), mask.sum()

    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        inputs = _inputs(batch)
        mask = torch.rand(inputs.shape, device=inputs.device) < self.mask_ratio
        total, count = self._sums(model, inputs, mask)
        return total / count.clamp(min=1)

    def evaluate(self, model: nn.Module, batches: Iterable[Any], reduce: Reduce = local) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.seed)
        total = count = None
        for batch in batches:
            inputs = _inputs(batch)
            mask = (torch.rand(inputs.shape, generator=generator) < self.mask_ratio).to(inputs.device)
            batch_total, batch_count = self._sums(model, inputs, mask)
            total = batch_total if total is None else total + batch_total
            count = batch_count if count is None else count + batch_count
        sums = torch.zeros(2, dtype=torch.float64) if count is None else torch.stack([total, count]).double()
        total_sum, count_sum = reduce(sums).tolist()
        if count_sum == 0:
            raise ValueError("validation data is empty (0 samples)")
        return {"loss": total_sum / count_sum}
