"""Pictures of runs: curves from ``metrics.jsonl``, and the lr curve a config would produce.

matplotlib is imported when a picture is drawn, through its object API (``Figure`` and the
Agg canvas): no pyplot, no global backend or state is touched.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwire.errors import ConfigError

Series = tuple[list[int], list[float]]

# (panel title, [(key, line style)]) — each key's points are (step, value) from the records holding it.
PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    ("loss (solid: train/loss, dashed: epoch mean, dots: val/loss)",
     [("train/loss", "-"), ("train/epoch_loss", "--"), ("val/loss", "o-")]),
    ("monitor", []),  # filled per run with its monitored metric
    ("learning rate", [("train/lr", "-")]),
    ("gradient norm (solid: before clipping, dotted: after)", [("train/grad_norm", "-"), ("train/grad_norm_clipped", ":")]),
]
# The series of each panel on which a run's best epoch and stop are marked (None: the run's monitored metric).
MARKED: list[str | None] = ["val/loss", None, "train/lr", "train/grad_norm"]
BEST_MARKER, STOP_MARKER = "*", "X"


@dataclass
class RunCurves:
    """What was read from one run directory, and drawn."""

    label: str
    series: dict[str, Series] = field(default_factory=dict)
    monitor: str | None = None
    best_step: int | None = None
    stop_step: int | None = None
    stop_reason: str | None = None


def plotted_dirs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The run folders ``paths`` name: a folder with ``metrics.jsonl`` is one, a sweep's folder holds several.

    A path that is neither stays as given, for ``read_records`` to refuse by name.
    """
    from trainwire.cli.compare import in_sweep_order

    found: list[Path] = []
    for path in map(Path, paths):
        inner = [] if (path / "metrics.jsonl").is_file() or not path.is_dir() else [
            sub for sub in in_sweep_order(path.iterdir()) if (sub / "metrics.jsonl").is_file()]
        found.extend(inner or [path])
    return found


