"""Checkpoints written in the background: the loop pays for a copy of the state, not for the disk.

``CheckpointWriter.save`` snapshots the captured state (every tensor copied off the live ones:
to CPU memory, pinned when it comes from a GPU) and hands the copy to one background thread,
which calls the store's ``save`` (serialise, sha256, fsync, rename, manifest commit: ADR 0009).
At most one save is in flight: the next one waits for it, and that wait is what the loop
reports as ``checkpoint/wait_s``. A save that failed in the background is raised again, as
the store raised it, by the writer's next call; ``wait`` returns only once the save in flight
is committed (or has failed), so a stopped run exits with its checkpoint durable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from trainwire.checkpointing.store import CheckpointStore


def snapshot(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """``value`` with every tensor in it copied to CPU memory, and every container rebuilt.

    ``optimizer.state_dict()`` and most policies' ``state_dict()`` hand out their live tensors
    and lists; the copy is what lets training go on while they are written. Tensors that are
    one object in ``value`` stay one object (``torch.save`` writes shared storage once).
    Copies from a GPU go to pinned memory without blocking, then one synchronise covers them all.
    """
    top = memo is None
    memo = {} if memo is None else memo
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            tensor = value.detach()
            if tensor.device.type == "cpu":
                memo[id(value)] = tensor.clone()
            else:
                copy = torch.empty_like(tensor, device="cpu", pin_memory=torch.cuda.is_available())
                memo[id(value)] = copy.copy_(tensor, non_blocking=True)
                memo["gpu"] = True
        result = memo[id(value)]
    elif isinstance(value, dict):
        result = {key: snapshot(item, memo) for key, item in value.items()}
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        result = type(value)(*(snapshot(item, memo) for item in value))
    elif isinstance(value, (list, tuple)):
        result = type(value)(snapshot(item, memo) for item in value)
    else:
        result = value  # numbers, strings, None: immutable
    if top and memo.get("gpu"):
        torch.cuda.synchronize()  # the non-blocking copies have landed before the tensors can change
    return result


class CheckpointWriter:
    """Saves through ``store``, in one background thread when ``asynchronous`` (else in the caller's).

    Not thread-safe: one loop calls it. The thread is not a daemon, so a save in flight is
    finished even when the caller forgets to ``wait`` before the interpreter exits.
    """

    def __init__(self, store: CheckpointStore, *, asynchronous: bool = True) -> None:
        self.store = store
        self.asynchronous = asynchronous
        self.waited_s = 0.0  # total time the loop spent waiting for a save in flight
        self.waits = 0  # saves that had to wait for the one before
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def save(self, state: Mapping[str, Any], names: Sequence[str], *, meta: Mapping[str, int]) -> float:
        """Writes ``state`` under ``names``; returns the seconds spent waiting for the save before it.

        Asynchronous: returns once ``state`` is copied. Raises the previous save's failure,
        if it failed in the background, before anything else is done.
        """
        waited = self.wait()
        if not self.asynchronous:
            self.store.save(state, names, meta=meta)
            return waited
        copied = snapshot(state)
        self._thread = threading.Thread(target=self._write, args=(copied, list(names), dict(meta)),
                                        name="trainwire-checkpoint", daemon=False)
        self._thread.start()
        return waited

    def _write(self, state: Mapping[str, Any], names: list[str], meta: dict[str, int]) -> None:
        try:
            self.store.save(state, names, meta=meta)
        except BaseException as error:  # noqa: BLE001 - handed to the loop's thread by check()
            self._failure = error

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
