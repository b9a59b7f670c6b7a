"""A checkpoint save cut short in a forked child, at a chosen step of the store's protocol."""

from __future__ import annotations

import os
from collections.abc import Callable

from trainwire.checkpointing.store import LocalCheckpointStore


def save_in_killed_child(directory, save: Callable[[LocalCheckpointStore], None],
                         stop: Callable[[str, int], bool], keep_last: int = 2) -> bool:
    """Runs ``save(store)`` in a forked child that ``os._exit``s at the first step where ``stop(point, index)``.

    The store's test hook stops the child there with nothing cleaned up or flushed, as ``kill -9``
    would. True when the save returned (no step stopped it), as a trainer would then acknowledge it.
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            steps = iter(range(1 << 30))

            def hook(point: str) -> None:
                if stop(point, next(steps)):
                    os._exit(9)

            store = LocalCheckpointStore(directory, keep_last=keep_last, hook=hook)
            store.start()
            save(store)
            code = 0
        finally:
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert code in (0, 9), code
    return code == 0
