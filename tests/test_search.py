"""Hydra's Optuna sweeper drives ``trainwire train -m`` (ADR 0029): each trial returns its run's best value,
a refused trial is recorded as failed and the study goes on."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import trainwire

TINY = ("trainer.max_epochs=1", "hydra/sweeper=optuna")


def summaries(sweep):
    return {int(f.parent.name): json.loads(f.read_text()) for f in sweep.glob("*/summary.json")}


@pytest.mark.slow
def test_a_study_over_lr_optimises_the_runs_best_value(tmp_path):
    sweep = tmp_path / "sweep"
    done = trainwire("train", "-m", *TINY, "hydra.sweeper.n_trials=5", "hydra.sweeper.sampler.seed=0",
                     "optimizer.lr=tag(log, interval(1e-4, 3e-1))", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = summaries(sweep)
    assert sorted(runs) == [0, 1, 2, 3, 4]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == min(run["best_value"] for run in runs.values())


@pytest.mark.slow
def test_a_refused_trial_is_failed_in_the_study_and_the_study_goes_on(tmp_path):
    import optuna  # the `tune` extra: .ci/run installs it

    sweep, db = tmp_path / "sweep", tmp_path / "study.db"
    done = trainwire("train", "-m", *TINY, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=4",
                     "hydra.sweeper.max_failure_rate=1.0", "data.batch_size=choice(64, 0)",
                     "optimizer.lr=choice(0.1, 0.01)", f"hydra.sweeper.storage=sqlite:///{db}",
                     "hydra.sweeper.study_name=grid", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "data.batch_size=0 must be >= 1" in done.stderr
    study = optuna.load_study(study_name="grid", storage=f"sqlite:///{db}")
    states = {t.params["data.batch_size"]: set() for t in study.trials}
    for trial in study.trials:
        states[trial.params["data.batch_size"]].add(trial.state.name)
    assert len(study.trials) == 4 and states == {64: {"COMPLETE"}, 0: {"FAIL"}}
    failed = [run for run in summaries(sweep).values() if run["stop_reason"] == "failed"]
    assert len(failed) == 2 and all("data.batch_size=0 must be >= 1" in run["error"] for run in failed)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["data.batch_size"] == 64
