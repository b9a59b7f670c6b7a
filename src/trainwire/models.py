"""Models that the bundled configs build."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from trainwire.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLP(nn.Sequential):
    """A multilayer perceptron: Linear → activation → dropout for each hidden width, then Linear."""

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (128,),
                 activation: str = "relu", dropout: float = 0.0) -> None:
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
