"""The caller's process state that a run puts back when something it calls changed it."""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def kept_state() -> Iterator[None]:
    """Restores python's and NumPy's RNG states, and undoes what the block did to ``os.environ`` and ``warnings.filters``.

    What changes them inside a run is not trainwire's own code: resuming restores the
    checkpoint's RNG states, and lazy imports (torch's first optimizer imports ``torch._dynamo``,
    which sets ``TORCHINDUCTOR_CACHE_DIR`` and adds a sympy filter; wandb imports OpenTelemetry)
    change the environment and the filters once per process. Only what changed during the
    block is undone, so a caller's own earlier changes stay; these are process-wide, so a change
    another thread makes to the same variable or filter while a run is going is undone too.
    """
    python, numpy = random.getstate(), np.random.get_state()
    environ, filters = dict(os.environ), list(warnings.filters)
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        for key in [key for key in os.environ if key not in environ]:
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        if warnings.filters != filters:
            added = [entry for entry in warnings.filters if entry not in filters]
            warnings.filters[:] = [entry for entry in warnings.filters if entry not in added]
            warnings._filters_mutated()  # the module's cache of filter decisions (as catch_warnings does)
