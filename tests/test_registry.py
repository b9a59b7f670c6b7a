"""Options added by name: a package's entry point is an option like a built-in one, validated by its signature."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import clean_env, trainwire
from omegaconf import OmegaConf

from trainwire import ConfigError, registry
from trainwire.config import compose, register_schemas
from trainwire.containers import build_container
from trainwire.testing import read_metrics

STEP_DECAY = '''
from trainwire.errors import ConfigError
from trainwire.policies.lr import LRPolicy


class StepDecay(LRPolicy):
    """Multiplies the lr by ``gamma`` every ``every`` epochs."""

    interval = "epoch"

    def __init__(self, every: int = 1, gamma: float = 0.5) -> None:
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma={gamma} must be in (0, 1]")
        self.every, self.gamma, self.epochs, self.optimizer = every, gamma, 0, None

    def attach(self, optimizer, *, steps_per_epoch, max_epochs):
        self.optimizer = optimizer

    def after_epoch(self, metrics):
        self.epochs += 1
        if self.epochs % self.every == 0:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.gamma

    def state_dict(self):
        return {"epochs": self.epochs}

    def load_state_dict(self, state):
        self.epochs = state["epochs"]


class NotAPolicy:
    def __init__(self, every: int = 1) -> None:
        self.every = every
'''


def install(folder: Path, package: str, entry_points: str, code: str = STEP_DECAY) -> Path:
    """Writes ``package`` and a ``*.dist-info`` with ``entry_points`` into ``folder``, as pip would install it."""
    (folder / f"{package}.py").write_text(code)
    info = folder / f"{package}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return folder


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A package on sys.path registering lr options: ``step_decay``, one that fails to import, one of the wrong port."""
    package = f"mypkg_{tmp_path.name.replace('-', '_')}"  # a fresh module name per test: nothing cached between them
    folder = tmp_path / "site"
    folder.mkdir()
    install(folder, package, f"""\
        [trainwire.lr]
        step_decay = {package}:StepDecay
        broken = {package}_missing:Nope
        wrong_port = {package}:NotAPolicy
        """)
    monkeypatch.syspath_prepend(str(folder))
    yield package
    sys.modules.pop(package, None)


def test_an_entry_point_is_an_option_of_its_group(plugin, tmp_path):
    assert {"step_decay", "broken", "wrong_port", "warmup_cosine"} <= set(registry.options("lr"))
    cfg = compose(["lr=step_decay", "lr.every=2", f"run_dir={tmp_path}"])
    assert OmegaConf.to_container(cfg.lr) == {"type": "step_decay", "every": 2, "gamma": 0.5}  # from the signature
    policy = build_container(cfg).lr_policy()
    assert type(policy).__name__ == "StepDecay" and (policy.every, policy.gamma) == (2, 0.5)


def test_a_misspelt_key_names_itself_and_the_nearest_key(plugin):
    with pytest.raises(ConfigError) as raised:
        compose(["lr=step_decay", "lr.evry=2"])
    assert str(raised.value) == "lr.evry is not a key of lr (did you mean lr.every?); its keys are: every, gamma"


def test_a_wrong_type_is_one_line_naming_the_key(plugin):
    with pytest.raises(ConfigError, match=r"^lr.every='two': Value 'two' of type 'str' could not be converted to Integer$"):
        compose(["lr=step_decay", "lr.every=two"])


def test_a_value_the_class_rejects_is_one_config_error(plugin, tmp_path):
    with pytest.raises(ConfigError, match=r"^lr=step_decay: gamma=-1.0 must be in \(0, 1\]$"):
        build_container(compose(["lr=step_decay", "lr.gamma=-1", f"run_dir={tmp_path}"]))


def test_an_entry_point_that_fails_to_load_is_one_line_naming_it(plugin, tmp_path):
    with pytest.raises(ConfigError) as raised:
        compose(["lr=broken"])
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"lr=broken: entry point broken = {plugin}_missing:Nope")
    assert f"package {plugin}" in message and "ModuleNotFoundError" in message
    compose(["lr=constant"])  # a broken plug-in costs only the runs that choose it


