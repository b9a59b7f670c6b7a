"""Strategies: how one training run is spread over processes (one, or many through ``torch.distributed``).

The Trainer asks its strategy a few questions and never which kind it is: where the model lives
(``device``), what the forward pass runs (``setup``), the whole model and optimizer state for a
checkpoint (``model_state``/``optimizer_state``), sums and means across processes (``reduce``,
``mean``), rank 0's answer (``broadcast``), whether any process wants to stop (``any``), and
whether this process is the one that writes (``is_rank0``).

``SingleProcess`` answers for one process and starts nothing. ``DDP`` and ``FSDP`` join the
process group that ``torchrun`` describes (``init_process_group`` reads its environment) unless
one is already initialised, and ``teardown`` destroys only a group they started, after a
barrier (gloo can abort at exit without one). Small collectives (flags, objects, validation
totals) go through CPU tensors on a gloo group, so they never sync a GPU.
"""

from __future__ import annotations

import functools
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from trainwire.errors import ConfigError
from trainwire.runtime.precision import resolve_device
from trainwire.sinks.base import MetricsSink, forward_histograms


def _unchanged(batch: Any) -> Any:
    return batch


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (in dicts, lists and tuples, at any depth) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple keeps its type and fields
        return type(batch)(*(to_device(item, device) for item in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device) for item in batch)
    return batch


