"""Runs side by side: what each run changed (its overrides) against how it did (its summary).

``trainwire compare multirun/2026-11-30/12-00-00`` reads every run folder of a sweep (or the
run folders given), keeps the overrides that differ between them, and sorts the runs by their
best monitored value (best first, by the stopping mode each run was configured with; runs that
did not finish after those that did). Each row shows the run's status, its monitored value and
the other ``val/`` (and ``test/``) metrics of its summary. A run that left no ``summary.json``
(killed before it could write one) is listed as ``incomplete`` rather than refused. Everything
comes from the run record: ``summary.json``, ``config.yaml`` and Hydra's
``.hydra/overrides.yaml``; nothing is recomputed.

A search's sweep folder (Hydra's Optuna sweeper: ``optimization_results.yaml`` or the ``hpo=optuna``
preset's ``study.db`` in it) is read as a study: its trials stay in study order (the job number,
which is the trial's number in a study run from that folder), each with its Optuna state
(``COMPLETE``, ``FAIL``, ``PRUNED``, or ``RUNNING`` for one stopped or still going) from its
summary, and the best complete trial is marked ``best``, by the study's direction (read from
``study.db`` when Optuna is installed, else the runs' ``stopping.mode``, from which the preset sets it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Overrides that say where a run went, not what it tried.
_PLACEMENT = ("hydra.", "hydra/", "run_dir=", "progress=", "log.")
# What a run folder holds from its start (Hydra's record, the run's own): a folder with none of them is no run.
_RUN_FILES = ("summary.json", "metrics.jsonl", "config.yaml", ".hydra")
FINISHED = "finished"
INCOMPLETE = "incomplete"  # no summary.json: the run was killed before it could write one, or is still running
# Statuses: finished, failed, interrupted, cancelled (summary.json's), incomplete, unreadable (its summary.json).
_METRICS = ("val/", "test/")  # the summary's metrics shown beside the monitored value
_STUDY_FILES = ("optimization_results.yaml", "study.db")  # what Hydra's Optuna sweeper and the hpo preset leave


@dataclass
class RunRow:
    """One run of a comparison: its folder, its overrides, and what its summary says."""

    run_dir: Path
    overrides: dict[str, str] = field(default_factory=dict)
    best_value: float | None = None
    monitor: str | None = None
    mode: str = "min"
    stop_reason: str | None = None
    epochs: int | None = None
    status: str = FINISHED
    metrics: dict[str, float] = field(default_factory=dict)  # the summary's val/ and test/ values

    @property
    def state(self) -> str:
        """The run's state as a trial of an Optuna study (what the sweeper told the study, or would have)."""
        if self.status == FINISHED:
            return "PRUNED" if self.stop_reason == "pruned" else "COMPLETE"
        if self.status == "failed":
            return "FAIL"
        return "RUNNING" if self.status in ("interrupted", "cancelled", INCOMPLETE) else "-"


def _is_run(path: Path) -> bool:
    return any((path / name).exists() for name in _RUN_FILES)


def in_sweep_order(folders: Iterable[Path]) -> list[Path]:
    """A sweep's job folders in job order (``0``, ``1``, ..., ``10``), then any others by name."""
    return sorted(folders, key=lambda sub: (not sub.name.isdigit(), int(sub.name) if sub.name.isdigit() else 0, sub.name))


def run_dirs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The run folders ``paths`` name: a folder with a run's record is one, a sweep's folder holds several."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "summary.json").is_file() or (path.is_dir() and _is_run(path)):
            found.append(path)
            continue
        if not path.is_dir():
            raise ValueError(f"{path} is not a folder")
        inner = in_sweep_order(sub for sub in path.iterdir() if sub.is_dir() and _is_run(sub))
        if not inner:
            raise ValueError(f"{path} holds no run (no run record in it or in its sub-folders)")
        found.extend(inner)
    return found


def _unquoted(value: str) -> str:
    """``'constant'`` -> ``constant``: Hydra records a quoted override value with its quotes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def overrides_of(run_dir: Path) -> dict[str, str]:
    """The run's command-line overrides (Hydra's record of them), less those that only place the run."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    listed = yaml.safe_load(path.read_text()) or []
    pairs = [str(item).partition("=") for item in listed if not str(item).lstrip("+~").startswith(_PLACEMENT)]
    return {key.lstrip("+~"): _unquoted(value) for key, _, value in pairs}


def _mode(run_dir: Path) -> str:
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            config = yaml.safe_load(path.read_text()) or {}
            return str((config.get("stopping") or {}).get("mode") or "min")
    return "min"


def read_row(run_dir: Path) -> RunRow:
    path = run_dir / "summary.json"
    if not path.is_file():
        return RunRow(run_dir, overrides_of(run_dir), mode=_mode(run_dir), status=INCOMPLETE)
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):  # one unreadable summary must not hide the other runs
        return RunRow(run_dir, overrides_of(run_dir), mode=_mode(run_dir), status="unreadable")
    metrics = {key: value for key, value in summary.items()
               if key.startswith(_METRICS) and isinstance(value, (int, float)) and not isinstance(value, bool)}
    return RunRow(run_dir, overrides_of(run_dir), summary.get("best_value"), summary.get("monitor"), _mode(run_dir),
                  summary.get("stop_reason"), summary.get("epochs_completed"),
                  str(summary.get("status") or FINISHED), metrics)  # a summary without status: written at the end


