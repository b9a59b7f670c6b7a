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
from trainwire.checkpointing.format import (
    MANIFEST,
    read_checkpoint,
    read_manifest,
    write_file,
)
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.errors import CheckpointError, ConfigError


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


FORMATS = ("torch", "safetensors")  # export_weights' file formats: torch.save's pickle, or safetensors' flat tensors


def weights_checkpoint(folder: str | os.PathLike[str]) -> Path:
    """The checkpoint a run folder (or its ``checkpoints/`` folder) ships: ``best.pt`` when the run kept one, else its newest.

    ``best.pt`` holds the model at the best monitored value, the weights one would deploy; a run
    that never validated (no monitored value) keeps none, and its newest checkpoint is taken.
    """
    folder = _checkpoints_of(Path(folder))
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is not None and "best.pt" in manifest.get("files", {}):
        return folder / "best.pt"  # read_checkpoint verifies it; a damaged best.pt is refused, not swapped for last.pt
    return newest_checkpoint(folder)


def newest_checkpoint(folder: str | os.PathLike[str]) -> Path:
    """The newest valid checkpoint of a run folder (or of its ``checkpoints/`` folder): what a resume continues."""
    folder = _checkpoints_of(Path(folder))
    name = LocalCheckpointStore(folder).latest()
    if name is None:
        raise CheckpointError(f"{folder} holds no checkpoint")
    return folder / f"{name}.pt"


def _checkpoints_of(folder: Path) -> Path:
    return folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder


def _checkpoint_folder_around(out: Path) -> Path | None:
    """The checkpoint folder ``out`` would be written into (symlinks resolved), or None.

    A checkpoint folder holds a ``manifest.json``, or is a run folder's ``checkpoints/``: a file
    written there could replace a checkpoint (``last.pt``) or be pruned or taken for one.
    """
    resolved = out.resolve()
    for folder in (resolved, *resolved.parents):  # the folder itself too: -o RUN/checkpoints
        if (folder / MANIFEST).is_file():
            return folder
        if folder.name == "checkpoints" and any((folder.parent / name).exists()
                                               for name in ("metrics.jsonl", "config.yaml", ".hydra")):
            return folder
    return None


def _safetensors_bytes(weights: dict[str, Any], source: Path) -> bytes:
    """``weights`` as one safetensors file; tensors that share storage (tied weights) are copied apart."""
    from safetensors.torch import save

    seen: set[tuple[int, int]] = set()
    flat: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {source}: model state {key!r} is a {type(value).__name__}, "
                                  "not a tensor; safetensors holds tensors only (use --format torch)")
        storage = (value.untyped_storage().data_ptr(), value.device.index or 0)
        shared = storage in seen and value.numel() > 0
        seen.add(storage)
        flat[key] = value.detach().clone() if shared else value.detach().contiguous()
    return save(flat, metadata={"format": "pt"})  # "pt": transformers' loaders expect it


def export_weights(source: str | os.PathLike[str], out: str | os.PathLike[str], *,
                   format: str = "torch") -> tuple[Path, dict[str, Any]]:
    """Writes the model's weights of a checkpoint to ``out`` as a plain state dict, for inference.

    ``source`` is a run folder or a checkpoint folder (its ``best.pt`` when the run kept one, else
    its newest valid checkpoint: ``weights_checkpoint``), or a checkpoint file; single-file and sharded
    (FSDP) checkpoints alike, read whole without a process group. ``format`` is ``torch``
    (``torch.save``; ``torch.load(..., weights_only=True)`` reads it) or ``safetensors``
    (``safetensors.torch.load_file``; needs ``pip install safetensors``). Returns the checkpoint's
    path and the weights. ``out`` is written atomically, and never inside a checkpoint folder
    (ConfigError, before anything is read): it would replace or mingle with the run's checkpoints.
    """
    if format not in FORMATS:
        raise ConfigError(f"export-weights --format={format!r}: one of {', '.join(FORMATS)}")
    if format == "safetensors":
        try:
            import safetensors.torch  # noqa: F401  (asked for, so imported here; optional otherwise)
        except ImportError:
            raise ConfigError("export-weights --format safetensors needs safetensors, which is not installed "
                              "(pip install safetensors)") from None
    out = Path(out)
    inside = _checkpoint_folder_around(out)
    if inside is not None:
        raise ConfigError(f"export-weights -o {out}: that is inside the checkpoint folder {inside}, where it could "
                          "replace a checkpoint; write the weights outside it")
    source = Path(source)
    if source.is_dir():
        source = weights_checkpoint(source)
    state = read_checkpoint(source)
    if "model" not in state:
        raise CheckpointError(f"checkpoint {source} has no model state")
    weights = state["model"]
    if isinstance(weights, sharding.ShardedState):
        weights = weights.consolidate()
    payload = _safetensors_bytes(weights, source) if format == "safetensors" else None
    staged = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if payload is None:
            write_file(staged, lambda handle: torch.save(weights, handle))
        else:
            write_file(staged, lambda handle: handle.write(payload))
        os.replace(staged, out)
    except OSError as error:
        raise CheckpointError(f"cannot write {out}: {error.strerror or error}") from None
    finally:
        staged.unlink(missing_ok=True)
    return source, weights