class Strategy(ABC):
    """Port: one process, or one of several training the same model together."""

    name: str = ""  # the ``strategy`` option it is (single, ddp, fsdp), for refusals that name it
    rank: int = 0
    world_size: int = 1
    sharded_checkpoints = False  # whether every process writes its own part of each checkpoint

    @property
    def is_rank0(self) -> bool:
        """Whether this process writes the run record, the sinks and the checkpoints."""
        return self.rank == 0

    def start(self) -> None:
        """Joins the processes (idempotent); called before data are sharded or the model is set up."""

    def device(self, requested: str) -> torch.device:
        """The device this process trains on, from ``trainer.device``."""
        return resolve_device(requested)

    def mover(self, device: torch.device) -> Callable[[Any], Any]:
        """What puts a batch on ``device``: any nesting of tensors in dicts, lists and tuples (nothing to do on CPU)."""
        if device.type == "cpu":
            return _unchanged
        return functools.partial(to_device, device=device)

    @abstractmethod
    def setup(self, model: nn.Module) -> nn.Module:
        """Called once per fit after ``model.to(device)``, before the optimizer is built; returns what runs forward."""

    def model_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The whole model's state on the CPU, keyed as ``model.state_dict()`` (a collective where sharded)."""
        return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}

    def load_model_state(self, model: nn.Module, state: Mapping[str, Tensor]) -> None:
        """Puts back what ``model_state`` returned (every process passes the same whole state)."""
        model.load_state_dict(state)

    def checkpoint_model_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's state for a checkpoint, as it is now: live tensors, no copy (the writer copies what it keeps)."""
        return {key: value.detach() for key, value in model.state_dict().items()}

    def optimizer_state(self, model: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
        """The optimizer's state for a checkpoint (live tensors, as ``checkpoint_model_state``)."""
        return optimizer.state_dict()

    def load_optimizer_state(self, model: nn.Module, optimizer: Optimizer, state: Mapping[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def reduce(self, totals: Tensor) -> Tensor:
        """``totals`` summed over every process (on the CPU, float64): validation sums before they are divided."""
        return totals

    def mean(self, value: Tensor) -> float:
        """A scalar averaged over processes, as a Python float (one host read)."""
        return value.item()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any process: a stop request becomes every process's."""
        return flag

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (a stopping verdict, a run directory)."""
        return obj

    def rank0_only(self, sink: MetricsSink) -> MetricsSink:
        """``sink`` where this process writes, a sink that drops everything elsewhere."""
        return sink

    def barrier(self) -> None:
        """Waits until every process reaches it."""

    def teardown(self) -> None:
        """Leaves the processes cleanly; called once when training is over (a no-op for one process)."""


class SingleProcess(Strategy):
    """One process, one device: the model runs as it is."""

    name = "single"

    def setup(self, model: nn.Module) -> nn.Module:
        return model


class _Rank0Sink(MetricsSink):
    """Forwards to ``sink`` on rank 0 only (asked at each call: the group may start after the Trainer is built)."""

    def __init__(self, sink: MetricsSink, strategy: Strategy) -> None:
        self.sink, self.strategy = sink, strategy

    def start(self) -> None:
        if self.strategy.is_rank0:
            self.sink.start()

    def log(self, metrics: Mapping[str, float], *, step: int, epoch: int) -> None:
        if self.strategy.is_rank0:
            self.sink.log(metrics, step=step, epoch=epoch)

    def log_image(self, key: str, image: Any, *, step: int, epoch: int) -> None:
        if self.strategy.is_rank0:
            self.sink.log_image(key, image, step=step, epoch=epoch)

    def log_histograms(self, values: Mapping[str, Any], *, step: int, epoch: int) -> None:
        if self.strategy.is_rank0:
            forward_histograms(self.sink, values, step=step, epoch=epoch)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.strategy.is_rank0:
            self.sink.summary(values)

    def finish(self, status: str = "finished") -> None:
        if self.strategy.is_rank0:
            self.sink.finish(status)

    def position(self) -> Any:
        return self.sink.position() if self.strategy.is_rank0 else None

    def rewind(self, position: Any) -> None:
        if self.strategy.is_rank0:
            self.sink.rewind(position)


def init_process_group() -> bool:
    """Joins the process group ``torchrun`` set up (nccl for CUDA tensors, gloo for CPU ones); False if already in one.

    Raises ConfigError when the process was not started by a launcher (no rendezvous in the environment).
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    try:
        dist.init_process_group(backend=backend)
    except ValueError as error:  # env:// without RANK/WORLD_SIZE/MASTER_ADDR
        raise ConfigError(f"trainer.strategy ddp or fsdp needs the processes started by torchrun "
                          f"({error})") from None
    return True


def _cpu_group(dist: Any) -> Any:
    # The default group when it already speaks gloo (ours always does); otherwise a gloo side group.
    return None if "gloo" in str(dist.get_backend()) else dist.new_group(backend="gloo")


def broadcast_object(obj: Any, group: Any = None) -> Any:
    """Rank 0's picklable ``obj`` on every process, through a CPU byte tensor (torch's own needs numpy)."""
    import torch.distributed as dist

    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8) if dist.get_rank() == 0 else None
    size = torch.tensor([0 if payload is None else payload.numel()], dtype=torch.int64)
    dist.broadcast(size, src=0, group=group)
    if payload is None:
        payload = torch.empty(int(size.item()), dtype=torch.uint8)
    dist.broadcast(payload, src=0, group=group)
    return obj if dist.get_rank() == 0 else pickle.loads(bytes(payload.tolist()))  # small objects: no numpy needed


def shutdown(started: bool) -> None:
    """Barrier, then ``destroy_process_group`` when ``started`` says this code created the group."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        if started:
            dist.destroy_process_group()


class _Distributed(Strategy):
    """What DDP and FSDP share: the process group, collectives on CPU tensors, the device per local rank."""

    def __init__(self) -> None:
        self._started = self._owns_group = False
        self._group: Any = None

    def start(self) -> None:
        if self._started:
            return
        import torch.distributed as dist

        self._owns_group = init_process_group()
        self._group = _cpu_group(dist)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._started = True

    def device(self, requested: str) -> torch.device:
        self.start()
        device = resolve_device(requested)
        if device.type == "cuda" and device.index is None:  # one GPU per process: the local rank's
            import torch.distributed as dist

            device = torch.device("cuda", dist.get_node_local_rank(fallback_rank=self.rank % torch.cuda.device_count()))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def _all_reduce(self, tensor: Tensor, op: Any = None) -> Tensor:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM, group=self._group)
        return tensor

    def reduce(self, totals: Tensor) -> Tensor:
        return self._all_reduce(totals.detach().to("cpu", torch.float64, copy=True))

    def mean(self, value: Tensor) -> float:
        return self.reduce(value.reshape(1)).item() / self.world_size

    def any(self, flag: bool) -> bool:
        import torch.distributed as dist

        return bool(self._all_reduce(torch.tensor([int(flag)]), dist.ReduceOp.MAX).item())

    def broadcast(self, obj: Any) -> Any:
        self.start()
        return broadcast_object(obj, self._group)

    def rank0_only(self, sink: MetricsSink) -> MetricsSink:
        return _Rank0Sink(sink, self)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self._group)

    def teardown(self) -> None:
        if self._started:
            shutdown(self._owns_group)
            self._started = self._owns_group = False


class DDP(_Distributed):
    """DistributedDataParallel: a whole replica per process, gradients averaged in backward.

    Every process starts from rank 0's weights (DDP broadcasts them) and sees its own share of
    each batch (the bundled loaders shard it); checkpoints hold the plain module's state.
    """

    name = "ddp"

    def setup(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        self.start()
        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class FSDP(_Distributed):
    """FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters, gradients and optimizer state sharded.

    ``shard`` wraps each direct child that holds parameters, then the root; override it for a
    finer plan. Checkpoints hold the model and optimizer sharded: each rank's DTensors, written
    by every rank through ``torch.distributed.checkpoint`` and committed by rank 0's manifest
    (ADR 0014); they load onto any number of processes. ``model_state`` (the best weights kept
    in memory) is the full state, gathered.
    """

    name = "fsdp"

    sharded_checkpoints = True

    def shard(self, model: nn.Module) -> None:
        from torch.distributed.fsdp import fully_shard

        for child in model.children():
            if any(p.requires_grad for p in child.parameters()):
                fully_shard(child)
        fully_shard(model)

    def setup(self, model: nn.Module) -> nn.Module:
        self.start()
        self.shard(model)
        return model

    @staticmethod
    def _options(**kwargs: Any) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kwargs)

    def model_state(self, model: nn.Module) -> dict[str, Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(model, options=self._options())
        return {key: value.detach().to("cpu", copy=True) for key, value in full.items()}

    def load_model_state(self, model: nn.Module, state: Mapping[str, Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, dict(state), options=self._options())

    def checkpoint_model_state(self, model: nn.Module) -> dict[str, Tensor]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=False))

    def optimizer_state(self, model: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=False))

    def load_optimizer_state(self, model: nn.Module, optimizer: Optimizer, state: Mapping[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, dict(state), options=self._options())


def resolve_strategy(name: str) -> str:
    """``name``, with ``auto`` made concrete: ``ddp`` when a process group is initialised, else ``single``.

    The library reads no environment: the CLI resolves ``auto`` from how it was launched
    (torchrun) before anything is built, and joins the group then, so both agree.
    """
    if name != "auto":
        return name
    import torch.distributed as dist

    return "ddp" if dist.is_available() and dist.is_initialized() else "single"


def auto_strategy() -> Strategy:
    """What ``strategy=auto`` builds: DDP when a process group is initialised (the CLI under torchrun), else one process."""
    return DDP() if resolve_strategy("auto") == "ddp" else SingleProcess()
