"""The GAN's classification stage is a Trainer of the run (ADR 0025): the container builds it with every
``trainer.*`` setting, the run's strategy, sinks (its rows under ``stage/``) and hooks."""

from __future__ import annotations

import dataclasses
import json

import pytest
from dependency_injector import providers

from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.testing import RecordingHook

# One stage epoch of 16 batches before the GAN's one epoch; goal - tolerance = 0: the stage never re-runs.
JOB = ["experiment=gan", "trainer.max_epochs=1", "step.stage_epochs=1", "step.goal=0.05", "step.tolerance=0.05",
       "data.train_samples=256", "data.batch_size=16", "model.hidden=[32]", "progress=never"]


def _stage_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "stage/train/loss" in row]


@pytest.mark.parametrize("every", [3, 5])
def test_the_stage_logs_at_the_runs_trainer_log_every_n_steps(tmp_path, every):
    run(compose([*JOB, f"trainer.log_every_n_steps={every}", f"run_dir={tmp_path}"]))
    steps = [row["step"] for row in _stage_rows(tmp_path)]
    assert steps == list(range(every, 16 + 1, every))  # the stage's own optimizer steps, every N of them


def test_the_stage_gets_every_trainer_setting_the_strategy_the_hooks_and_the_sinks(tmp_path):
    container = build_container(compose([*JOB, "trainer.log_every_n_steps=4", "trainer.grad_monitor=false",
                                         "trainer.grad_vanishing_steps=7", "nonfinite=raise", f"run_dir={tmp_path}"]))
    hook = RecordingHook()
    container.hooks.override(providers.List(providers.Object(hook)))
    stage = container.paradigm().trainer.step.stage()
    assert stage.settings == dataclasses.replace(container.settings(), max_epochs=1, resume=None)
    assert stage.strategy is container.strategy() and stage.hooks == [hook] and stage.checkpoints is None
    assert stage.health.monitor is None and type(stage.nonfinite).__name__ == "RaiseOnNonFinite"
    run(container)
    starts = [event for event in hook.events if event[0] == "on_train_start"]
    assert len(starts) == 2  # the stage's fit, then the run's
    assert _stage_rows(tmp_path) and all(row["step"] % 4 == 0 for row in _stage_rows(tmp_path))
