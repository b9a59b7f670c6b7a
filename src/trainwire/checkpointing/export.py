"""Weights out of a checkpoint: into a model to fine-tune it, or into a plain file for inference.

Both read a verified checkpoint (``format.read_checkpoint``), single-file or sharded (FSDP)
alike; nothing else of the run that wrote it (schedule, RNG, position) is applied.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from trainwire.checkpointing import sharding
from trainwire.checkpointing.format import read_checkpoint, write_file
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.errors import CheckpointError


def load_weights(path: str | os.PathLike[str], model: nn.Module, optimizer: Optimizer | None = None) -> dict[str, Any]:
    """Loads only the model's weights (and the optimizer's state, when given) from a verified checkpoint.

    For fine-tuning from someone else's run: nothing else of theirs (schedule, RNG, position)
    is applied. Returns the whole checkpoint for inspection.
    """
    state = read_checkpoint(path)
    missing = [key for key in ("model", "optimizer") if key not in state and (key == "model" or optimizer)]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no {' or '.join(missing)} state")
    if isinstance(state["model"], sharding.ShardedState):  # FSDP's shards, read whole (or resharded) into model
        state["model"].load_model(model)
        if optimizer is not None:
            state["optimizer"].load_optimizer(model, optimizer)
        return state
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state


def export_weights(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Writes the model's weights of a checkpoint to ``out`` as a plain state dict (``torch.save``), for inference.

    ``source`` is a run folder (its newest valid checkpoint), a checkpoint folder, or a checkpoint
    file; single-file and sharded (FSDP) checkpoints alike, read whole without a process group.
    Returns the checkpoint's path and the weights. ``out`` is written atomically.
    """
    source = Path(source)
    if source.is_dir():
        folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
        name = LocalCheckpointStore(folder).latest()
        if name is None:
            raise CheckpointError(f"{source} holds no checkpoint")
        source = folder / f"{name}.pt"
    state = read_checkpoint(source)
    if "model" not in state:
        raise CheckpointError(f"checkpoint {source} has no model state")
    weights = state["model"]
    if isinstance(weights, sharding.ShardedState):
        weights = weights.consolidate()
    out = Path(out)
    staged = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write_file(staged, lambda handle: torch.save(weights, handle))
        os.replace(staged, out)
    except OSError as error:
        raise CheckpointError(f"cannot write {out}: {error.strerror or error}") from None
    finally:
        staged.unlink(missing_ok=True)
    return source, weights
