"""TensorBoard and MLflow sinks against their real libraries, and several sinks at once from config."""

from __future__ import annotations

import json

import pytest
from conftest import make_model, make_trainer

from trainwire import GuardedFanOut, JsonlSink
from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.testing import read_metrics

BASE = ["trainer.max_epochs=2", "lr.warmup_epochs=1", "data.batch_size=256", "trainer.log_every_n_steps=2"]
BOTH = ["sink=[tensorboard,mlflow]", "sink.mlflow.run_name=digits", *BASE]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """One run with TensorBoard and MLflow on, read by each sink's test: (run folder, result)."""
    run_dir = tmp_path_factory.mktemp("both") / "run"
    return run_dir, run(compose([f"run_dir={run_dir}", *BOTH]))


def series(records, key):
    return [(r["step"], r[key]) for r in records if key in r]


def tensorboard_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_event_files_hold_every_metric_at_its_step(both):
    run_dir, result = both
    events = tensorboard_scalars(run_dir / "tensorboard")
    records = read_metrics(run_dir)
    keys = {key for record in records for key in record} - {"step", "epoch"}
    assert {"train/loss", "train/lr", "train/grad_norm", "train/grad_norm_clipped", "val/loss", "val/accuracy"} <= keys
    for key in keys:
        read = [(event.step, event.value) for event in events.Scalars(key)]
        expected = series(records, key)
        assert [step for step, _ in read] == [step for step, _ in expected], key
        assert [value for _, value in read] == pytest.approx([value for _, value in expected], rel=1e-6), key
    best = events.Scalars("summary/best_value")
    assert len(best) == 1 and best[0].value == pytest.approx(result.best_value) and best[0].step == result.steps
    texts = events.Tags()["tensors"]
    assert {"config/text_summary", "summary/text_summary", "status/text_summary"} <= set(texts)
    status = events.Tensors("status/text_summary")[0].tensor_proto.string_val[0].decode()
    assert status == "finished"
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "max_epochs: 2" in config_text


def _mlflow_runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("trainwire")
    return client, {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def test_mlflow_run_holds_config_metrics_summary_and_status(both):
    run_dir, result = both
    assert (run_dir / "mlflow.db").exists()  # the default store is local, inside the run directory
    client, runs = _mlflow_runs(f"sqlite:///{run_dir / 'mlflow.db'}")
    logged = runs["digits"]
    assert logged.info.status == "FINISHED"
    params = logged.data.params
    assert params["trainer.max_epochs"] == "2" and params["optimizer.type"] == "adamw"
    assert params["data.batch_size"] == "256" and params["sink.mlflow.run_name"] == "digits"
    records = read_metrics(run_dir)
    for key in ("train/loss", "train/lr", "train/grad_norm", "val/loss", "val/accuracy", "time/epoch_s"):
        history = sorted(client.get_metric_history(logged.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        assert [(m.step, pytest.approx(m.value)) for m in history] == series(records, key), key
    assert logged.data.metrics["summary/best_value"] == pytest.approx(result.best_value)
    assert logged.data.metrics["summary/epochs_completed"] == 2
    assert logged.data.tags["summary/stop_reason"] == "max_epochs"


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_mlflow_run_is_closed_with_its_real_status_after_an_exception(tmp_path, task, error, status):
    from trainwire.sinks.mlflow import MLflowSink, default_tracking_uri

    class Boom:
        def on_epoch_end(self, state, metrics):
            raise error

    uri = default_tracking_uri(tmp_path)
    sink = MLflowSink(uri, run_name="broken", config={"a": {"b": 1}}, artifact_location=str(tmp_path / "mlartifacts"))
    trainer = make_trainer(sink=GuardedFanOut(JsonlSink(tmp_path), sink, timeout_s=120), hooks=[Boom()])
    with pytest.raises(type(error)):
        trainer.fit(make_model(), *task)
    client, runs = _mlflow_runs(uri)
    logged = runs["broken"]
    assert logged.info.status == status
    assert logged.data.params == {"a.b": "1"}
    steps = [m.step for m in client.get_metric_history(logged.info.run_id, "train/loss")]
    assert steps == [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r]
    verdict = {"FAILED": "failed", "KILLED": "interrupted"}[status]  # the summary, the failed run's too (ADR 0032)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == verdict
    assert json.loads((tmp_path / "mlartifacts" / logged.info.run_id / "artifacts" / "summary.json").read_text())[
        "status"] == verdict


def test_several_sinks_at_once_each_get_every_metric(both, tmp_path):
    cfg = compose([f"run_dir={tmp_path}", *BOTH])
    assert set(cfg.sink) == {"tensorboard", "mlflow"}
    assert [sink.name for sink in build_container(cfg).trainer().sink.guarded] == ["tensorboard", "mlflow"]
    run_dir, _ = both
    records = read_metrics(run_dir)
    events = tensorboard_scalars(run_dir / "tensorboard")
    client, runs = _mlflow_runs(f"sqlite:///{run_dir / 'mlflow.db'}")
    (logged,) = runs.values()
    for key in ("train/loss", "val/loss"):
        expected = [step for step, _ in series(records, key)]
        assert [event.step for event in events.Scalars(key)] == expected
        assert sorted(m.step for m in client.get_metric_history(logged.info.run_id, key)) == expected
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sink/tensorboard/dropped"] == 0 and summary["sink/mlflow/dropped"] == 0


def test_mlflow_params_flatten_nested_config():
    from trainwire.sinks.mlflow import flatten

    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == {"a.b": "1", "a.c": "[1, 2]", "d": "null",
                                                                        "e": "{}"}


def test_importing_a_sink_module_does_not_import_its_library():
    import subprocess
    import sys

    code = ("import sys\nfrom trainwire import sinks\nsinks.TensorBoardSink, sinks.MLflowSink\n"
            "print(sorted(m for m in ('tensorboard', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["[]"], done.stderr


@pytest.mark.slow
def test_a_terminated_cli_run_is_closed_as_killed(tmp_path):
    """SIGTERM mid-run: the CLI turns it into KeyboardInterrupt, so MLflow records KILLED."""
    import signal
    import time

    from conftest import start_trainwire

    run_dir = tmp_path / "run"
    process = start_trainwire(run_dir, "sink=mlflow", "trainer.max_epochs=500", "lr.warmup_epochs=1")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until MLflow's run exists and epochs are being logged
            if (run_dir / "mlflow.db").exists() and (run_dir / "metrics.jsonl").exists() and \
                    sum(1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "val/loss" in line) >= 3:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=300)
    finally:
        process.kill()
    client, runs = _mlflow_runs(f"sqlite:///{run_dir / 'mlflow.db'}")
    (logged,) = runs.values()
    assert logged.info.status == "KILLED"
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "val/loss" in line]
    assert 3 <= len(epochs) < 500
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "val/loss")] == [r["step"] for r in epochs]
