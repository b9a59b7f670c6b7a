"""Hydra's Optuna sweeper drives ``trainwire train -m`` (ADR 0029): each trial returns its run's best value,
a refused trial is recorded as failed and the study goes on."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import trainwire

TINY = ("trainer.max_epochs=1", "data.train_samples=256", "hydra/sweeper=optuna")


def summaries(sweep):
    return {int(f.parent.name): json.loads(f.read_text()) for f in sweep.glob("*/summary.json")}


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


@pytest.mark.slow
def test_the_same_command_again_resumes_the_study_and_its_best_value_is_the_best_run(tmp_path):
    """One study, two processes (each process start costs seconds: the suite's budget is tight)."""
    import optuna

    command = ("train", "-m", *TINY, "hydra.sweeper.n_trials=2", "optimizer.lr=interval(1e-3, 1e-1)",
               "hydra.sweeper.storage=sqlite:///study.db", "hydra.sweeper.study_name=lr")
    for _ in range(2):  # each run its own (timestamped) sweep folder; the study is the database
        done = trainwire(*command, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * 4
    runs = [json.loads(f.read_text()) for f in tmp_path.glob("multirun/*/*/*/summary.json")]
    assert len(runs) == 4 and study.best_value == min(run["best_value"] for run in runs)
    latest = max(tmp_path.glob("multirun/*/*/optimization_results.yaml"))
    assert yaml.safe_load(latest.read_text())["best_value"] == study.best_value
