"""step=gbdt: LightGBM through the one loop, the same record, stopping, checkpoints and refusals."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from dependency_injector import providers

from trainwire.checkpointing.format import read_checkpoint
from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.errors import CheckpointError, ConfigError, TrainingInterrupted
from trainwire.loop.signals import StopToken
from trainwire.policies.objectives import Regression

# Quick to boost: a larger step per round, so the validation loss turns within a few dozen rounds.
GBDT = ["experiment=gbdt", "model.learning_rate=0.2", "model.num_threads=1", "stopping.patience=8", "progress=never"]


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_gbdt_on_diabetes_beats_the_mean_stops_early_and_keeps_the_best_round(tmp_path):
    container = build_container(compose([*GBDT, f"run_dir={tmp_path}"]))
    model, loaders = container.model(), container.data()
    result = container.paradigm().run(model, loaders.train, loaders.val)
    summary = _summary(tmp_path)
    assert summary["val/r2"] > 0.3  # predicting the mean scores 0
    assert result.stop_reason == "patience" and result.epochs_completed == result.best_epoch + 1 + 8
    # The model holds the best round's trees, and scores what the summary says.
    assert model.booster.current_iteration() == result.best_epoch + 1
    assert Regression().evaluate(model, loaders.val)["rmse"] == pytest.approx(summary["val/rmse"], rel=1e-6)
    # best.pt is digest-manifested and weights_only-loadable, and holds the same trees.
    manifest = json.loads((tmp_path / "checkpoints" / "manifest.json").read_text())
    assert "best.pt" in json.dumps(manifest) and "xxh3_128" in json.dumps(manifest)
    best = read_checkpoint(tmp_path / "checkpoints" / "best.pt")
    trees = bytes(best["model"]["_extra_state"].numpy()).decode()
    assert trees == model.booster.model_to_string()


def test_gbdt_writes_the_same_record_keys_as_the_mlp(tmp_path):
    """The comparison `trainwire compare` will make: both summaries hold the regression metrics, side by side."""
    mlp = run(compose(["data=diabetes", "objective=regression", "trainer.max_epochs=30", "progress=never",
                       f"run_dir={tmp_path / 'mlp'}"]))
    gbdt = run(compose([*GBDT, f"run_dir={tmp_path / 'gbdt'}"]))
    keys = {"val/rmse", "val/mae", "val/mape", "val/r2", "val/loss", "best_epoch", "stop_reason", "monitor"}
    mlp_summary, gbdt_summary = _summary(tmp_path / "mlp"), _summary(tmp_path / "gbdt")
    assert keys <= set(mlp_summary) and keys <= set(gbdt_summary)
    assert {k for k in mlp_summary if k.startswith("val/")} == {k for k in gbdt_summary if k.startswith("val/")}
    epoch_line = lambda d: next(json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()
                                if "val/rmse" in line)
    assert {"val/rmse", "val/mae", "val/mape", "val/r2", "train/epoch_loss"} <= set(epoch_line(tmp_path / "gbdt"))
    assert {"val/rmse", "val/mae", "val/mape", "val/r2", "train/epoch_loss"} <= set(epoch_line(tmp_path / "mlp"))
    for result in (mlp, gbdt):
        assert result.best_metrics["val/r2"] > 0.3
    print(f"\ndiabetes, val/rmse (standardised target): MLP {mlp_summary['val/rmse']:.4f}, "
          f"GBDT {gbdt_summary['val/rmse']:.4f}")


class _StopAt:
    """Stops the run (its StopToken) at the end of epoch ``epoch``, as SIGTERM would."""

    def __init__(self, token, epoch):
        self.token, self.epoch = token, epoch

    def on_epoch_end(self, state, metrics):
        if state.epoch == self.epoch:
            self.token.stop()


def test_gbdt_resumes_exactly_and_refuses_other_parameters(tmp_path):
    job = [*GBDT, "stopping.patience=1000", "trainer.max_epochs=12"]
    whole = run(compose([*job, f"run_dir={tmp_path / 'whole'}"]))
    token = StopToken()
    container = build_container(compose([*job, f"run_dir={tmp_path / 'cut'}"]))
    container.hooks.override(providers.List(providers.Object(_StopAt(token, 4))))
    with pytest.raises(TrainingInterrupted):
        run(container, stop=token)
    with pytest.raises(ConfigError, match=r"trained with another config \(model\.num_leaves: 31 -> 15\)"):
        run(compose([*job, f"run_dir={tmp_path / 'cut'}", "trainer.resume=auto", "model.num_leaves=15"]))
    with pytest.raises(CheckpointError, match=r"model\.num_leaves=31, this run has 15"):  # a path: the plan's check
        run(compose([*job, f"run_dir={tmp_path / 'other'}", f"trainer.resume={tmp_path / 'cut/checkpoints/last.pt'}",
                     "model.num_leaves=15"]))
    resumed = run(compose([*job, f"run_dir={tmp_path / 'cut'}", "trainer.resume=auto"]))
    assert resumed.epochs_completed == 12
    for a, b in zip(whole.history, resumed.history):
        assert a["val/rmse"] == pytest.approx(b["val/rmse"], rel=1e-9) and a["train/trees"] == b["train/trees"]
    # An MLP run refuses the GBDT checkpoint (and the GBDT run an MLP one) with one line.
    with pytest.raises(CheckpointError, match="lacks optimizer"):
        run(compose(["data=diabetes", "objective=regression", "trainer.max_epochs=12", f"run_dir={tmp_path / 'mlp'}",
                     f"trainer.resume={tmp_path / 'cut/checkpoints/last.pt'}", "progress=never"]))


@pytest.mark.parametrize("override, message", [
    ("model.num_leaves=0", r"^model\.num_leaves=0 must be >= 2$"),
    ("model.learning_rate=-1", r"^model\.learning_rate=-1\.0 must be > 0$"),
    ("+model.params.no_such_option=1", r"^model\.params\.no_such_option is not a LightGBM parameter"),
    ("+model.params.bagging_fraction=2", r"^model\.params\.bagging_fraction=2 is refused by LightGBM: .*bagging_fraction"),
    ("+model.params.num_leaves=7", r"^model\.params\.num_leaves repeats model\.num_leaves"),
])
def test_bad_lightgbm_values_are_one_line_naming_the_key_before_any_work(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run(compose([*GBDT, f"run_dir={tmp_path}", override]))
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("override, key", [
    ("trainer.precision=bf16", "trainer.precision"), ("trainer.accumulate_steps=2", "trainer.accumulate_steps"),
    ("strategy=ddp", "strategy"),
])
def test_settings_the_step_cannot_honour_are_refused_when_the_container_is_built(override, key):
    with pytest.raises(ConfigError, match=rf"step=gbdt .*; {key}=.* is not supported"):
        build_container(compose([*GBDT, override]))


def test_gbdt_refuses_another_model_or_objective(tmp_path):
    with pytest.raises(ConfigError, match="step=gbdt needs model=lightgbm; got MLP"):
        run(compose(["experiment=gbdt", "model=mlp", f"run_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="objective.loss.name='physics_informed'"):
        run(compose([*GBDT, "objective/loss=physics_informed", f"run_dir={tmp_path}"]))


def test_without_lightgbm_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # what `import lightgbm` meets when it is not installed
    from trainwire.paradigms.boosting import LightGBMModel

    with pytest.raises(ConfigError, match=r"pip install 'trainwire\[gbdt\]'"):
        LightGBMModel()


def test_the_models_state_dict_round_trips_the_booster():
    lgb = pytest.importorskip("lightgbm")
    from trainwire.paradigms.boosting import LightGBMModel

    model = LightGBMModel(num_threads=1, min_data_in_leaf=2)
    x = torch.randn(64, 3, dtype=torch.float64)
    model.booster = lgb.train({"objective": "regression", "verbosity": -1, "min_data_in_leaf": 2}, lgb.Dataset(
        x.numpy(), (x[:, 0] * 2).numpy()), num_boost_round=5)
    copy = LightGBMModel(num_threads=1)
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy(x.float()), model(x.float()))
    assert copy(x.float()).shape == (64, 1)
    assert LightGBMModel().state_dict()["_extra_state"].numel() == 0
