"""A new run's first weights from elsewhere (``trainer.init_from``): weights only, into the model, before it trains.

The source is a run folder or a checkpoint folder (its ``best.pt`` when the run kept one, else its
newest valid checkpoint), a checkpoint file (verified against its manifest), a plain state dict
saved with ``torch.save`` (read with ``weights_only=True``), or a ``.safetensors`` file (needs
the optional ``safetensors`` package). Nothing else of the source (optimizer, schedule, RNG,
position) is applied: the run is new. Keys are strict: a model that does not fit the weights is
refused with one line naming the first missing and the first unexpected key; with
``trainer.init_strict=false`` the keys that fit (same name and shape) are loaded and the rest left
as initialised, and the log says how many.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from trainwire.checkpointing import sharding
from trainwire.checkpointing.export import weights_checkpoint
from trainwire.checkpointing.format import load_weights_only, read_checkpoint, read_manifest
from trainwire.errors import CheckpointError, ConfigError

KEY = "trainer.init_from"


def run_checkpoint(folder: Path) -> Path:
    """The checkpoint a run folder stands for, as ``export-weights`` ships it (``export.weights_checkpoint``)."""
    try:
        return weights_checkpoint(folder)
    except CheckpointError as error:
        raise ConfigError(f"{KEY}={str(folder)!r}: {error}") from None


def read_weights(source: str | os.PathLike[str]) -> tuple[dict[str, Tensor], Path]:
    """The model weights ``source`` holds, on the CPU, and the file they were read from."""
    path = Path(source)
    if path.is_dir():
        path = run_checkpoint(path)
    elif not path.is_file():
        raise ConfigError(f"{KEY}={str(source)!r}: no such file or folder")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(f"{KEY}={str(source)!r} is a safetensors file, and safetensors is not installed "
                              "(pip install safetensors)") from None
        return load_file(path, device="cpu"), path
    manifest = read_manifest(path.parent)
    if manifest is not None and path.name in {**manifest["files"], **manifest["pending"]}:
        state: Any = read_checkpoint(path)  # a run's checkpoint: verified first
    else:
        try:
            state = load_weights_only(path)
        except ValueError as error:
            raise CheckpointError(f"{KEY}={str(source)!r} was refused: {error}") from None
    if isinstance(state, dict) and "format" in state and "model" in state:  # a checkpoint (also one copied alone)
        state = state["model"]
        if isinstance(state, sharding.ShardedState):
            state = state.consolidate()
    if not isinstance(state, dict) or not state or not all(isinstance(value, Tensor) for value in state.values()):
        raise ConfigError(f"{KEY}={str(source)!r} holds neither a checkpoint nor a state dict of tensors")
    return state, path


def load_initial_weights(model: nn.Module, source: str | os.PathLike[str], *, strict: bool, log: Any) -> None:
    """Loads the weights ``source`` holds into ``model`` (see the module's docstring); ConfigError when they do not fit."""
    weights, path = read_weights(source)
    own = model.state_dict()
    missing = [key for key in own if key not in weights]
    unexpected = [key for key in weights if key not in own]
    reshaped = [key for key in own if key in weights and weights[key].shape != own[key].shape]
    if strict and (missing or unexpected or reshaped):
        first = reshaped[0] if reshaped else None
        problems = [f"{what} {keys[0]!r}" + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")
                    for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        if first is not None:
            problems.append(f"{first!r} is {list(weights[first].shape)} there, {list(own[first].shape)} in the model"
                            + (f" (and {len(reshaped) - 1} more)" if len(reshaped) > 1 else ""))
        raise ConfigError(f"{KEY}={str(source)!r} does not fit the model ({'; '.join(problems)}); "
                          "set trainer.init_strict=false to load the keys that fit")
    fitting = {key: value for key, value in weights.items() if key in own and key not in reshaped}
    model.load_state_dict(fitting, strict=False)
    log.info("init_from", source=str(path), loaded=len(fitting), of=len(own),
             **({"left_as_initialised": len(own) - len(fitting), "ignored": len(unexpected)} if not strict else {}))
