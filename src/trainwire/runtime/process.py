"""The caller's process state that a run puts back when something it calls changed it."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import torch

_SCOPE = threading.Lock()
_runs = 0  # runs now inside run_scope
_saved: list = []  # what the first of them found: put back by the last one to leave
# Held while a run seeds the global torch generator and builds from it (the model's initial
# weights): two runs started together in two threads then draw exactly what each draws alone.
SEEDING = threading.RLock()


@contextlib.contextmanager
def run_scope() -> Iterator[None]:
    """The caller's process state, kept across any number of runs going on at once in threads.

    The first run to enter saves the caller's torch (CPU and CUDA), python and NumPy RNG states,
    ``os.environ`` and ``warnings.filters``; the last to leave puts them back. (Each run's own
    ``fork_rng`` would put back what it found, which, with two runs in two threads, is the
    other run's state.)
    """
    global _runs
    with _SCOPE:
        if _runs == 0:
            devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            cuda = [torch.cuda.get_rng_state(device) for device in devices]
            _saved[:] = [torch.get_rng_state(), devices, cuda, random.getstate(), np.random.get_state(),
                         dict(os.environ), warnings.filters[:]]
        _runs += 1
    try:
        yield
    finally:
        with _SCOPE:
            _runs -= 1
            if _runs == 0:
                cpu, devices, cuda, python, numpy, environ, filters = _saved
                torch.set_rng_state(cpu)
                for device, state in zip(devices, cuda):
                    torch.cuda.set_rng_state(state, device)
                random.setstate(python)
                np.random.set_state(numpy)
                _restore_environ(environ)
                warnings.filters[:] = filters
                warnings._filters_mutated()  # the cache of "already warned" decisions is stale now


def _restore_environ(environ: dict[str, str]) -> None:
    for key in [key for key in os.environ if key not in environ]:
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
