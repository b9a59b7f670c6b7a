"""Embedding: importing trainwire has no side effects and leaves logging alone."""

from __future__ import annotations

import subprocess
import sys


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_pulls_in_no_heavy_optional_library_and_configures_nothing():
    out = run_python(
        "import logging, sys, structlog\n"
        "before = (logging.getLogger().handlers[:], structlog.is_configured())\n"
        "import trainwire\n"
        "after = (logging.getLogger().handlers[:], structlog.is_configured())\n"
        "print(sorted(m for m in ('wandb', 'tensorboard', 'mlflow', 'matplotlib', 'hydra', 'dependency_injector') if m in sys.modules))\n"
        "print(before == after)\n"
    )
    assert out.splitlines() == ["[]", "True"]


def test_fit_configures_no_logging_handlers(tmp_path):
    out = run_python(
        "import logging, functools, torch, structlog\n"
        "from trainwire import Trainer, TrainerSettings, Classification\n"
        "t = Trainer(objective=Classification(), optimizer=functools.partial(torch.optim.SGD, lr=0.1),\n"
        "            settings=TrainerSettings(max_epochs=1, device='cpu'))\n"
        "t.fit(torch.nn.Linear(3, 2), [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))])\n"
        "print('handlers', len(logging.getLogger().handlers), structlog.is_configured())\n"
    )
    assert out.splitlines()[-1] == "handlers 0 False"


def test_the_caller_random_state_is_untouched_by_run(tmp_path):
    job = "'trainer.max_epochs=2', 'lr.warmup_epochs=1', 'data.batch_size=256'"  # 6 steps an epoch are enough
    out = run_python(
        "import torch\n"
        "from trainwire.config import compose\n"
        "from trainwire.containers import run\n"
        "torch.manual_seed(123); expected = torch.rand(3)\n"
        "torch.manual_seed(123)\n"
        f"a = run(compose(['run_dir={tmp_path / 'a'}', {job}]))\n"
        f"b = run(compose(['run_dir={tmp_path / 'b'}', {job}]))\n"
        "print(torch.equal(torch.rand(3), expected), [h['val/loss'] for h in a.history] == [h['val/loss'] for h in b.history])\n"
    )
    assert out.split()[-2:] == ["True", "True"]  # caller's RNG untouched; the seeded run repeats exactly
