"""W&B through the real client in offline mode, read back from the run's own .wandb file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import clean_env, trainwire
from wandb_records import read_run

from trainwire.testing import read_metrics

pytestmark = pytest.mark.slow

STEP_KEYS = {"train/loss", "train/lr", "train/grad_norm", "train/grad_norm_clipped"}
EPOCH_KEYS = {"val/loss", "val/accuracy", "train/epoch_loss", "time/epoch_s"}


def run_cli(*args, cwd, env_extra=None):
    return trainwire("train", *args, cwd=cwd, env=clean_env(**(env_extra or {})))


# Any network call would go to a closed port and fail (or hang until the sink timeout).
UNREACHABLE = {"WANDB_BASE_URL": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


def test_every_metric_reaches_wandb_offline(tmp_path):
    """With the network unreachable, an offline run completes and leaves a run for `wandb sync`."""
    run_dir = tmp_path / "run"
    done = run_cli(
        "sink=wandb", "sink.wandb.mode=offline", "sink.wandb.project=proj", "sink.wandb.entity=team",
        "sink.wandb.name=digits-mlp",
        "trainer.max_epochs=4", "lr.warmup_epochs=1", "trainer.log_every_n_steps=5", "trainer.watch_every_n_steps=5",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path, env_extra={"WANDB_DIR": str(tmp_path / "wandb_home"), **UNREACHABLE},
    )
    assert done.returncode == 0, done.stderr
    assert "sink_failed" not in done.stdout + done.stderr
    (offline,) = (tmp_path / "wandb_home" / "wandb").glob("offline-run-*")  # what `wandb sync` uploads
    assert list(offline.glob("run-*.wandb")) and not (run_dir / "wandb").exists()
    logged = read_run(tmp_path / "wandb_home")  # the user's WANDB_DIR holds W&B's files (else the run directory)
    assert (logged.project, logged.entity, logged.name) == ("proj", "team", "digits-mlp")
    assert logged.config["optimizer"]["type"] == "adamw" and logged.config["trainer"]["max_epochs"] == 4
    assert logged.exit_code == 0

    local = read_metrics(run_dir)
    # W&B merges the records of one step into one row; the local record keeps them apart.
    by_step: dict[int, dict] = {}
    for record in local:
        by_step.setdefault(record["step"], {}).update(record)
    rows = {row["_step"]: row for row in logged.history}
    assert sorted(rows) == sorted(by_step)
    for step, expected in by_step.items():
        for key, value in expected.items():
            if key != "step":
                assert rows[step][key] == pytest.approx(value), (step, key)
    assert any(STEP_KEYS <= set(row) for row in rows.values())
    watched = [step for step, row in rows.items() if "grad_norm/0" in row]  # the watch's norms and histograms
    assert watched and all(rows[step]["grad/0"]["_type"] == "histogram" for step in watched)
    assert sum(rows[watched[0]]["param/2"]["values"]) == 128 * 10 + 10  # every weight of the last layer counted
    assert sum(EPOCH_KEYS <= set(row) for row in rows.values()) == 4

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sink/wandb/dropped"] == 0
    assert logged.summary["best_value"] == pytest.approx(summary["best_value"])
    assert logged.summary["avg_epoch_time_s"] == pytest.approx(summary["avg_epoch_time_s"])
    assert logged.summary["best_epoch"] == summary["best_epoch"]


def test_wandb_dir_is_honoured_and_sink_dir_wins_over_it(tmp_path, monkeypatch):
    """The user's WANDB_DIR takes W&B's files from the run directory; an explicit sink.wandb.dir wins over both."""
    from trainwire.sinks.wandb import WandbSink

    for key in [key for key in os.environ if key.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "home"))
    for name, folder in (("env", None), ("explicit", str(tmp_path / "explicit"))):
        sink = WandbSink(project="p", name=name, mode="offline", dir=folder, run_dir=tmp_path / "run")
        sink.start()
        sink.log({"val/loss": 1.0}, step=1, epoch=0)
        sink.finish()
    assert read_run(tmp_path / "home").name == "env" and read_run(tmp_path / "explicit").name == "explicit"
    assert not (tmp_path / "run").exists()


def test_wandb_finish_marks_a_failed_run(tmp_path):
    """An exception inside fit still finishes the W&B run, with a failing exit code."""
    script = f"""
import torch, functools
from trainwire import Trainer, TrainerSettings, Classification, WandbSink
class Boom:
    def on_epoch_end(self, state, metrics):
        raise RuntimeError("boom")
sink = WandbSink(project="p", mode="offline", dir={str(tmp_path)!r}, config={{"a": 1}})
trainer = Trainer(objective=Classification(), optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                  settings=TrainerSettings(max_epochs=2, device="cpu", log_every_n_steps=1), sink=sink, hooks=[Boom()])
data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
try:
    trainer.fit(torch.nn.Linear(3, 2), data)
except RuntimeError:
    print("raised")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=clean_env())
    assert "raised" in done.stdout, done.stderr
    logged = read_run(tmp_path)
    assert logged.exit_code == 1
    assert logged.history and "train/loss" in logged.history[0]


def test_without_wandb_sink_wandb_is_never_imported(tmp_path):
    script = f"""
import sys
from trainwire.config import compose
from trainwire.containers import run
result = run(compose(["run_dir={tmp_path / 'r'}", "trainer.max_epochs=2", "lr.warmup_epochs=1"]))
assert result.epochs_completed == 2
print("wandb imported:", "wandb" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wandb imported: False" in done.stdout
    assert (tmp_path / "r" / "metrics.jsonl").read_text()


def test_disabled_mode_makes_every_call_a_no_op(tmp_path):
    done = run_cli("sink=wandb", "sink.wandb.mode=disabled", "trainer.max_epochs=2", "lr.warmup_epochs=1",
                   f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "r").rglob("*.wandb"))
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["epochs_completed"] == 2


def test_an_offline_run_under_a_cut_network_attempts_no_connection(tmp_path):
    """Every process of the run (wandb-core included) traced, in a network namespace with no route out.

    Before: wandb-core's telemetry tried a DNS lookup (connect to port 53) in every offline run.
    """
    import shutil

    assert shutil.which("unshare") and shutil.which("strace"), "this test needs util-linux unshare and strace"
    trace = tmp_path / "connect.trace"
    env = clean_env()  # no WANDB_DIR: W&B's files go to the run directory
    trainwire = os.path.join(os.path.dirname(sys.executable), "trainwire")
    done = subprocess.run(
        ["unshare", "-n", "strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace), trainwire, "train",
         "sink=wandb", "sink.wandb.mode=offline", "trainer.max_epochs=2", "lr.warmup_epochs=1",
         f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "r" / "wandb").glob("offline-run-*/run-*.wandb"))
    calls = trace.read_text().splitlines()
    assert any("AF_UNIX" in line for line in calls)  # the trace saw the client talk to wandb-core
    assert [line for line in calls if "AF_INET" in line] == []  # AF_INET and AF_INET6: nothing left the host
