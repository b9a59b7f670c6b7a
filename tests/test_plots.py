"""`trainwire plot` and `trainwire lr-preview`: valid PNGs whose curves are the record."""

from __future__ import annotations

import json
import struct

import pytest
from conftest import trainwire

from trainwire.cli.plots import figure_of, plot_lr, plot_runs, run_curves
from trainwire.config import compose
from trainwire.containers import lr_preview, run
from trainwire.testing import read_metrics


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24]), len(data)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    common = ["lr.warmup_epochs=1", "data.batch_size=128", "trainer.log_every_n_steps=3"]
    run(compose([f"run_dir={root / 'slow'}", "trainer.max_epochs=4", *common]))
    run(compose([f"run_dir={root / 'fast'}", "trainer.max_epochs=8", "optimizer.lr=3e-3", "stopping.patience=1",
                 "stopping.min_delta=0.05", *common]))
    return root / "slow", root / "fast"


def test_plot_draws_the_record_of_each_run(two_runs, tmp_path):
    out = tmp_path / "curves.png"
    runs = plot_runs(two_runs, out)
    (width, height), size = png_size(out)
    assert (width, height) == (1600, 800) and size > 20_000
    for run_dir, curves in zip(two_runs, runs):
        records = read_metrics(run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        for key in ("train/loss", "val/loss", "train/lr", "train/grad_norm", "train/grad_norm_clipped",
                    "val/accuracy"):
            assert curves.series[key] == ([r["step"] for r in records if key in r], [r[key] for r in records if key in r])
        epochs = [r for r in records if "val/loss" in r]
        assert curves.best_step == epochs[summary["best_epoch"]]["step"] and curves.stop_step == epochs[-1]["step"]
        assert curves.monitor == "val/accuracy"
    fast = runs[1]
    assert fast.stop_reason == "patience" and fast.stop_step < 8 * 12  # stopped early, and marked there
    # The figure holds exactly these series: read the line data back from matplotlib.
    figure = figure_of(runs)
    drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for ax in figure.axes
             for line in ax.lines if not line.get_label().startswith("_")}
    for curves in runs:
        for key, series in curves.series.items():
            assert drawn[f"{curves.label} {key}"] == (list(series[0]), list(series[1]))
    for curves in runs:  # the best epoch (star) and the stop (cross) on the run's own val/loss curve
        marks = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in figure.axes[0].lines
                 if line.get_label().startswith("_") and line.get_label().endswith(f" {curves.label}")}
        values = dict(zip(*curves.series["val/loss"]))
        assert marks == {f"_* {curves.label}": ([curves.best_step], [values[curves.best_step]]),
                         f"_X {curves.label}": ([curves.stop_step], [values[curves.stop_step]])}


def test_lr_preview_is_the_schedule_of_the_config(tmp_path):
    cfg = compose(["lr.warmup_epochs=5", "trainer.max_epochs=20", "optimizer.lr=0.01", "lr.min_lr=1e-4"])
    lrs, per_epoch = lr_preview(cfg)
    assert per_epoch == 23 and len(lrs) == 20 * 23
    assert lrs[0] == pytest.approx(0.01 * 1e-3)  # start_factor * lr
    assert max(lrs) == pytest.approx(0.01) and lrs.index(max(lrs)) == 5 * 23  # warmup ends after 5 epochs
    assert lrs[-1] == pytest.approx(1e-4, rel=0.05)
    out = tmp_path / "lr.png"
    steps, values = plot_lr(lrs, out, steps_per_epoch=per_epoch)
    assert values == lrs and steps == list(range(len(lrs)))
    (width, height), size = png_size(out)
    assert (width, height) == (900, 450) and size > 10_000


@pytest.mark.slow
def test_plot_and_lr_preview_on_the_command_line(two_runs, tmp_path):
    done = trainwire("plot", *map(str, two_runs), "-o", str(tmp_path / "both.png"), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert png_size(tmp_path / "both.png")[0] == (1600, 800)
    done = trainwire("lr-preview", "lr=cosine_restarts", "lr.T0=5", "-o", str(tmp_path / "lr.png"), cwd=tmp_path,
                     timeout=300)
    assert done.returncode == 0, done.stderr
    assert png_size(tmp_path / "lr.png")[0] == (900, 450)
    missing = trainwire("plot", str(tmp_path / "nowhere"), cwd=tmp_path, timeout=300)
    assert missing.returncode == 2 and "no metrics.jsonl" in missing.stderr and "Traceback" not in missing.stderr
    unwritable = trainwire("plot", str(two_runs[0]), "-o", "/proc/curves.png", cwd=tmp_path, timeout=300)
    assert (unwritable.returncode, unwritable.stderr.strip().splitlines()) == (1, [  # before: matplotlib's traceback
        "trainwire: error: plot cannot write /proc/curves.png: No such file or directory"])
    assert run_curves(two_runs[0]).label == "slow"


def test_plot_a_staged_run(tmp_path, task):
    from conftest import make_model, make_trainer

    from trainwire import GuardedFanOut, JsonlSink, PatienceStopper, TrainerSettings
    from trainwire.sinks.stages import Stages

    with Stages(GuardedFanOut(JsonlSink(tmp_path))) as stages:
        make_trainer(sink=stages.stage("pre")).fit(make_model(), *task)
        fine = make_trainer(sink=stages.stage("fine"), stopping_policy=PatienceStopper(monitor="val/loss"),
                            settings=TrainerSettings(max_epochs=2, device="cpu", log_every_n_steps=1)).fit(
            make_model(), *task)
    (curves,) = plot_runs([tmp_path], tmp_path / "staged.png")
    records = read_metrics(tmp_path)
    for key in ("pre/train/loss", "fine/train/loss", "pre/val/loss", "fine/val/loss", "fine/val/accuracy"):
        assert curves.series[key] == ([r["step"] for r in records if key in r], [r[key] for r in records if key in r])
    fine_epochs = [r for r in records if "fine/val/loss" in r]
    assert fine.best_epoch is not None
    assert curves.stop_step == fine_epochs[-1]["step"] and curves.best_step == fine_epochs[fine.best_epoch]["step"]
    assert png_size(tmp_path / "staged.png")[0] == (1600, 800)
