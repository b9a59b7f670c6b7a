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
    """Puts back python's and NumPy's RNG states, ``os.environ`` and ``warnings.filters`` after the block.

    What changes them inside a run is not trainwire's own code: resuming restores the
    checkpoint's RNG states, and lazy imports (torch's first optimizer imports ``torch._dynamo``,
    which sets ``TORCHINDUCTOR_CACHE_DIR`` and adds a sympy filter; wandb imports OpenTelemetry)
    change the environment and the filters once per process. These are process-wide: a change
    another thread makes to them while a run is going is undone too.
    """
    python, numpy, environ = random.getstate(), np.random.get_state(), dict(os.environ)
    try:
        with warnings.catch_warnings():  # puts the filters back as they were
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        for key in [key for key in os.environ if key not in environ]:
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
