"""The command line, end to end, in real subprocesses."""

from __future__ import annotations

import json
import os
import pickle
import subprocess

import pytest
import yaml
from conftest import talk, trainwire

from trainwire.testing import read_metrics

pytestmark = pytest.mark.slow


def test_default_job_reaches_095_and_writes_the_run_record(tmp_path):
    run_dir = tmp_path / "run"
    done = trainwire("train", f"hydra.run.dir={run_dir}", "log.format=json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["monitor"] == "val/loss"
    assert summary["val/accuracy"] >= 0.95
    assert summary["epochs_completed"] >= 1 and summary["stop_reason"] in ("max_epochs", "patience")
    for key in ("best_epoch", "best_value", "avg_epoch_time_s", "val/loss"):
        assert summary[key] is not None, key
    records = read_metrics(run_dir)
    assert all(isinstance(r["step"], int) and isinstance(r["epoch"], int) for r in records)
    step_records = [r for r in records if "train/loss" in r]
    epoch_records = [r for r in records if "val/loss" in r]
    assert len(epoch_records) == summary["epochs_completed"]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/grad_norm_clipped"} <= set(step_records[0])
    assert {"val/loss", "val/accuracy", "train/epoch_loss", "time/epoch_s"} <= set(epoch_records[0])
    assert all(r["train/grad_norm_clipped"] <= 1.0 + 1e-5 for r in step_records)
    assert epoch_records[summary["best_epoch"]]["val/loss"] == summary["best_value"]
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["model"]["in_features"] == 64 and resolved["run_dir"] == str(run_dir)
    # Structured logs on stderr (stdout is for data): JSON lines with the run id, one per epoch, and the end.
    assert done.stdout == ""
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert sum(1 for line in logs if line["event"] == "epoch") == summary["epochs_completed"]
    assert [line["event"] for line in logs][-2:] == ["train_end", "run_end"]  # the folder again, at the end
    assert logs[-1]["run_dir"] == str(run_dir) and logs[-1]["run_id"] == run_dir.name


def test_python_m_trains_regression_on_the_bundled_set(tmp_path):
    run_dir = tmp_path / "reg"
    done = trainwire("train", "data=diabetes", "objective=regression", "trainer.max_epochs=40",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path, module=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val/r2"] > 0.3 and summary["val/mae"] > 0


def test_console_logs_and_early_stop_line(tmp_path):
    done = trainwire("train", "stopping.patience=0", "stopping.min_delta=10", "log.format=console",
                     f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # logs go to stderr
    assert "early_stop" in done.stderr and "reason=patience" in done.stderr
    lines = done.stderr.splitlines()  # the run folder first and last, and what trains
    assert "run_folder" in lines[0] and str(tmp_path / "r") in lines[0], lines[0]
    assert "run_end" in lines[-1] and str(tmp_path / "r") in lines[-1], lines[-1]
    assert any("model" in line and "parameters=" in line and "trainable=" in line and "device=cpu" in line
               and "precision=32" in line for line in lines)
    epoch = next(line for line in lines if "[info     ] epoch " in line).split("epoch ", 1)[1].split()
    assert epoch[0] == "epoch=0" and epoch[1].startswith("step=") and epoch[2].startswith("val/loss=")  # monitored first
    values = [field.partition("=")[2] for field in epoch if "." in field.partition("=")[2]]
    assert values and all(float(value) == float(f"{float(value):.4g}") for value in values)  # 4 significant digits
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["epochs_completed"] == 2


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("lr.warmup_epochs=60", "lr.warmup_epochs=60 must be shorter than the run (trainer.max_epochs=60"),
        ("stopping.patience=-1", "stopping.patience=-1 must be >= 0"),
        ("gradient.max_norm=0", "gradient.max_norm=0.0 must be > 0"),
        ("optimizer.lr=0", "optimizer.lr=0.0 must be > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1 must be > 0"),
        ("lr=cosine", "lr='cosine' is not an option; choose one of: constant, cosine_restarts, custom, plateau, warmup_cosine"),
        ("sink=neptune", "sink='neptune' is not an option; choose one of: mlflow, null, tensorboard, wandb"),
        ("sink=[wandb,neptune]", "sink='neptune' is not an option; choose some of: mlflow, tensorboard, wandb"),
        ("sink_timeout_s=0", "sink_timeout_s=0.0 must be > 0"),
        ("progress=sometimes", "progress='sometimes' is not one of auto, always, never"),
        ("stopping.mode=up", "stopping.mode='up' is not one of min, max"),
        ("trainer.precision=8", "trainer.precision='8' is not one of 32, bf16, 16"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be an integer >= 1"),
        ("+trainer.epochs=3", "trainer.epochs is not a key of trainer (did you mean trainer.max_epochs?); its keys are: "
                              "max_epochs"),
        # Misspelt keys and wrong types fail at composition, before Hydra's run, with the nearest key.
        ("lr.warmup_epoch=3", "lr.warmup_epoch is not a key of lr (did you mean lr.warmup_epochs?); its keys are: "
                              "warmup_epochs, warmup_steps, start_factor, min_lr, interval"),
        ("trainer.max_epochs=ten", "trainer.max_epochs='ten': Value 'ten' of type 'str' could not be converted to Integer"),
        ("optimizer.momentum=0.5", "optimizer.momentum is not a key of optimizer; its keys are: lr, weight_decay, betas"),
    ],
)
def test_bad_values_fail_with_one_line_and_no_traceback(tmp_path, override, expected):
    done = trainwire("train", override, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert done.returncode == 2
    lines = talk(done.stderr)  # a refusal found once the run started comes after its first log records
    assert len(lines) == 1 and lines[0].startswith(f"trainwire: error: {expected}"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "r" / "metrics.jsonl").exists() or not (tmp_path / "r" / "metrics.jsonl").read_text()


def test_usage_errors(tmp_path):
    assert trainwire("fly", cwd=tmp_path).returncode == 2
    assert "usage: trainwire train" in trainwire("--help", cwd=tmp_path).stdout


def _checkpoint_step(run_dir):
    from trainwire.checkpointing.format import read_checkpoint

    return read_checkpoint(run_dir / "checkpoints" / "last.pt")["loop"]["step"]


@pytest.mark.parametrize(("file", "damage", "reason"), [
    ("metrics.jsonl", "full", "No space left on device"),  # a full disk, for this file
    ("summary.json", "folder", "Is a directory"),
    ("config.yaml", "folder", "Is a directory"),
])
def test_a_run_record_write_failure_is_one_line_naming_the_file_and_exit_1(tmp_path, file, damage, reason):
    """Before: chained OSError tracebacks (and, for metrics.jsonl, no checkpoint at all)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if damage == "full":
        (run_dir / file).symlink_to("/dev/full")  # every write: ENOSPC
    else:
        (run_dir / file).mkdir()
    # resume=auto: the planted file is a record of this run's folder (a fresh run would be refused over it, ADR 0023).
    done = trainwire("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=2", "lr.warmup_epochs=1",
                     "data.batch_size=256", "trainer.resume=auto", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"trainwire: error: cannot write the run record {run_dir / file}: {reason}"
    if file != "config.yaml":  # that one fails before training starts
        assert _checkpoint_step(run_dir) > 0  # training went on to its checkpoints


def test_a_read_only_run_folder_is_one_line_before_hydra_starts(tmp_path):
    """Before: Hydra's 29-line 'Unable to configure handler' traceback."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    locked = ["chattr", "+i", str(run_dir)] if os.geteuid() == 0 else None  # root writes through permissions
    if locked:
        subprocess.run(locked, check=True)
    else:
        run_dir.chmod(0o555)
    try:
        done = trainwire("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=1", "lr.warmup_epochs=0", cwd=tmp_path)
    finally:
        if locked:
            subprocess.run(["chattr", "-i", str(run_dir)], check=True)
        run_dir.chmod(0o755)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"trainwire: error: the run folder {run_dir} is not writable ({run_dir}: read-only, immutable or not permitted)"]
    assert os.listdir(run_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize(("args", "line"), [
    (["hydra.run.dir=/proc/x"], "the run folder /proc/x cannot be made in /proc: No such file or directory"),
    (["model.hidden=é"], "model.hidden=é: the override grammar reads only ASCII outside quotes; quote the value: "
                         "model.hidden='é' (in a shell: \"model.hidden='é'\")"),
    (["optimizer.lr=1e-3,2e-3"], "optimizer.lr=1e-3,2e-3 is a sweep: add -m to run one job for each value; "
                                 "for a list write optimizer.lr=[1e-3,2e-3], for text optimizer.lr='1e-3,2e-3'"),
    (["-m", "--cfg", "hydra"], "Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified"),
    (["hpo=optuna"], "hpo=optuna is a search: add -m to run its trials (trainwire train -m hpo=optuna ...)"),
], ids=["proc", "unicode", "comma-list", "two-modes", "search-without-m"])
def test_a_run_folder_that_cannot_be_made_and_hydra_syntax_errors_are_one_line_and_exit_2(tmp_path, args, line):
    """Before: a 'cannot lock' line with exit 1 (/proc/x), and Hydra's messages of several lines."""
    done = trainwire("train", *args, "trainer.max_epochs=1", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"trainwire: error: {line}"]
    assert os.listdir(tmp_path) == []


def test_a_full_disk_under_the_run_folder_is_one_line_before_anything_starts(tmp_path, monkeypatch):
    """ENOSPC shows only when a byte is written (a folder's entry may still fit): the probe writes one and syncs."""
    import errno

    from trainwire.cli.train import _unwritable

    def full(handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # the one way to fill a disk in a test without mounting one
    run_dir = tmp_path / "outputs" / "run"
    assert _unwritable(run_dir) == (f"the run folder {run_dir} cannot be written: {tmp_path} is full "
                                    "(No space left on device)", 1)
    assert os.listdir(tmp_path) == []  # the probe file is gone


def test_resume_auto_on_a_folder_whose_checkpoints_all_fail_refuses_and_changes_nothing(tmp_path):
    """Before: exit 0, a fresh start from epoch 0 over the folder."""
    import torch

    from trainwire.checkpointing.store import LocalCheckpointStore

    run_dir = tmp_path / "run"
    store = LocalCheckpointStore(run_dir / "checkpoints")  # what a run left, before its manifest was lost
    store.save({"model": {"w": torch.ones(3)}}, ["last", "best"], meta={"epoch": 0, "batch": 0, "step": 1})
    del store  # and its lock with it
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "epoch": 0}\n')
    job = ["trainer.max_epochs=2", "lr.warmup_epochs=1", "data.batch_size=256"]
    folder = run_dir / "checkpoints"
    (folder / "manifest.json").unlink()
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.name != ".lock"}
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    done = trainwire("train", f"hydra.run.dir={run_dir}", *job, "trainer.resume=auto", cwd=tmp_path)
    assert done.returncode == 1
    last = talk(done.stderr)
    assert len(last) == 1 and last[0].startswith(f"trainwire: error: {folder} holds best.pt, last.pt but no manifest.json")
    assert "move the folder away or train in a new run folder" in last[0]
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.name != ".lock"} == before
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics


def test_an_encoder_that_is_a_hostile_pickle_is_one_line(tmp_path):
    """Before: a 27-line UnpicklingError traceback (the payload never ran either way)."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    encoder = tmp_path / "encoder.pt"
    encoder.write_bytes(pickle.dumps({"format": "x", "evil": Payload()}))
    done = trainwire("train", "experiment=finetune", f"encoder={encoder}", f"hydra.run.dir={tmp_path / 'r'}",
                     cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert talk(done.stderr) == [  # before: torch's two-line warning about the pickle protocol above
        f"trainwire: error: encoder={str(encoder)!r} was refused: it is not a torch.save archive (a raw pickle, or "
        "another format), so it is not unpickled"]
    assert not (tmp_path / "pwned").exists()


def test_resume_from_a_path_that_is_not_there_a_run_folder_and_a_raw_pickle(tmp_path):
    """Issue 21: a missing trainer.resume path was refused only after the run folder and its lock were made
    (exit 1); a run folder was 'does not exist'; a raw pickle came with torch's two-line warning above the line."""
    quick = ["trainer.max_epochs=1", "lr=constant", "model.hidden=[16]", "progress=never", "log.level=warning"]
    done = trainwire("train", *quick, f"hydra.run.dir={tmp_path / 'first'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    missing = trainwire("train", *quick, f"hydra.run.dir={tmp_path / 'r'}", f"trainer.resume={tmp_path / 'nowhere'}",
                        cwd=tmp_path)
    assert (missing.returncode, missing.stderr.strip().splitlines()) == (2, [
        f"trainwire: error: trainer.resume='{tmp_path / 'nowhere'}': no such checkpoint file or run folder "
        "(trainer.resume=auto continues the run in hydra.run.dir)"])
    assert not (tmp_path / "r").exists()
    # A run folder stands for its newest checkpoint: trained on from it into a new folder, one epoch more.
    longer = trainwire("train", *quick, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'r'}",
                       f"trainer.resume={tmp_path / 'first'}", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["epochs_completed"] == 2
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"weight": [1.0]}, protocol=4))
    raw = trainwire("train", *quick, f"hydra.run.dir={tmp_path / 'r2'}", f"trainer.init_from={tmp_path / 'raw.pt'}",
                    cwd=tmp_path)
    assert raw.stderr.strip().splitlines() == [
        f"trainwire: error: trainer.init_from='{tmp_path / 'raw.pt'}' was refused: it is not a torch.save archive "
        "(a raw pickle, or another format), so it is not unpickled"]
