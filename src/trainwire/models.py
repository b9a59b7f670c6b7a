"""Models that the bundled configs build."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from trainwire.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


MAX_WIDTH = 2**24  # wider than any layer meant here; a typo of many digits fails as a value, not as memory


class MLP(nn.Sequential):
    """A multilayer perceptron: Linear → activation → dropout for each hidden width, then Linear.

    ``checkpointing=True`` opts in to gradient checkpointing: in training, each hidden block keeps
    only its input for backward and recomputes the rest (``torch.utils.checkpoint``, non-reentrant,
    RNG state preserved so dropout masks match), trading compute for activation memory. The
    results are the same; the state dict is the same, so checkpoints load either way.
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (128,),
                 activation: str = "relu", dropout: float = 0.0, checkpointing: bool = False) -> None:
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")
        for key, value in (("in_features", in_features), ("out_features", out_features),
                           *((f"hidden[{i}]", size) for i, size in enumerate(hidden))):
            if type(value) is not int or not 1 <= value <= MAX_WIDTH:
                raise ConfigError(f"model.{key}={value!r} must be an integer in [1, {MAX_WIDTH}]")
        layers: list[nn.Module] = []
        block_ends: list[int] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            block_ends.append(len(layers))
            width = size
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
        self.checkpointing = checkpointing
        self._block_ends = block_ends

    def _layers(self, inputs: Tensor, start: int, end: int) -> Tensor:
        for layer in list(self)[start:end]:
            inputs = layer(inputs)
        return inputs

    def forward(self, inputs: Tensor) -> Tensor:
        if not (self.checkpointing and torch.is_grad_enabled()):
            return super().forward(inputs)
        start = 0
        for end in self._block_ends:
            inputs = checkpoint(self._layers, inputs, start, end, use_reentrant=False)
            start = end
        return self._layers(inputs, start, len(self))