def test_an_option_of_the_wrong_port_is_refused(plugin, tmp_path):
    with pytest.raises(ConfigError, match=r"^lr=wrong_port built a NotAPolicy, which is not a trainwire.policies.lr.LRPolicy$"):
        build_container(compose(["lr=wrong_port", f"run_dir={tmp_path}"]))


def test_a_name_registered_twice_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    install(folder, "clash_pkg", "[trainwire.stopping]\npatience = clash_pkg:Mine\n", code="class Mine: pass\n")
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(ConfigError, match="stopping=patience is registered twice: by trainwire 'trainwire.policies.stopping"):
        registry.options("stopping")


def test_reading_the_registry_imports_no_plugin(plugin):
    registry.options("lr")
    register_schemas(["lr=constant"])  # the CLI's step before Hydra composes: chooses no plug-in
    assert plugin not in sys.modules


def test_the_container_and_the_registry_agree_on_each_slots_context():
    """What the container hands an option (by name) is what the schema leaves out of the config keys."""
    from trainwire.containers import TrainerContainer

    slots = {"lr": "lr_policy", "stopping": "stopping_policy", "gradient": "gradient_policy", "optimizer": "optimizer",
             "model": "model", "data": "data", "paradigm": "paradigm"}
    for group, slot in slots.items():
        assert set(getattr(TrainerContainer, slot).kwargs) == set(registry.GROUPS[group].context), group
    objective = TrainerContainer.objective.args[0]
    assert set(objective.kwargs) == set(registry.GROUPS["objective"].context)


# The real CLI, with the package found the way an installed one is -------------------------------------------------
def cli(*args: str, cwd: Path, site: Path) -> subprocess.CompletedProcess:
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return trainwire("train", *args, cwd=cwd, env=env, module=True)


@pytest.fixture
def site(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    return install(folder, "mypkg", """\
        [trainwire.lr]
        step_decay = mypkg:StepDecay
        """)


@pytest.mark.slow
def test_an_installed_package_adds_lr_step_decay_to_the_cli(site, tmp_path):
    run_dir = tmp_path / "run"
    done = cli("lr=step_decay", "lr.every=2", "trainer.max_epochs=4", "progress=never", "data.batch_size=256",
               "trainer.log_every_n_steps=1", f"hydra.run.dir={run_dir}", cwd=tmp_path, site=site)
    assert done.returncode == 0, done.stderr
    records = read_metrics(run_dir)
    lrs = {}
    for record in records:
        if "train/lr" in record:
            lrs.setdefault(record["epoch"], set()).add(record["train/lr"])
    assert sorted(lrs) == [0, 1, 2, 3]
    for epoch, seen in lrs.items():  # halved every second epoch: 1e-3, 1e-3, 5e-4, 5e-4
        assert sorted(seen) == pytest.approx([1e-3 * 0.5 ** (epoch // 2)]), (epoch, seen)
    resolved = OmegaConf.load(run_dir / "config.yaml")
    assert OmegaConf.to_container(resolved.lr) == {"type": "step_decay", "every": 2, "gamma": 0.5}


@pytest.mark.slow
@pytest.mark.parametrize(("override", "expected"), [
    ("lr.evry=2", "trainwire: error: lr.evry is not a key of lr (did you mean lr.every?); its keys are: every, gamma"),
    ("lr.gamma=-1", "trainwire: error: lr=step_decay: gamma=-1.0 must be in (0, 1]"),
])
def test_the_cli_refuses_a_bad_key_or_value_of_a_plugin_in_one_line(site, tmp_path, override, expected):
    done = cli("lr=step_decay", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, site=site)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [expected]
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_cfg_job_prints_the_whole_config_with_the_plugins_defaults(site, tmp_path):
    done = cli("lr=step_decay", "--cfg", "job", cwd=tmp_path, site=site)
    assert done.returncode == 0, done.stderr
    printed = OmegaConf.create(done.stdout)
    assert OmegaConf.to_container(printed.lr) == {"type": "step_decay", "every": 1, "gamma": 0.5}
    assert printed.trainer.max_epochs == 60 and printed.optimizer.betas == [0.9, 0.999]
    assert printed.data.in_features == 64 and OmegaConf.to_container(printed.model)["in_features"] == "${data.in_features}"
