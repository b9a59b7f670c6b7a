"""Trains the digits classifier whose features the Fréchet distance uses, and writes its weights.

    python scripts/train_digits_features.py   # -> src/trainwire/datasets/digits_features.pt

Trained with trainwire's own Trainer on the bundled digits (80/20 split, seed 0) and written
as a plain state dict (``torch.load(weights_only=True)``). Re-running it on another torch build
may give other weights; the Fréchet distances of runs measured with different files do not compare.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainwire.data import digits
from trainwire.loop.trainer import Trainer, TrainerSettings
from trainwire.paradigms.frechet import FEATURES_FILE, DigitsFeatures
from trainwire.policies.lr import WarmupCosine
from trainwire.policies.objectives import Classification
from trainwire.policies.optim import optimizer_factory

OUT = Path(__file__).resolve().parents[1] / "src" / "trainwire" / "datasets" / FEATURES_FILE


def main() -> None:
    torch.manual_seed(0)
    network = DigitsFeatures()
    loaders = digits(batch_size=64, val_fraction=0.2, seed=0)
    trainer = Trainer(objective=Classification(), optimizer=optimizer_factory(type="adamw", lr=3e-3),
                      lr_policy=WarmupCosine(warmup_epochs=2),
                      settings=TrainerSettings(max_epochs=40, device="cpu"))
    result = trainer.fit(network.classifier, loaders.train, loaders.val)
    print(f"val/accuracy {result.history[-1]['val/accuracy']:.4f}")
    state = {key: value.detach().clone().contiguous() for key, value in network.classifier.state_dict().items()}
    torch.save(state, OUT)
    print(OUT, f"{OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