def read_records(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The lines of ``run_dir/metrics.jsonl``; ConfigError (one line) when there is none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no metrics.jsonl (is it a trainwire run directory?)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _base(key: str) -> str:
    """``pre/val/loss`` -> ``val/loss``: the key without a stage prefix."""
    parts = key.split("/")
    return "/".join(parts[-2:]) if len(parts) > 2 else key


def _monitor(records: list[dict[str, Any]], summary: dict[str, Any]) -> str | None:
    keys = {_base(key) for record in records for key in record}
    monitors = [value for key, value in summary.items() if key.endswith("monitor") and isinstance(value, str)]
    if monitors and monitors[0] in keys and monitors[0] != "val/loss":
        return monitors[0]
    others = sorted(key for key in keys if key.startswith("val/") and key != "val/loss")
    return others[0] if others else (monitors[0] if monitors else None)


def matching(series: dict[str, Series], name: str) -> list[str]:
    """The keys of ``series`` that are ``name``, with or without a stage prefix, in order."""
    return [key for key in series if _base(key) == name]


def run_curves(run_dir: str | os.PathLike[str], label: str | None = None) -> RunCurves:
    """Reads one run: every series of ``PANELS`` and its monitored metric, the best epoch and the stop."""
    records = read_records(run_dir)
    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    curves = RunCurves(label or Path(run_dir).resolve().name, monitor=_monitor(records, summary))
    wanted = {key for _, lines in PANELS for key, _ in lines} | ({curves.monitor} if curves.monitor else set())
    keys = list(dict.fromkeys(key for record in records for key in record if _base(key) in wanted))
    for key in keys:  # a staged run (stage=pre, Stages) has pre/train/loss, fine/train/loss, ...
        points = [(record["step"], record[key]) for record in records if record.get(key) is not None]
        if points:
            curves.series[key] = ([step for step, _ in points], [float(value) for _, value in points])
    # The best epoch and the stop of the last stage (the one summary.json names last).
    epoch_keys = [key for key in keys if _base(key) == "val/loss"] or [None]
    epochs = [record for record in records if epoch_keys[-1] in record or
              (epoch_keys[-1] is None and any(_base(key) == "train/epoch_loss" for key in record))]
    if epochs:
        prefix = epoch_keys[-1][: -len("val/loss")] if epoch_keys[-1] else ""
        curves.stop_step, curves.stop_reason = epochs[-1]["step"], summary.get(f"{prefix}stop_reason")
        best = summary.get(f"{prefix}best_epoch")
        steps = [record["step"] for record in epochs if record["epoch"] == best]
        curves.best_step = steps[0] if steps else None
    return curves


def _labels(run_dirs: Sequence[str | os.PathLike[str]]) -> list[str]:
    from trainwire.cli.compare import labels

    return labels(run_dirs)  # the overrides that differ between the runs (a sweep's lr=…), else the folder names


def _save(figure: Any, out: str | os.PathLike[str]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(out, dpi=100)
    return out


def plot_runs(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> list[RunCurves]:
    """Draws the runs on one figure (one colour per run) and writes it to ``out`` as PNG; returns what it drew.

    ``run_dirs`` are run folders, or sweep folders standing for the runs in them. Panels: train
    and validation loss; the monitored metric; the lr; the gradient norm before (solid) and after
    (dotted) clipping. A star marks each run's best epoch and a cross its stop, on the run's own
    curve in each panel. The x-axis is the optimizer step.
    """
    run_dirs = plotted_dirs(run_dirs)
    runs = [run_curves(run_dir, label) for run_dir, label in zip(run_dirs, _labels(run_dirs))]
    _save(figure_of(runs), out)
    return runs


def _value_at(series: Series, step: int) -> float | None:
    """The curve's value at ``step`` (interpolated between its points); None outside it."""
    steps, values = series
    if not steps or not steps[0] <= step <= steps[-1]:
        return None
    for index, at in enumerate(steps):
        if at >= step:
            if at == step or index == 0:
                return values[index]
            before, after = steps[index - 1], values[index - 1]
            return after + (values[index] - after) * (step - before) / (at - before)
    return None


def _mark(ax: Any, run: RunCurves, name: str | None, colour: str) -> None:
    """The run's best epoch (star) and stop (cross) on its own curve of ``name`` (the last stage's)."""
    keys = matching(run.series, name or run.monitor or "")
    if not keys:
        return
    for step, marker in ((run.stop_step, STOP_MARKER), (run.best_step, BEST_MARKER)):  # best on top: often the same
        value = None if step is None else _value_at(run.series[keys[-1]], step)
        if value is not None:
            ax.plot([step], [value], marker, color=colour, markersize=11 if marker == BEST_MARKER else 8,
                    markeredgecolor="black", markeredgewidth=0.6, linestyle="none", label=f"_{marker} {run.label}",
                    zorder=3)


def figure_of(runs: Sequence[RunCurves]) -> Any:
    """The figure ``plot_runs`` writes: a matplotlib ``Figure`` with four panels and one legend below them."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    figure = Figure(figsize=(16, 8), layout="constrained")
    axes = figure.subplots(2, 2).ravel()
    colours = [f"C{index % 10}" for index in range(len(runs))]
    for ax, (title, lines), marked in zip(axes, PANELS, MARKED):
        for run, colour in zip(runs, colours):
            keys = lines or ([(run.monitor, "o-")] if run.monitor else [])
            for name, style in keys:
                for key in matching(run.series, name):
                    steps, values = run.series[key]
                    ax.plot(steps, values, style, color=colour, label=f"{run.label} {key}", markersize=3)
            _mark(ax, run, marked, colour)
        if title == "monitor":
            title = ", ".join(sorted({run.monitor for run in runs if run.monitor})) or "monitored metric"
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("optimizer step")
    # One legend for the figure, below the panels: a run's colour, its best and stop; beside each panel,
    # legends took half the width, and a title listing every run's stop ran off the figure's edges.
    handles = [Line2D([], [], color=colour, linewidth=2,
                      label=f"{run.label}: best at step {run.best_step}, stopped at {run.stop_step}"
                            f"{f' ({run.stop_reason})' if run.stop_reason else ''}")
               for run, colour in zip(runs, colours)]
    handles += [Line2D([], [], marker=BEST_MARKER, color="0.4", markeredgecolor="black", linestyle="none",
                       markersize=11, label="best epoch"),
                Line2D([], [], marker=STOP_MARKER, color="0.4", markeredgecolor="black", linestyle="none",
                       markersize=8, label="stop")]
    longest = max(len(handle.get_label()) for handle in handles)
    figure.legend(handles=handles, loc="outside lower center", fontsize="small", frameon=False,
                  ncols=max(1, min(len(handles), 160 // (longest + 8))))
    figure.suptitle(f"{len(runs)} run{'s' if len(runs) != 1 else ''} by optimizer step", fontsize="medium")
    return figure


def plot_lr(lrs: Sequence[float], out: str | os.PathLike[str], *, steps_per_epoch: int, title: str = "") -> Series:
    """Draws the lr of each optimizer step (``trainwire.policies.lr.preview``) to ``out``; returns the plotted series."""
    from matplotlib.figure import Figure

    steps = list(range(len(lrs)))
    figure = Figure(figsize=(9, 4.5), layout="constrained")
    ax = figure.subplots()
    ax.plot(steps, list(lrs), "-", color="C0")
    epochs = len(lrs) // steps_per_epoch if steps_per_epoch else 0
    if 1 < epochs <= 100:
        for epoch in range(1, epochs):
            ax.axvline(epoch * steps_per_epoch, color="0.85", linewidth=0.6, zorder=0)
    ax.set_xlabel(f"optimizer step ({steps_per_epoch} per epoch; grey lines: epoch boundaries)")
    ax.set_ylabel("learning rate")
    ax.set_title(title or "learning rate by step")
    _save(figure, out)
    return steps, list(lrs)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggestion: float,
                 out: str | os.PathLike[str], *, title: str = "") -> Path:
    """Draws the LR range test (loss against lr, log scale; the suggestion marked) to ``out``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.5), layout="constrained")
    ax = figure.subplots()
    ax.plot(list(lrs), list(losses), "-", color="0.75", linewidth=0.8, label="loss")
    ax.plot(list(lrs), list(smoothed), "-", color="C0", label="smoothed loss")
    ax.axvline(suggestion, color="C3", linestyle="--", linewidth=1, label=f"suggested lr {suggestion:.3g}")
    ax.set_xscale("log")
    finite = [value for value in smoothed if math.isfinite(value)]
    if finite:  # the diverging tail would flatten the interesting part
        ax.set_ylim(min(finite) - 0.05 * abs(min(finite)), 1.5 * finite[0] + 0.05)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title or "LR range test")
    ax.legend(fontsize="small")
    return _save(figure, out)
