"""A run folder holds one run: no fresh run over another's, one process at a time, a resume of the same run only."""

from __future__ import annotations

import time

import pytest
from conftest import start_trainwire

from trainwire.checkpointing.runfolder import config_changes
from trainwire.config import compose
from trainwire.containers import run
from trainwire.errors import ConfigError

QUICK = ["trainer.max_epochs=1", "lr=constant", "model.hidden=[16]", "progress=never"]


def snapshot_of(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_a_fresh_run_into_a_folder_that_holds_a_run_is_refused_and_nothing_is_touched(tmp_path):
    run(compose([f"run_dir={tmp_path}", *QUICK]))
    before = snapshot_of(tmp_path)
    with pytest.raises(ConfigError) as refused:
        run(compose([f"run_dir={tmp_path}", *QUICK, "optimizer.lr=0.01"]))
    assert str(refused.value) == (f"the run folder {tmp_path} already holds a run (metrics.jsonl, summary.json, "
                                  "config.yaml, checkpoints/); continue it with trainer.resume=auto, or train in "
                                  "another run folder (hydra.run.dir=... or run_dir=...)")
    assert snapshot_of(tmp_path) == before


def test_resume_auto_under_another_lr_is_refused_naming_every_differing_key(tmp_path):
    run(compose([f"run_dir={tmp_path}", *QUICK, "trainer.max_epochs=2", "checkpoint.every_n_steps=5"]))
    before = snapshot_of(tmp_path)
    with pytest.raises(ConfigError) as refused:
        run(compose([f"run_dir={tmp_path}", *QUICK, "trainer.max_epochs=2", "trainer.resume=auto",
                     "optimizer.lr=0.01", "seed=7"]))
    message = str(refused.value)
    assert "\n" not in message and "trained with another config" in message
    assert "(optimizer.lr: 0.001 -> 0.01; seed: 0 -> 7)" in message  # every key that differs, and only those
    assert message.endswith(f"or start a new run from its weights with trainer.init_from={tmp_path} in another run folder")
    assert snapshot_of(tmp_path) == before


def test_resume_auto_allows_keys_that_cannot_change_the_trajectory(tmp_path):
    run(compose([f"run_dir={tmp_path}", *QUICK, "trainer.max_epochs=2", "checkpoint.every_n_steps=5"]))
    result = run(compose([f"run_dir={tmp_path}", *QUICK, "trainer.max_epochs=2", "trainer.resume=auto",
                          "checkpoint.every_n_steps=7", "trainer.log_every_n_steps=3", "log.level=warning",
                          "trainer.async_checkpoint=false", "store.keep_last=5"]))
    assert result.epochs_completed == 2


def test_the_global_batch_is_what_must_match_across_numbers_of_processes():
    saved = "data:\n  batch_size: 32\noptimizer:\n  lr: 0.001\nlog:\n  level: info\n"
    assert config_changes(saved, saved.replace("32", "64"), saved_processes=2, processes=1) == []
    assert config_changes(saved, saved.replace("info", "debug")) == []
    assert config_changes(saved, saved.replace("32", "64"), saved_processes=1, processes=1) == [
        "data.batch_size: 32 -> 64"]
    assert config_changes(saved, saved, saved_processes=2, processes=1) == [
        "data.batch_size × processes: 64 -> 32"]


def _cli(run_dir, *overrides):
    return start_trainwire(run_dir, *QUICK, *overrides)


@pytest.mark.slow
def test_the_cli_refuses_a_used_folder_a_live_folder_and_another_lr_each_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    first = _cli(run_dir, "trainer.max_epochs=2")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    before = snapshot_of(run_dir)  # Hydra's .hydra/ record included: a refused run rewrites none of it
    again = _cli(run_dir, "optimizer.lr=0.01")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 2 and err.strip().splitlines() == [
        f"trainwire: error: the run folder {run_dir} already holds a run (metrics.jsonl, summary.json, config.yaml, "
        "checkpoints/); continue it with trainer.resume=auto, or train in another run folder (hydra.run.dir=... or "
        "run_dir=...)"]
    other = _cli(run_dir, "trainer.max_epochs=2", "trainer.resume=auto", "optimizer.lr=0.01")
    _, err = other.communicate(timeout=300)
    assert other.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "optimizer.lr: 0.001 -> 0.01" in err
    assert snapshot_of(run_dir) == before

    live_dir = tmp_path / "live"
    live = _cli(live_dir, "trainer.max_epochs=10000")  # still training when the second starts, however slow that is
    deadline = time.monotonic() + 300
    while not (live_dir / "metrics.jsonl").exists():
        assert live.poll() is None and time.monotonic() < deadline, live.stderr.read() if live.poll() else "slow"
        time.sleep(0.05)
    hydra = snapshot_of(live_dir / ".hydra")
    second = _cli(live_dir, "trainer.max_epochs=10000", "trainer.resume=auto")
    _, err = second.communicate(timeout=300)
    live.kill()
    live.wait()
    assert second.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert f"{live_dir / 'checkpoints'} is in use by process {live.pid}" in err
    assert snapshot_of(live_dir / ".hydra") == hydra
