"""Paradigms: what happens around the one loop (``paradigm=`` in config).

Which step runs inside the loop is the ``step`` group's choice (``step=gan``: the GAN's
critic/generator alternation, ``trainwire.paradigms.gan.GANStep``; ``step=gbdt``); most runs
need no more than the loop with another ``Objective``, model or step. A paradigm is the place
for what happens *around* the loop (``Pretrain`` saves the encoder when training ends); none of
them has a loop of its own, and any paradigm runs with any step (ADR 0025).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from trainwire.errors import ConfigError
from trainwire.loop.signals import StopToken
from trainwire.loop.trainer import FitResult, Trainer


class Paradigm(ABC):
    """Port: runs one training job on a model and its data."""

    @abstractmethod
    def run(self, model: nn.Module, train_data: Iterable[Any], val_data: Iterable[Any] | None = None, *,
            stop: StopToken | None = None) -> FitResult:
        """Trains ``model`` (in place) and returns what happened; ``stop`` ends it early from any thread."""


class Supervised(Paradigm):
    """The default: ``trainer.fit(model, train_data, val_data)``, nothing around it."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def run(self, model: nn.Module, train_data: Iterable[Any], val_data: Iterable[Any] | None = None, *,
            stop: StopToken | None = None) -> FitResult:
        return self.trainer.fit(model, train_data, val_data, stop=stop)


class Pretrain(Paradigm):
    """Stage 1 of staged training: fits, then saves ``model.encoder`` (the best epoch's) to ``save_to``.

    A relative ``save_to`` is under ``run_dir`` (when given).
    """

    def __init__(self, trainer: Trainer, save_to: str | os.PathLike = "encoder.pt", *,
                 run_dir: str | os.PathLike | None = None) -> None:
        self.trainer, self.save_to = trainer, Path(run_dir or "") / save_to

    def run(self, model: nn.Module, train_data: Iterable[Any], val_data: Iterable[Any] | None = None, *,
            stop: StopToken | None = None) -> FitResult:
        from trainwire.paradigms.pretraining import save_encoder

        encoder = getattr(model, "encoder", None)
        if encoder is None:
            raise ConfigError(f"paradigm=pretrain needs a model with an .encoder (e.g. model=masked_autoencoder); "
                              f"got {type(model).__name__}")
        result = self.trainer.fit(model, train_data, val_data, stop=stop)
        save_encoder(encoder, self.save_to)
        self.trainer.log.info("encoder_saved", path=str(self.save_to))
        return result
