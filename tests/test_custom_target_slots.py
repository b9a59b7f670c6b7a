"""A ``_target_`` replaces its slot's keys entirely (ADR 0025): no key of the default option or of a
preset reaches the user's class, through ``compose`` + ``build_container`` and through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from trainwire.config import compose
from trainwire.containers import build_container, run

MYOPT = '''import torch


def sgd(params, lr=0.01):
    return torch.optim.SGD(params, lr=lr)
'''
# A short GAN run: no classification stage, a small network, one epoch.
TINY_GAN = ["experiment=gan", "step.stage=false", "trainer.max_epochs=1", "data.train_samples=256", "model.hidden=[32]",
            "progress=never"]


@pytest.fixture
def myopt(tmp_path, monkeypatch):
    (tmp_path / "myopt.py").write_text(MYOPT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield
    sys.modules.pop("myopt", None)


def test_a_presets_optimizer_keys_do_not_reach_a_custom_optimizer(myopt, tmp_path):
    # experiment=gan sets optimizer.lr and optimizer.betas for its Adam: neither may reach myopt.sgd.
    cfg = compose([*TINY_GAN, "optimizer._target_=myopt.sgd", f"run_dir={tmp_path / 'run'}"])
    container = build_container(cfg)
    assert container.config.optimizer() == {"_target_": "myopt.sgd"}
    result = run(container)
    assert result.epochs_completed == 1 and result.steps > 0
    step = container.paradigm().trainer.step
    assert step.generator_optimizer  # built from the custom factory
    recorded = (tmp_path / "run" / "config.yaml").read_text()
    assert "betas" not in recorded  # the run record says what the target got


def test_the_users_own_keys_do_reach_it_also_one_a_preset_set(myopt, tmp_path):
    cfg = compose([*TINY_GAN, "optimizer._target_=myopt.sgd", "+optimizer.lr=0.05", f"run_dir={tmp_path / 'run'}"])
    container = build_container(cfg)
    assert container.config.optimizer() == {"_target_": "myopt.sgd", "lr": 0.05}
    optimizer = container.optimizer()([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.05
    run(container)


def test_without_a_preset_the_default_options_keys_do_not_reach_it_either(myopt, tmp_path):
    cfg = compose(["optimizer._target_=myopt.sgd", f"run_dir={tmp_path / 'run'}"])
    assert build_container(cfg).config.optimizer() == {"_target_": "myopt.sgd"}


def test_the_cli_trains_a_gan_with_a_custom_optimizer(tmp_path):
    (tmp_path / "myopt.py").write_text(MYOPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_", "PYTHONPATH"))}
    script = os.path.join(os.path.dirname(sys.executable), "trainwire")
    done = subprocess.run([script, "train", *TINY_GAN, "optimizer._target_=myopt.sgd",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and summary["steps"] > 0
