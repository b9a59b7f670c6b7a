"""Sharded checkpoint parts: the tensors of a part written by every rank through ``torch.distributed.checkpoint``.

Under FSDP the model and optimizer parts give their state as DTensors (each rank holds its
shards; nothing is gathered). The store writes those tensors with DCP into a shard folder
(``shards-<id>/__<rank>_<n>.distcp`` and ``.metadata``) and keeps the rest of the part (numbers,
lists, the optimizer's ``param_groups``) in the checkpoint's small ``.pt`` file, where each
tensor's place holds a marker naming its DCP key (ADR 0014). Only tensors go through DCP:
its loader unpickles non-tensor items with ``weights_only=False``, which trainwire never does.

Loading builds the target state from the live model (so DCP reshards onto any number of
processes, or onto a plain module), reads the tensors into it, and puts the part back.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

MARK = "__dcp__"  # {MARK: key} stands where a tensor of a sharded part was


def _dtensor() -> type | None:
    """DTensor's class once something has loaded it, else None: no DTensor can exist before then.

    Importing it costs about a second, which a save of plain tensors (the first one in a forked
    or fresh process) must not pay; None too when torch is built without distributed.
    """
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def holds_dtensors(value: Any) -> bool:
    """Whether ``value`` (a part's state) holds a DTensor at any depth."""
    kind = _dtensor()
    return kind is not None and _holds(value, kind)


_LEAVES = frozenset({int, float, bool, str, bytes, type(None)})  # what a state holds by the thousand (RNG states, history)


def _holds(value: Any, kind: type) -> bool:
    if isinstance(value, kind):
        return True
    if isinstance(value, Mapping):
        value = value.values()
    elif not isinstance(value, (list, tuple)):
        return False
    return any(_holds(item, kind) for item in value if type(item) not in _LEAVES)


def split(value: Any, key: str) -> tuple[Any, dict[str, Tensor]]:
    """``value`` with each tensor replaced by ``{MARK: its key}``, and the tensors by key (``key/path/to/it``)."""
    tensors: dict[str, Tensor] = {}

    def walk(item: Any, path: str) -> Any:
        if isinstance(item, Tensor):
            tensors[path] = item
            return {MARK: path}
        if isinstance(item, Mapping):
            return {name: walk(sub, f"{path}/{name}") for name, sub in item.items()}
        if isinstance(item, (list, tuple)):
            return type(item)(walk(sub, f"{path}/{index}") for index, sub in enumerate(item))
        return item

    return walk(value, key), tensors


def join(skeleton: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Puts the tensors back where ``split`` left their markers."""
    if isinstance(skeleton, Mapping):
        if set(skeleton) == {MARK}:
            return tensors[skeleton[MARK]]
        return {name: join(sub, tensors) for name, sub in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(join(sub, tensors) for sub in skeleton)
    return skeleton


def write(tensors: Mapping[str, Tensor], folder: Path) -> None:
    """Every rank writes its shards of ``tensors`` into ``folder`` (fsynced); rank 0 writes ``.metadata`` last.

    A collective when a process group is up: every rank calls it with the same keys.
    """
    import torch.distributed.checkpoint as dcp

    dcp.save(dict(tensors), storage_writer=dcp.FileSystemWriter(folder, sync_files=True, single_file_per_rank=True))


class ShardedState:
    """A part of a verified checkpoint whose tensors are in the DCP shard folder ``folder``."""

    def __init__(self, folder: Path, skeleton: Any) -> None:
        self.folder, self.skeleton = Path(folder), skeleton

    def _read(self, target: Any, key: str) -> Any:
        """``target`` (the live part's state, sharded or whole) filled from the shards; the skeleton's other values kept."""
        import torch.distributed.checkpoint as dcp

        _, wanted = split(target, key)
        saved = {marker for marker in _markers(self.skeleton)}
        missing = sorted(set(wanted) - saved)
        if missing:
            from trainwire.errors import CheckpointError

            raise CheckpointError(f"the shards in {self.folder} lack {', '.join(missing[:3])}"
                                  f"{' ...' if len(missing) > 3 else ''}: another model or optimizer wrote them")
        # Tensors the live state lacks (the optimizer's, before its first step) come back as saved:
        # read whole, then resharded by set_optimizer_state_dict.
        extra = {name: _empty(self.folder, name) for name in saved - set(wanted)}
        dcp.load({**wanted, **extra}, storage_reader=dcp.FileSystemReader(self.folder))
        return join(self.skeleton, {**wanted, **extra})

    def load_model(self, model: nn.Module) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            set_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=False)
        target = get_model_state_dict(model, options=options)
        set_model_state_dict(model, self._read(target, _key(self.skeleton)), options=options)

    def load_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=False)
        target = get_optimizer_state_dict(model, optimizer, options=options)
        set_optimizer_state_dict(model, optimizer, self._read(target, _key(self.skeleton)), options=options)

    def consolidate(self) -> Any:
        """The part with every tensor whole, on the CPU, read without a process group (for export)."""
        import torch.distributed.checkpoint as dcp

        tensors = {name: _empty(self.folder, name) for name in _markers(self.skeleton)}
        dcp.load(tensors, storage_reader=dcp.FileSystemReader(self.folder), no_dist=True)
        return join(self.skeleton, tensors)


def _markers(skeleton: Any) -> list[str]:
    if isinstance(skeleton, Mapping):
        if set(skeleton) == {MARK}:
            return [skeleton[MARK]]
        return [marker for sub in skeleton.values() for marker in _markers(sub)]
    if isinstance(skeleton, (list, tuple)):
        return [marker for sub in skeleton for marker in _markers(sub)]
    return []


def _key(skeleton: Any) -> str:
    """The part's name, the first segment of its markers' keys."""
    markers = _markers(skeleton)
    return markers[0].split("/", 1)[0] if markers else ""


def _empty(folder: Path, name: str) -> Tensor:
    """A whole CPU tensor shaped as the shards of ``name`` say, to read them into."""
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata[name]
    return torch.empty(meta.size, dtype=meta.properties.dtype)
