"""Stage prefixes, metric frequency and the progress bar."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch
from conftest import make_model, make_trainer

from trainwire import (
    Classification,
    ConfigError,
    FanOut,
    GuardedFanOut,
    JsonlSink,
    TrainerSettings,
)
from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.policies.metric_schedule import ScheduledMetrics
from trainwire.sinks.progress import ProgressBar, progress_enabled
from trainwire.sinks.stages import PrefixedSink, Stages
from trainwire.testing import RecordingSink, read_metrics

SMALL = ["trainer.max_epochs=4", "lr.warmup_epochs=1", "data.batch_size=256"]


def test_two_stages_share_one_run_with_prefixes_and_a_rising_step(tmp_path, task):
    external = RecordingSink()
    with Stages(GuardedFanOut(JsonlSink(tmp_path), external)) as stages:
        pre = make_trainer(sink=stages.stage("pre")).fit(make_model(), *task)
        fine = make_trainer(sink=stages.stage("fine"),
                            settings=TrainerSettings(max_epochs=2, device="cpu", log_every_n_steps=1)).fit(
            make_model(), *task)
    records = read_metrics(tmp_path)
    pre_steps = [r["step"] for r in records if "pre/train/loss" in r]
    fine_steps = [r["step"] for r in records if "fine/train/loss" in r]
    assert pre_steps == list(range(1, pre.steps + 1))
    assert fine_steps == list(range(pre.steps + 1, pre.steps + fine.steps + 1))  # the axis keeps rising
    assert all(key.split("/")[0] in ("pre", "fine") for r in records for key in r if key not in ("step", "epoch"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pre/avg_epoch_time_s"] == pytest.approx(pre.avg_epoch_time_s)
    assert summary["fine/avg_epoch_time_s"] == pytest.approx(fine.avg_epoch_time_s)
    assert summary["pre/epochs_completed"] == 3 and summary["fine/epochs_completed"] == 2
    # One external run across both stages: started once, finished once, every record delivered.
    assert external.started and external.status == "finished" and len(external.records) == len(records)
    assert external.summary_values["fine/best_epoch"] == fine.best_epoch


def test_stages_finish_the_run_as_failed_when_a_stage_raises(tmp_path, task):
    external = RecordingSink()

    class Boom:
        def on_epoch_end(self, state, metrics):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError), Stages(GuardedFanOut(JsonlSink(tmp_path), external)) as stages:
        make_trainer(sink=stages.stage("pre"), hooks=[Boom()]).fit(make_model(), *task)
    assert external.status == "failed"


def test_stage_from_config_prefixes_the_record_and_summary(tmp_path):
    result = run(compose([f"run_dir={tmp_path}", "stage=pre", *SMALL]))
    records = read_metrics(tmp_path)
    assert {key for r in records for key in r} >= {"step", "epoch", "pre/train/loss", "pre/val/loss"}
    assert not any(key.startswith(("train/", "val/")) for r in records for key in r)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pre/avg_epoch_time_s"] == pytest.approx(result.avg_epoch_time_s)
    assert summary["pre/best_epoch"] == result.best_epoch


def test_prefixed_sink_passes_start_and_finish_unless_told_not_to():
    inner = RecordingSink()
    sink = PrefixedSink("gan/", inner)
    sink.start()
    sink.log({"d/loss": 1.0}, step=3, epoch=0)
    sink.finish("killed")
    assert inner.started and inner.status == "killed" and inner.records[0].metrics == {"gan/d/loss": 1.0}
    quiet = RecordingSink()
    PrefixedSink("gan/", quiet, lifecycle=False).finish("failed")
    assert quiet.status is None


def test_metrics_every_n_epochs_from_config(tmp_path):
    result = run(compose([f"run_dir={tmp_path}", "+metrics_every.accuracy=2", *SMALL]))
    epochs = [r for r in read_metrics(tmp_path) if "val/loss" in r]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    assert ["val/accuracy" in r for r in epochs] == [True, False, True, False]
    assert all("val/accuracy" in h for h in result.history[::2])


def test_an_objective_that_takes_only_skips_the_work(task):
    class Expensive(Classification):
        def __init__(self):
            super().__init__()
            self.asked: list[set[str]] = []

        def evaluate(self, model, batches, only=None, reduce=None):
            self.asked.append(set(only))
            metrics = super().evaluate(model, batches)
            if "expensive" in only:
                metrics["expensive"] = 42.0
            return metrics

    inner = Expensive()
    sink = RecordingSink()
    make_trainer(objective=ScheduledMetrics(inner, {"expensive": 3}), sink=sink,
                 settings=TrainerSettings(max_epochs=5, device="cpu")).fit(make_model(), *task)
    assert inner.asked == [{"expensive", "loss"}, {"loss"}, {"loss"}, {"expensive", "loss"}, {"loss"}]
    assert [epoch for epoch, metrics in enumerate(r.metrics for r in sink.records if "val/loss" in r.metrics)
            if "val/expensive" in metrics] == [0, 3]


@pytest.mark.parametrize("override", ["stopping.monitor=val/accuracy", "lr=plateau", "+metrics_every.loss=2"])
def test_a_monitored_metric_must_be_computed_every_epoch(tmp_path, override):
    every = "+metrics_every.accuracy=2" if override != "+metrics_every.loss=2" else "+metrics_every.x=1"
    cfg = compose([f"run_dir={tmp_path}", every, override, "stopping.mode=max"]
                  + (["lr.monitor=val/accuracy"] if override == "lr=plateau" else []))
    with pytest.raises(ConfigError, match=r"metrics_every\.(accuracy|loss)=2"):
        build_container(cfg).objective()


def test_progress_bar_shows_loss_lr_and_the_monitored_metric(task):
    out = io.StringIO()
    bar = ProgressBar(max_epochs=3, monitor="val/accuracy", file=out)
    sink = RecordingSink()
    make_trainer(sink=FanOut(bar, sink), settings=TrainerSettings(max_epochs=3, device="cpu", log_every_n_steps=4)
                 ).fit(make_model(), *task)
    last_step = [r.metrics for r in sink.records if "train/loss" in r.metrics][-1]
    last_epoch = [r.metrics for r in sink.records if "val/loss" in r.metrics][-1]
    shown = out.getvalue().replace("\r", "\n")
    final = [line for line in shown.splitlines() if line.startswith("epochs:")][-1]
    assert "3/3" in final
    assert f"loss={last_step['train/loss']:.4g}" in final and f"lr={last_step['train/lr']:.3g}" in final
    assert f"val/accuracy={last_epoch['val/accuracy']:.4g}" in final
    assert "12/12" in shown  # the step bar knew the epoch's length (12 steps) after the first epoch


def test_progress_turns_itself_off_when_output_is_not_a_terminal(tmp_path):
    assert progress_enabled("auto", io.StringIO()) is False
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal:
        assert progress_enabled("auto", terminal) is True
    os.close(leader)
    assert progress_enabled("always", io.StringIO()) and not progress_enabled("never")

    def has_bar(*overrides):
        record = build_container(compose([f"run_dir={tmp_path}", *overrides])).trainer().sink.record
        return isinstance(record, FanOut) and any(isinstance(s, ProgressBar) for s in record.sinks)

    assert not has_bar()  # under pytest stderr is captured: not a terminal
    assert has_bar("progress=always") and not has_bar("progress=never")


def test_progress_bar_leaves_training_bit_identical(tmp_path, task):
    models = []
    for sink in (None, ProgressBar(max_epochs=3, file=io.StringIO())):
        model = make_model()
        make_trainer(**({"sink": sink} if sink else {})).fit(model, *task)
        models.append(model)
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters()))
