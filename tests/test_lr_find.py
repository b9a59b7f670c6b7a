"""`trainwire lr-find`: the LR range test on the run's own step, for every objective and under DDP."""

from __future__ import annotations

import hashlib
import math
import subprocess

import pytest
from conftest import TORCHRUN, trainwire
from conftest import clean_env as _env

from trainwire.cli.lr_find import ExponentialRamp, lr_find
from trainwire.config import compose
from trainwire.containers import run
from trainwire.errors import ConfigError


def test_the_ramp_is_exponential_from_start_to_end():
    ramp = ExponentialRamp(1e-6, 1.0, steps=7)
    assert [ramp.lr(k) for k in range(7)] == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    with pytest.raises(ConfigError, match="--steps=1"):
        ExponentialRamp(steps=1)


def _accuracy_after(tmp_path, lr: float) -> float:
    # Three warmup epochs of ten, as this reference was tuned with (the preset now warms up over 5 % of a run).
    result = run(compose([f"run_dir={tmp_path}", f"optimizer.lr={lr}", "trainer.max_epochs=10", "lr.warmup_epochs=3",
                          "progress=never"]))
    return result.history[-1]["val/accuracy"]


def test_the_suggestion_trains_the_default_job_and_is_within_10x_of_an_lr_that_does(tmp_path):
    found = lr_find(compose([f"run_dir={tmp_path / 'find'}"]))
    assert found.reason == "diverged" and len(found.lrs) >= 50
    assert found.lrs == sorted(found.lrs)
    reference = 3e-3  # trains the default job (MLP on digits, AdamW, warmup-cosine) well
    assert _accuracy_after(tmp_path / "reference", reference) > 0.95
    assert reference / 10 <= found.suggestion <= reference * 10
    assert _accuracy_after(tmp_path / "suggested", found.suggestion) > 0.95
    assert not (tmp_path / "find").exists()  # the range test writes no run record


@pytest.mark.parametrize("job", [
    ["data=diabetes", "objective=regression"],
    ["experiment=generative"],
    ["experiment=pretrain"],
    ["experiment=adversarial", "objective.steps=1"],
])
def test_every_objective_gets_a_suggestion(tmp_path, job):
    found = lr_find(compose([*job, f"run_dir={tmp_path}"]), steps=40, start_lr=1e-5, end_lr=10.0)
    assert 3 <= len(found.lrs) <= 40 and math.isfinite(found.suggestion) and found.suggestion > 0


@pytest.mark.parametrize("job, step", [(["experiment=gan"], "GANStep"), (["experiment=gbdt"], "GBDTStep")])
def test_paradigms_without_a_single_lr_are_refused(tmp_path, job, step):
    with pytest.raises(ConfigError, match=rf"lr-find ramps the lr of the supervised step; step=\w+ has {step}"):
        lr_find(compose([*job, f"run_dir={tmp_path}"]), steps=10)


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_the_command_prints_the_lr_writes_the_png_and_leaves_the_runs_checkpoints_alone(tmp_path):
    from PIL import Image

    run_dir = tmp_path / "run"
    run(compose([f"run_dir={run_dir}", "data=diabetes", "objective=regression", "trainer.max_epochs=2", "lr=constant",
                 "progress=never"]))
    before, record = _digests(run_dir / "checkpoints"), (run_dir / "metrics.jsonl").read_bytes()
    done = trainwire("lr-find", f"run_dir={run_dir}", "data=diabetes", "objective=regression", "--steps", "60",
                     "-o", str(tmp_path / "find.png"), cwd=tmp_path, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line, = done.stdout.strip().splitlines()
    assert line.startswith("suggested optimizer.lr=") and str(tmp_path / "find.png") in line
    assert Image.open(tmp_path / "find.png").size == (900, 450)
    assert _digests(run_dir / "checkpoints") == before and (run_dir / "metrics.jsonl").read_bytes() == record
    bad = trainwire("lr-find", "experiment=gan", cwd=tmp_path, env=_env(), timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "trainwire: error: lr-find ramps the lr of the supervised step; step=gan has GANStep "
        "(use step=supervised)"]


@pytest.mark.slow
def test_under_ddp_every_process_tests_and_only_rank_0_writes(tmp_path):
    done = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "trainwire", "lr-find",
                           "strategy=ddp", "data.batch_size=32", "--steps", "40", "--start-lr", "1e-5",
                           "-o", "ddp.png"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len([line for line in done.stdout.splitlines() if line.startswith("suggested optimizer.lr=")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.png"]
