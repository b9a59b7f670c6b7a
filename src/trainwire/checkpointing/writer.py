"""Checkpoints written in the background: the loop pays for a copy of the state, not for the disk.

``CheckpointWriter.save`` snapshots the captured state (every tensor copied off the live ones:
to CPU memory, pinned when it comes from a GPU) and hands the copy to one background thread,
which calls the store's ``save`` (serialise and hash in one pass, fsync, rename, manifest
commit: ADR 0009). The copies go into the buffers of the save before (``Snapshots``), so a
save costs the loop a memory copy, not an allocation and its page faults; the first save's
buffers are made beside the loop, a step into the run (``prepare``). At most one save is
in flight: the next one waits for the rest of it (its buffers are free only then), and that
wait is what the loop reports as ``checkpoint/wait_s``. A save that failed in the background is raised again, as
the store raised it, by the writer's next call; ``wait`` returns only once the save in flight
is committed (or has failed), so a stopped run exits with its checkpoint durable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from trainwire.checkpointing.store import CheckpointStore


class Snapshots:
    """Copies of captured state into buffers kept from one save to the next.

    ``optimizer.state_dict()`` and most policies' ``state_dict()`` hand out their live tensors
    and lists; the copy is what lets training go on while they are written. The n-th tensor
    of a state is copied into the n-th buffer of the state before when their shape, strides
    and dtype agree (a run saves the same state again and again), else into a new one. Tensors
    that are one object in the state stay one object (``torch.save`` writes shared storage once).
    Copies from a GPU go to pinned memory without blocking, then one synchronise covers them all.
    ``prepare`` makes the buffers of a first save ahead of it, so no save pays for fresh memory.
    The caller must not take a snapshot while the one before is still read (the writer waits),
    nor while ``prepare``'s buffers are still being made.
    """

    def __init__(self) -> None:
        self._buffers: list[tuple[torch.Tensor, bool]] = []  # (copy, whether it is pinned), in the order taken
        self.allocated = 0  # tensors copied into new memory by ``take`` (the rest went into buffers kept)

    def take(self, value: Any) -> Any:
        """``value`` with every tensor in it copied to CPU memory, and every container rebuilt."""
        used: list[tuple[torch.Tensor, bool]] = []
        gpu = [False]

        def copy(tensor: torch.Tensor) -> torch.Tensor:
            used.append(self._tensor(tensor, len(used), gpu))
            return used[-1][0]

        result = _rebuilt(value, copy, {})
        self._buffers = used
        if gpu[0]:
            torch.cuda.synchronize()  # the non-blocking copies have landed before the tensors can change
        return result

    def prepare(self, value: Any) -> Callable[[], None]:
        """Reads the layout of the tensors in ``value`` now; returns what makes a buffer for each.

        A first save would otherwise copy into memory that is new to the process: its pages are
        faulted in and zeroed by the kernel as the copy touches them (80–150 ms for 96 MiB on a
        2-core VM, against 12 ms into buffers touched before), or pinned by CUDA, slower still.
        The writer runs the returned callable on a thread of its own, long before that save.
        """
        layout: list[tuple[torch.Size, torch.dtype, bool]] = []

        def note(tensor: torch.Tensor) -> None:
            pinned = tensor.device.type != "cpu" and torch.cuda.is_available()
            layout.append((tensor.shape, tensor.dtype, pinned))  # contiguous: a tensor of other strides gets a clone

        _rebuilt(value, note, {})

        def make() -> None:
            buffers = []
            for shape, dtype, pinned in layout:
                buffer = torch.empty(shape, dtype=dtype, pin_memory=pinned)
                buffers.append((buffer.zero_(), pinned))  # zero_: every page is touched here, not in the save
            self._buffers = buffers

        return make

    def _tensor(self, tensor: torch.Tensor, index: int, gpu: list[bool]) -> tuple[torch.Tensor, bool]:
        on_gpu = tensor.device.type != "cpu"
        pinned = on_gpu and torch.cuda.is_available()  # (tracked here: is_pinned() may start CUDA on a CPU run)
        old, was_pinned = self._buffers[index] if index < len(self._buffers) else (None, False)
        if old is not None and was_pinned == pinned and old.shape == tensor.shape and old.dtype == tensor.dtype \
                and old.stride() == tensor.stride():
            buffer = old
        elif on_gpu:
            self.allocated += 1
            buffer = torch.empty_like(tensor, device="cpu", pin_memory=pinned)
        else:
            self.allocated += 1
            return tensor.clone(), False  # clone keeps the strides (and the storage's size) as they are
        gpu[0] = gpu[0] or on_gpu
        return buffer.copy_(tensor, non_blocking=on_gpu), pinned


def _rebuilt(value: Any, leaf: Callable[[torch.Tensor], Any], memo: dict[int, Any]) -> Any:
    """``value`` with each tensor in it replaced by ``leaf(tensor)``, in order, once per tensor object
    (a tensor met again gets what ``leaf`` gave it the first time), and every container rebuilt."""
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = leaf(value.detach())
        return memo[id(value)]
    if isinstance(value, dict):
        return {key: _rebuilt(item, leaf, memo) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_rebuilt(item, leaf, memo) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_rebuilt(item, leaf, memo) for item in value)
    return value  # numbers, strings, None: immutable


def snapshot(value: Any) -> Any:
    """``value`` with every tensor in it copied to CPU memory (new buffers), and every container rebuilt."""
    return Snapshots().take(value)


class CheckpointWriter:
    """Saves through ``store``, in one background thread when ``asynchronous`` (else in the caller's).

    Not thread-safe: one loop calls it. The thread is not a daemon, so a save in flight is
    finished even when the caller forgets to ``wait`` before the interpreter exits.
    """

    def __init__(self, store: CheckpointStore, *, asynchronous: bool = True,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.store = store
        self.asynchronous = asynchronous
        self.on_failure = on_failure  # called in the writer's thread when a save fails there
        self.snapshots = Snapshots()  # the copies of the saves (their buffers are kept for the next)
        self.waited_s = 0.0  # total time the loop spent waiting for a save in flight
        self.waits = 0  # saves that had to wait for the one before
        self._thread: threading.Thread | None = None
        self._preparing: threading.Thread | None = None  # making the first save's buffers (``prepare``)
        self._prepared = False  # ``prepare`` was asked, or a save came first
        self._failure: BaseException | None = None

    def prepare(self, state: Mapping[str, Any]) -> None:
        """Makes, on a thread beside the loop, the buffers a save of ``state`` will be copied into.

        Called once, a step into the run, so that the first save costs the loop a copy into memory
        already there, like every save after it. Only the layout of ``state`` is read, now; its
        tensors are not kept. Nothing is done when saving in the caller's thread or after a save.
        """
        if not self.asynchronous or self._prepared:
            return
        self._prepared = True
        make = self.snapshots.prepare(state)

        def run() -> None:
            try:
                make()
            except Exception:  # noqa: BLE001 - out of (pinned) memory, say: the save makes its own, and reports its own failure
                pass

        self._preparing = threading.Thread(target=run, name="trainwire-checkpoint-buffers", daemon=True)
        self._preparing.start()

    def save(self, state: Mapping[str, Any], names: Sequence[str], *, meta: Mapping[str, int]) -> float:
        """Writes ``state`` under ``names``; returns the seconds spent waiting for the save before it.

        Asynchronous: returns once ``state`` is copied. Raises the previous save's failure,
        if it failed in the background, before anything else is done.
        """
        waited = self.wait()
        if not self.asynchronous:
            self.store.save(state, names, meta=meta)
            return waited
        self._prepared = True
        if self._preparing is not None:
            self._preparing.join()  # (long done, unless the first save comes a step or two after it began)
            self._preparing = None
        copied = self.snapshots.take(state)
        self._thread = threading.Thread(target=self._write, args=(copied, list(names), dict(meta)),
                                        name="trainwire-checkpoint", daemon=False)
        self._thread.start()
        return waited

    def _write(self, state: Mapping[str, Any], names: list[str], meta: dict[str, int]) -> None:
        try:
            self.store.save(state, names, meta=meta)
        except BaseException as error:  # noqa: BLE001 - handed to the loop's thread by check()
            self._failure = error
            if self.on_failure is not None:
                self.on_failure()

    @property
    def failed(self) -> bool:
        """Whether a save failed in the background and ``check`` has not raised it yet."""
        return self._failure is not None

    @property
    def busy(self) -> bool:
        """Whether a save is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> None:
        """Raises the failure of a save that ended in the background (once); cheap enough for every step."""
        if self._failure is not None and not self.busy:
            failure, self._failure = self._failure, None
            raise failure

    def wait(self) -> float:
        """Blocks until the save in flight is committed; returns the seconds waited. Raises its failure."""
        waited = 0.0
        if self._thread is not None:
            if self._thread.is_alive():
                started = time.perf_counter()
                self._thread.join()
                waited = time.perf_counter() - started
                self.waited_s += waited
                self.waits += 1
            self._thread = None
        self.check()
        return waited

    def settle(self) -> BaseException | None:
        """Waits for the save in flight and returns its failure instead of raising it (for a run already failing)."""
        try:
            self.wait()
        except BaseException as error:  # noqa: BLE001 - reported by the caller next to the first error
            return error
        return None
