"""The ``hpo=optuna`` preset's part in code: a Hydra callback run as the sweep starts (ADR 0029).

Hydra's Optuna sweeper is configured by the preset (``configs/hpo/optuna.yaml``); three things
need the composed config, so they happen here, in ``on_multirun_start``, before Hydra builds the
sweeper from that config:

- the direction follows ``stopping.mode`` (``min`` -> ``minimize``, ``max`` -> ``maximize``) unless
  ``hydra.sweeper.direction`` was given: the value each trial returns is its run's best by that mode;
- the sweep folder exists, so that the SQLite study the preset keeps there can be created;
- a sweep folder that already holds trials (the same command run again, resuming its study) has
  the new trials' folders numbered on after them: the sweeper numbers its jobs from 0 in each
  process, and a used run folder is refused (ADR 0023). In a study that one process at a time
  runs from this folder, a trial's folder is then its trial number.

The folder numbers reach each job through the ``trainwire.trial`` resolver in ``hydra.sweep.subdir``,
registered here when the sweep starts (and again where a launcher unpickles this callback in a
worker process), never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback  # this module is imported only by Hydra, for a sweep

DIRECTIONS = {"min": "minimize", "max": "maximize"}
RESOLVER = "trainwire.trial"


def first_free(sweep_dir: Path) -> int:
    """The number after the highest job folder (``0``, ``1``, ...) in ``sweep_dir``; 0 where it has none."""
    if not sweep_dir.is_dir():
        return 0
    numbers = [int(sub.name) for sub in sweep_dir.iterdir() if sub.name.isdigit() and sub.is_dir()]
    return max(numbers, default=-1) + 1


class StudySetup(Callback):
    """Hydra callback (``hydra.callbacks.trainwire_study``): the direction, the sweep folder, the trial folders."""

    def __init__(self) -> None:
        self.first = 0

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import open_dict, read_write

        sweeper = config.hydra.sweeper
        with read_write(sweeper), open_dict(sweeper):
            if sweeper.get("direction") is None:
                mode = str((config.get("stopping") or {}).get("mode") or "min")
                sweeper.direction = DIRECTIONS.get(mode, "minimize")
        sweep_dir = Path(str(config.hydra.sweep.dir))
        self.first = first_free(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)  # SQLite creates the database file, not its folder
        self._register()

    def _register(self) -> None:
        from omegaconf import OmegaConf

        first = self.first
        OmegaConf.register_new_resolver(RESOLVER, lambda num: str(first + int(num)), replace=True)

    def __setstate__(self, state: dict[str, Any]) -> None:  # a launcher's worker process (joblib, submitit)
        self.__dict__.update(state)
        self._register()
