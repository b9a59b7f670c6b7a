"""A user's own module: a small CNN and an image set, trained by trainwire from the command line.

Run from this folder (the console script imports modules from the working directory)::

    trainwire train model._target_=shapes.SmallCNN +model.channels=8 data._target_=shapes.images \\
        trainer.max_epochs=4

``images`` returns map-style Datasets, so trainwire builds the loaders itself: shuffled from
the seed, resumable mid-epoch, sharded under torchrun, ``data.batch_size`` per process.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

SIZE = 16
CLASSES = ("horizontal bar", "vertical bar", "square")


class SmallCNN(nn.Module):
    """Two 3×3 convolutions with pooling, then a linear classifier over ``classes``."""

    def __init__(self, channels: int = 4, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * channels * (SIZE // 4) ** 2, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))


def _draw(kind: int, generator: torch.Generator) -> torch.Tensor:
    image = torch.zeros(SIZE, SIZE)
    length = int(torch.randint(6, 12, (), generator=generator))
    row, col = (int(v) for v in torch.randint(0, SIZE - length, (2,), generator=generator))
    if kind == 0:
        image[row, col : col + length] = 1.0
    elif kind == 1:
        image[row : row + length, col] = 1.0
    else:
        side = length // 2
        image[row, col : col + side] = image[row + side, col : col + side + 1] = 1.0
        image[row : row + side, col] = image[row : row + side, col + side] = 1.0
    return image


def images(seed: int, samples: int = 900, noise: float = 0.3) -> tuple[TensorDataset, TensorDataset]:
    """Noisy 16×16 images of three shapes, 80 % for training and 20 % for validation; the same for a seed."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (samples,), generator=generator)
    pictures = torch.stack([_draw(int(label), generator) for label in labels])
    pictures = (pictures + noise * torch.randn(pictures.shape, generator=generator)).unsqueeze(1)
    cut = samples * 4 // 5
    return TensorDataset(pictures[:cut], labels[:cut]), TensorDataset(pictures[cut:], labels[cut:])