def is_study(paths: Sequence[str | os.PathLike[str]]) -> bool:
    """Whether ``paths`` is one sweep folder of a search (the Optuna sweeper's result, or the preset's database)."""
    return len(paths) == 1 and any((Path(paths[0]) / name).is_file() for name in _STUDY_FILES)


def study_mode(sweep: Path, rows: Sequence[RunRow]) -> str:
    """``min`` or ``max``: the study's direction from its database, else its runs' stopping mode."""
    database = sweep / "study.db"
    if database.is_file():
        try:
            import optuna  # the `tune` extra; imported only for a study's folder
        except ImportError:
            optuna = None
        if optuna is not None:
            try:
                with warnings.catch_warnings():  # the sweeper's trials hold distributions Optuna 3 deprecated
                    warnings.simplefilter("ignore", FutureWarning)
                    studies = optuna.get_all_study_summaries(storage=f"sqlite:///{database.absolute()}")
            except Exception:  # noqa: BLE001 - a database of another Optuna version: the runs say it too
                studies = []
            if len(studies) == 1:
                return "max" if studies[0].direction.name == "MAXIMIZE" else "min"
    modes = {row.mode for row in rows}
    return modes.pop() if len(modes) == 1 else "min"


def best_trial(rows: Sequence[RunRow], mode: str) -> RunRow | None:
    """The complete trial with the best value by ``mode`` (the first of equals, as Optuna keeps it)."""
    best: RunRow | None = None
    for row in rows:
        value = row.best_value
        if row.state != "COMPLETE" or value is None or math.isnan(value):
            continue
        if best is None or best.best_value is None or (value > best.best_value if mode == "max"
                                                       else value < best.best_value):
            best = row
    return best


def differing(rows: Sequence[RunRow]) -> list[str]:
    """The override keys whose values are not the same in every run, in first-seen order."""
    keys: list[str] = []
    for row in rows:
        keys += [key for key in row.overrides if key not in keys]
    return [key for key in keys if len({row.overrides.get(key) for row in rows}) > 1]


def labels(run_dirs_: Sequence[str | os.PathLike[str]]) -> list[str]:
    """A label per run: the overrides that differ between the runs, else the folder names (paths if those repeat)."""
    rows = [RunRow(Path(d), overrides_of(Path(d))) for d in run_dirs_]
    keys = differing(rows)
    if keys and len(rows) > 1:
        return [" ".join(f"{key}={row.overrides.get(key, '-')}" for key in keys) for row in rows]
    names = [Path(d).resolve().name for d in run_dirs_]
    return names if len(set(names)) == len(names) else [str(Path(d)) for d in run_dirs_]


def compare(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[str], list[RunRow]]:
    """The differing override keys, and the runs sorted best first (unfinished runs, then runs without a value, last)."""
    rows = [read_row(run_dir) for run_dir in run_dirs(paths)]

    def rank(row: RunRow) -> tuple[bool, int, float]:
        value = row.best_value
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return (row.status != FINISHED, 1, 0.0)
        return (row.status != FINISHED, 0, -value if row.mode == "max" else value)

    return differing(rows), sorted(rows, key=rank)


def metric_columns(rows: Sequence[RunRow]) -> list[str]:
    """The val/ and test/ metrics any run has, less the one every run monitors (shown as best_value)."""
    keys = sorted({key for row in rows for key in row.metrics})
    monitors = {row.monitor for row in rows if row.monitor}
    return [key for key in keys if not (len(monitors) == 1 and key in monitors)]


def table(keys: Sequence[str], rows: Sequence[RunRow], *, as_csv: bool = False, best: RunRow | None = None,
          study: bool = False) -> str:
    """The comparison as aligned text, or as CSV; for a ``study``, each trial's number and state, and the ``best``."""
    metrics = metric_columns(rows)
    header = ["run", *(["trial"] if study else []), *keys, *(["state"] if study else []), "status", "best_value",
              "monitor", *metrics, "stop_reason", "epochs", *(["best"] if study else [])]
    body = [[str(row.run_dir), *([row.run_dir.name] if study else []), *(row.overrides.get(key, "-") for key in keys),
             *([row.state] if study else []), row.status,
             "" if row.best_value is None else f"{row.best_value:.6g}", row.monitor or "",
             *("" if row.metrics.get(key) is None else f"{row.metrics[key]:.6g}" for key in metrics),
             row.stop_reason or "", "" if row.epochs is None else str(row.epochs),
             *(["best" if row is best else ""] if study else [])] for row in rows]
    if as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows([header, *body])
        return out.getvalue()
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]
    # An empty cell is "-" in the text table: the columns are read by splitting on spaces.
    return "\n".join("  ".join((cell or "-").ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *body]) + "\n"


def main(args: Sequence[str]) -> str:
    """``trainwire compare PATH... [--csv]``: the table, as text."""
    as_csv = "--csv" in args
    paths = [arg for arg in args if arg != "--csv"]
    if not paths:
        raise ValueError("compare needs a sweep folder or run folders")
    if is_study(paths):  # trials in study order, not sorted: the order the sampler saw them in
        rows = [read_row(run_dir) for run_dir in run_dirs(paths)]
        return table(differing(rows), rows, as_csv=as_csv, best=best_trial(rows, study_mode(Path(paths[0]), rows)),
                     study=True)
    keys, rows = compare(paths)
    return table(keys, rows, as_csv=as_csv)
