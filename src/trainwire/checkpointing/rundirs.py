"""Run directories: where a run that was given none writes its record."""

from __future__ import annotations

import os
import time
from pathlib import Path


def new_run_dir(root: str | os.PathLike[str] = "runs") -> Path:
    """Creates and returns a directory of its own under ``root``: ``<root>/<YYYYmmdd-HHMMSS>``.

    Runs started in the same second get ``-2``, ``-3``, ... after the time: the directory is
    claimed with an atomic ``mkdir``, so two runs (threads or processes) never share one.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    Path(root).mkdir(parents=True, exist_ok=True)
    for count in range(1, 10_000):
        candidate = Path(root) / (stamp if count == 1 else f"{stamp}-{count}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free run directory under {root} for {stamp}")
