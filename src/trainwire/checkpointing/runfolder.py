"""A run folder holds one run: a fresh run never writes into another's, and a resume continues the same run.

Three rules, checked before anything is written (ADR 0023):

* ``claim``: one process at a time (the folder lock of ``checkpoints/``, ``FolderLock``), and a
  fresh run (no ``trainer.resume``) is refused where a run's record or checkpoints already are.
* ``config_changes``: ``trainer.resume=auto`` refuses a checkpoint whose resolved config differs
  from the run's in a key that changes the trajectory; keys that only say where results go, how
  often to save, or where the run is placed may differ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainwire.checkpointing.lock import FolderLock
from trainwire.errors import ConfigError

RECORD = ("metrics.jsonl", "summary.json", "config.yaml")  # what JsonlSink writes; Hydra's .hydra/ is not the run's
# Keys that cannot change what is trained: where results go, how often state is saved, where the run is placed
# (trainer.keep_last: store.keep_last, as checkpoints saved before ADR 0025 name it).
FREE = ("sink", "sink_timeout_s", "log", "progress", "run_dir", "metrics_every", "trainer.resume",
        "checkpoint", "store", "trainer.keep_last", "trainer.async_checkpoint", "trainer.log_every_n_steps", "trainer.device",
        "strategy")

# Keys a resume may raise: the run is extended, and what is planned from them (the LR schedule) is re-planned
# for the new value as its part is restored (ADR 0031). Lowering one is a change like any other.
EXTENDABLE = ("trainer.max_epochs",)


def holds_checkpoints(directory: str | os.PathLike[str]) -> bool:
    """Whether the checkpoint folder ``directory`` holds a manifest or a checkpoint file."""
    directory = Path(directory)
    return directory.is_dir() and any(path.name == "manifest.json" or path.suffix == ".pt"
                                      for path in directory.iterdir())


def held_run(run_dir: str | os.PathLike[str]) -> list[str]:
    """What of a run ``run_dir`` holds already: its record files and checkpoints (empty for a new folder)."""
    run_dir = Path(run_dir)
    found = [name for name in RECORD if (run_dir / name).exists()]
    if holds_checkpoints(run_dir / "checkpoints"):
        found.append("checkpoints/")
    return found


def claim(run_dir: str | os.PathLike[str], resume: str | None, config_yaml: str | None = None) -> FolderLock | None:
    """Locks ``run_dir`` for this process, then refuses a fresh run into a folder that holds one.

    With ``resume=auto`` and the run's resolved ``config_yaml``, also refuses a config that differs
    from the folder's recorded ``config.yaml`` in a trajectory key (the per-process batch size is
    left to the checkpoint's own check, which knows how many processes trained it).
    Returns the held lock (the checkpoint store shares it), or None where no run has started
    (no ``checkpoints/``: nothing to lock out yet, and nothing is created for a run that may still
    be refused; the store takes the lock before the first record is written). Raises
    CheckpointError when another process holds the folder, ConfigError (one line naming the
    folder and the ways on) when a fresh run would mix with the run already there; nothing is
    written either way.
    """
    run_dir = Path(run_dir)
    lock = FolderLock(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else None
    if lock is not None:
        lock.acquire()
    problem = None
    if resume is None:
        found = held_run(run_dir)
        if found:
            problem = (f"the run folder {run_dir} already holds a run ({', '.join(found)}); continue it with "
                       "trainer.resume=auto, or train in another run folder (hydra.run.dir=... or run_dir=...)")
    elif resume == "auto" and config_yaml is not None and (run_dir / "config.yaml").is_file():
        changes = config_changes((run_dir / "config.yaml").read_text(), config_yaml, ignore=("data.batch_size",))
        if changes:
            problem = refusal(f"the run in {run_dir}", changes, run_dir)
    if problem:
        if lock is not None:
            lock.release()
        raise ConfigError(problem)
    return lock


def refusal(what: str, changes: list[str], run_dir: str | os.PathLike[str] = "RUN") -> str:
    """The one line that refuses to resume ``what`` (in ``run_dir``) under a config with ``changes``."""
    return (f"trainer.resume=auto: {what} was trained with another config ({'; '.join(changes)}); resume with the "
            f"same values, or start a new run from its weights with trainer.init_from={run_dir} in another run folder")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _grows(then: Any, now: Any) -> bool:
    return type(then) is int and type(now) is int and now > then


def _free(key: str) -> bool:
    return any(key == free or key.startswith(f"{free}.") for free in FREE)


def config_changes(saved_yaml: str, current_yaml: str, *, saved_processes: int = 1, processes: int = 1,
                   ignore: tuple[str, ...] = ()) -> list[str]:
    """The keys that change the trajectory whose values differ between a checkpoint's config and the run's.

    ``data.batch_size`` is per process: it is compared as the global batch (times the processes),
    so a run may resume on another number of processes with the same global batch. A key a run
    may be extended by (``parts.EXTENDABLE``, ADR 0031) differs only when it is lowered.
    """
    import yaml

    then, now = _flat(yaml.safe_load(saved_yaml) or {}), _flat(yaml.safe_load(current_yaml) or {})
    if isinstance(then.get("data.batch_size"), int) and isinstance(now.get("data.batch_size"), int):
        then["data.batch_size"] *= saved_processes
        now["data.batch_size"] *= processes
    changed = []
    for key in sorted({*then, *now}):
        if not _free(key) and key not in ignore and then.get(key, "<unset>") != now.get(key, "<unset>"):
            if key in EXTENDABLE and _grows(then.get(key), now.get(key)):
                continue
            shown = "data.batch_size × processes" if key == "data.batch_size" and saved_processes != processes else key
            shortened = " (a run can be extended, not shortened)" if key in EXTENDABLE else ""
            changed.append(f"{shown}: {then.get(key, '<unset>')!r} -> {now.get(key, '<unset>')!r}{shortened}")
    return changed
