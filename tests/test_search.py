"""Hydra's Optuna sweeper drives ``trainwire train -m`` (ADR 0029) through the ``hpo=optuna`` preset: each trial
returns its run's best value, the direction follows ``stopping.mode``, the study is a SQLite database in the sweep
folder that the same command resumes, a refused trial is recorded as failed and the study goes on, and
``trainwire compare`` reads the study's folder."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from conftest import start_cli, trainwire

from trainwire.cli.compare import main as compare
from trainwire.errors import ConfigError

TINY = ("trainer.max_epochs=1", "data.train_samples=256", "hpo=optuna", "progress=never", "log.level=warning")


def summaries(sweep):
    return {int(f.parent.name): json.loads(f.read_text()) for f in sweep.glob("*/summary.json")}


def the_study(sweep):
    import optuna  # the `tune` extra: .ci/run installs it

    assert (sweep / "study.db").is_file()  # the preset's storage: SQLite in the sweep folder, a fixed study name
    return optuna.load_study(study_name="trainwire", storage=f"sqlite:///{sweep / 'study.db'}")


@pytest.mark.slow
def test_a_refused_trial_is_failed_in_the_study_which_goes_on_and_maximises_a_max_mode_metric(tmp_path):
    sweep = tmp_path / "sweep"
    done = trainwire("train", "-m", *TINY, "hydra/sweeper/sampler=grid", "data.batch_size=choice(64, 0)",
                     "optimizer.lr=choice(0.1, 0.001)", "stopping.monitor=val/accuracy", "stopping.mode=max",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "data.batch_size=0 must be >= 1" in done.stderr
    study = the_study(sweep)
    assert study.direction.name == "MAXIMIZE"
    states = {t.params["data.batch_size"]: set() for t in study.trials}
    for trial in study.trials:
        states[trial.params["data.batch_size"]].add(trial.state.name)
    assert len(study.trials) == 4 and states == {64: {"COMPLETE"}, 0: {"FAIL"}}
    runs = summaries(sweep)
    failed = [run for run in runs.values() if run["status"] == "failed"]
    assert len(failed) == 2 and all(run["stop_reason"] == "refused" for run in failed)
    assert all(run["error"] == "data.batch_size=0 must be >= 1" for run in failed)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = [run["best_value"] for run in runs.values() if run["status"] == "finished"]
    assert len(values) == 2 and values[0] != values[1]
    assert results["best_params"]["data.batch_size"] == 64 and results["best_value"] == max(values)

    lines = compare([str(sweep)]).splitlines()  # the study's folder: trials in order, their state, the best marked
    header, rows = lines[0].split(), [line.split() for line in lines[1:]]
    column = {name: header.index(name) for name in ("trial", "data.batch_size", "optimizer.lr", "state", "best_value")}
    assert [row[column["trial"]] for row in rows] == ["0", "1", "2", "3"]
    by_number = {trial.number: trial for trial in study.trials}
    for row in rows:
        trial = by_number[int(row[column["trial"]])]
        assert row[column["state"]] == trial.state.name
        assert row[column["data.batch_size"]] == str(trial.params["data.batch_size"])
        assert float(row[column["optimizer.lr"]]) == trial.params["optimizer.lr"]
    (best,) = [row for row in rows if row[-1] == "best"]
    assert int(best[column["trial"]]) == study.best_trial.number
    assert float(best[column["best_value"]]) == pytest.approx(max(values), rel=1e-5)


@pytest.mark.slow
def test_the_same_command_again_resumes_the_study_in_its_folder_and_its_best_value_is_the_best_run(tmp_path):
    """One study, two processes (each process start costs seconds: the suite's budget is tight)."""
    command = ("train", "-m", *TINY, "hydra.sweeper.n_trials=2", "optimizer.lr=interval(1e-3, 1e-1)",
               "hydra.sweep.dir=study")
    for _ in range(2):
        done = trainwire(*command, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    sweep = tmp_path / "study"
    study = the_study(sweep)
    assert study.direction.name == "MINIMIZE"  # stopping.mode's default, min
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * 4
    runs = summaries(sweep)  # the second process's trials numbered on: each trial's folder is its number
    assert sorted(runs) == [0, 1, 2, 3]
    assert all(runs[trial.number]["best_value"] == trial.value for trial in study.trials)
    assert study.best_value == min(run["best_value"] for run in runs.values())
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"] == study.best_value


def test_trial_pruning_stops_a_run_its_pruner_prunes_and_compare_reads_the_study_pruned(tmp_path):
    """Optuna's Python API with a real study in SQLite: each epoch's value goes to the trial, the pruner decides."""
    import functools

    import optuna
    import torch

    from trainwire import Classification, JsonlSink, PatienceStopper, Trainer, TrainerSettings, TrialPruning
    from trainwire.models import MLP

    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(2)]
    folder = tmp_path / "py"
    folder.mkdir()

    class PruneTheFirst(optuna.pruners.BasePruner):  # asked by Optuna at each should_prune, as any pruner is
        def prune(self, study, trial):
            return trial.number == 0

    def objective(trial):
        torch.manual_seed(0)
        trainer = Trainer(objective=Classification(), optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                          settings=TrainerSettings(max_epochs=3, device="cpu"),
                          sink=JsonlSink(folder / str(trial.number)),
                          stopping_policy=TrialPruning(trial, PatienceStopper("val/accuracy", "max", patience=5)))
        result = trainer.fit(MLP(8, 3, [8]), data, data)
        if result.stop_reason == "pruned":
            raise optuna.TrialPruned()
        return result.best_value

    study = optuna.create_study(direction="maximize", pruner=PruneTheFirst(), study_name="py",
                                storage=f"sqlite:///{folder / 'study.db'}")
    study.optimize(objective, n_trials=2)
    runs = summaries(folder)
    assert [trial.state.name for trial in study.trials] == ["PRUNED", "COMPLETE"]
    assert [runs[n]["stop_reason"] for n in (0, 1)] == ["pruned", "max_epochs"]
    assert [runs[n]["epochs_completed"] for n in (0, 1)] == [1, 3]
    assert [sorted(trial.intermediate_values) for trial in study.trials] == [[0], [0, 1, 2]]  # each epoch's value
    assert study.trials[0].intermediate_values[0] == runs[0]["val/accuracy"]

    lines = compare([str(folder)]).splitlines()
    header, rows = lines[0].split(), [line.split() for line in lines[1:]]
    assert [(row[header.index("trial")], row[header.index("state")], row[-1]) for row in rows] == [
        ("0", "PRUNED", "-"), ("1", "COMPLETE", "best")]
    with pytest.raises(ConfigError, match="direction is minimize"):
        TrialPruning(optuna.create_study(direction="minimize").ask(), PatienceStopper("val/accuracy", "max"))


@pytest.mark.parametrize("blocked", ["optuna", "hydra_plugins.hydra_optuna_sweeper"])
def test_the_preset_without_the_sweeper_installed_is_refused_in_one_line(monkeypatch, blocked):
    from trainwire.cli.train import check_sweeper

    monkeypatch.setitem(sys.modules, blocked, None)  # how Python marks a module that cannot be imported
    with pytest.raises(ConfigError, match=rf"^hpo=optuna needs Hydra's Optuna sweeper \({blocked} not installed\): "
                                          r"pip install 'trainwire\[tune\]' && pip install --no-deps "):
        check_sweeper(["trainer.max_epochs=1", "hpo='optuna'"])
    check_sweeper(["trainer.max_epochs=1"])  # no search asked: nothing to check


@pytest.mark.slow
def test_sigterm_stops_the_trial_with_its_checkpoint_and_ends_the_study(tmp_path):
    """As a run does: the trial saves and says so, exit 143, and no later trial starts (issue 23)."""
    import signal
    import time

    process = start_cli("train", "-m", *TINY, "trainer.max_epochs=500", "hydra.sweeper.n_trials=3",
                        "hydra.sweep.dir=study", cwd=tmp_path)
    metrics = tmp_path / "study" / "0" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and sum('"val/loss"' in line for line in metrics.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-2000:]
    assert f"trainwire: interrupted by SIGTERM; checkpoint saved in {tmp_path / 'study' / '0' / 'checkpoints'}" in err
    assert json.loads((tmp_path / "study" / "0" / "summary.json").read_text())["status"] == "interrupted"
    assert (tmp_path / "study" / "0" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "study" / "1").exists()  # the study ended with its trial
    # The trials the sweeper had asked for (a batch of hydra.sweeper.n_jobs) stay RUNNING, as the README says.
    assert {trial.state.name for trial in the_study(tmp_path / "study").trials} == {"RUNNING"}
