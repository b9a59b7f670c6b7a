"""Gradient health: the monitor fires on vanishing and exploding gradients (once each, counted) and is silent on the
default job; the watch logs per-module gradient and parameter norms and histograms."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model, make_trainer, nonfinite_policy

from trainwire import Classification, ConfigError, NormClipper, TrainerSettings
from trainwire.checkpointing.format import read_checkpoint
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.policies.cadence import Cadence
from trainwire.policies.gradients import NoClip
from trainwire.testing import RecordingSink, capture_logs


class Scaled(Classification):
    """The classification loss times ``scale(k)`` for the k-th training batch (k from 1)."""

    def __init__(self, scale):
        super().__init__()
        self.scale, self.calls = scale, 0

    def training_loss(self, model, batch):
        self.calls += 1
        return super().training_loss(model, batch) * self.scale(self.calls)


def fit_logged(objective, train, nonfinite="skip", **settings):
    sink = RecordingSink()
    settings = TrainerSettings(**{"max_epochs": 3, "device": "cpu", **settings})
    with capture_logs() as logs:
        result = make_trainer(objective=objective, sink=sink, settings=settings, nonfinite=nonfinite_policy(nonfinite),
                              gradient_policy=NormClipper(1.0)).fit(make_model(), train)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    return result, sink, warnings


@pytest.mark.parametrize("nonfinite", ["skip", "off"])
def test_vanishing_gradients_are_flagged_once_and_every_such_step_counted(task, nonfinite):
    train, _ = task  # 12 batches an epoch: 36 steps, each with a gradient norm around 1e-12
    result, sink, warnings = fit_logged(Scaled(lambda k: 1e-12), train, nonfinite=nonfinite, log_every_n_steps=4)
    assert [w["event"] for w in warnings] == ["gradient_vanishing"]
    assert warnings[0]["step"] == 20 and warnings[0]["steps_in_a_row"] == 20 and warnings[0]["grad_norm"] < 1e-7
    assert result.summary()["gradients/vanishing_steps"] == 36 - 19
    assert sink.summary_values["gradients/vanishing_steps"] == 17
    assert sink.summary_values["gradients/exploding_steps"] == 0


@pytest.mark.parametrize("nonfinite", ["skip", "off"])
def test_exploding_gradients_are_flagged_once_against_the_running_median(task, nonfinite):
    train, _ = task
    result, _, warnings = fit_logged(Scaled(lambda k: 1.0 if k <= 30 else 1e4), train, nonfinite=nonfinite)
    assert [w["event"] for w in warnings] == ["gradient_exploding"]
    assert warnings[0]["step"] == 31 and warnings[0]["grad_norm"] > 10 * warnings[0]["running_median"]
    assert result.summary()["gradients/exploding_steps"] == 36 - 30  # every later step, against a median of 30 calm ones
    assert result.summary()["gradients/vanishing_steps"] == 0


def test_the_monitor_can_be_switched_off(task):
    train, _ = task
    result, _, warnings = fit_logged(Scaled(lambda k: 1e-12), train, grad_monitor=False)
    assert warnings == [] and "gradients/vanishing_steps" not in result.summary()


def test_the_monitor_judges_on_after_a_resume(task, tmp_path):
    """Its window and counts are a checkpoint part: stopped at epoch 1 and resumed, it counts what one run counts."""
    train, _ = task
    whole, _, _ = fit_logged(Scaled(lambda k: 1e-12), train)
    store = LocalCheckpointStore(tmp_path)
    settings = TrainerSettings(max_epochs=3, device="cpu")
    make_trainer(objective=Scaled(lambda k: 1e-12), settings=settings, checkpoints=store,
                 checkpoint_policy=Cadence(every_n_epochs=1)).fit(make_model(), train)
    saved = read_checkpoint(tmp_path / "epoch-0001.pt")["gradient_health"]["monitor"]
    assert saved["small_in_a_row"] == 24 and saved["vanishing"] == 5
    resumed = make_trainer(objective=Scaled(lambda k: 1e-12), checkpoints=LocalCheckpointStore(tmp_path / "b"),
                           settings=TrainerSettings(max_epochs=3, device="cpu", resume=str(tmp_path / "epoch-0001.pt")))
    result = resumed.fit(make_model(), train)
    assert result.summary()["gradients/vanishing_steps"] == whole.summary()["gradients/vanishing_steps"] == 17


@pytest.mark.slow
def test_the_default_job_is_silent(tmp_path):
    with capture_logs() as logs:
        run(compose([f"run_dir={tmp_path}"]))
    assert [entry for entry in logs if entry["event"].startswith("gradient_")] == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["gradients/vanishing_steps"] == 0 and summary["gradients/exploding_steps"] == 0
    assert summary["steps"] > 300  # long enough for the monitor to have judged plenty


def test_the_watch_logs_norms_per_module_and_histograms(task):
    train, _ = task  # 12 steps an epoch; the watch every 4th
    sink = RecordingSink()
    model = make_model()
    settings = TrainerSettings(max_epochs=1, device="cpu", log_every_n_steps=4, watch_every_n_steps=4)
    make_trainer(sink=sink, settings=settings, gradient_policy=NoClip()).fit(model, train)
    watched = [record for record in sink.records if any(key.startswith("grad_norm/") for key in record.metrics)]
    assert [record.step for record in watched] == [4, 8, 12]
    assert set(watched[0].metrics) == {"grad_norm/0", "grad_norm/2", "param_norm/0", "param_norm/2"}
    for record in watched:  # the per-module norms make up the total the step logs at the same step
        total = next(r.metrics["train/grad_norm"] for r in sink.records if r.step == record.step and "train/loss" in r.metrics)
        assert (record.metrics["grad_norm/0"] ** 2 + record.metrics["grad_norm/2"] ** 2) ** 0.5 == pytest.approx(total, rel=1e-5)
    last = watched[-1].metrics  # after the last step's update: the final weights
    assert last["param_norm/0"] == pytest.approx(torch.cat([model[0].weight.flatten(), model[0].bias]).norm().item(), rel=1e-6)
    assert [h.step for h in sink.histograms] == [4, 8, 12]
    sizes = {key: value.numel() for key, value in sink.histograms[-1].metrics.items()}
    assert sizes == {"grad/0": 8 * 16 + 16, "grad/2": 16 * 3 + 3, "param/0": 8 * 16 + 16, "param/2": 16 * 3 + 3}
    assert torch.equal(sink.histograms[-1].metrics["param/2"], torch.cat([model[2].weight.flatten(), model[2].bias]))


def test_the_watch_is_off_by_default(task):
    train, _ = task
    sink = RecordingSink()
    make_trainer(sink=sink).fit(make_model(), train)
    assert not any(key.startswith(("grad_norm/", "param_norm/")) for r in sink.records for key in r.metrics)
    assert sink.histograms == []


def test_histograms_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(compose([f"run_dir={tmp_path}", "sink=tensorboard", "trainer.max_epochs=1", "lr=constant",
                 "data.batch_size=256", "trainer.watch_every_n_steps=2"]))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    assert {"grad/0", "grad/2", "param/0", "param/2"} <= set(events.Tags()["histograms"])
    assert [event.step for event in events.Histograms("grad/0")] == [2, 4, 6]  # 1,437 samples: 6 steps of 256
    assert [event.step for event in events.Scalars("grad_norm/0")] == [2, 4, 6]
    assert events.Histograms("param/0")[0].histogram_value.num == 64 * 128 + 128  # digits' 64 inputs, 128 hidden


def test_bad_values_name_their_key():
    with pytest.raises(ConfigError, match="trainer.watch_every_n_steps=0"):
        TrainerSettings(watch_every_n_steps=0)
    with pytest.raises(ConfigError, match="trainer.grad_exploding_factor=1"):
        TrainerSettings(grad_exploding_factor=1)
    with pytest.raises(ConfigError, match="trainer.watch_every_n_steps is not supported"):
        build_container(compose(["experiment=gan", "trainer.watch_every_n_steps=5"]))
