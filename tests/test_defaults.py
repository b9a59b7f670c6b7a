"""Each default lives once: a composed option holds its constructor's defaults, except the documented deltas."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from importlib import resources

import pytest
import yaml
from omegaconf import OmegaConf

from trainwire import registry
from trainwire.config import LogConfig, TrainConfig, compose, options
from trainwire.loop.trainer import TrainerSettings
from trainwire.policies.losses import available_losses

# What the packaged YAML sets on purpose (ADR 0017): presets, not defaults. Anything else a YAML
# file under configs/<group>/ writes must be an interpolation (wiring between groups).
DELTAS = {
    ("lr", "warmup_cosine", "warmup_ratio"): 0.05,  # WarmupCosine() warms up not at all; the preset over 5% of the run
    ("objective", "regression", "loss"): {"name": "mse", "reduction": "mean"},  # the nested group's choice of "mse"
}


def builtin_options():
    return [(group, name) for group, spec in registry.GROUPS.items() for name in spec.builtins]


def composed(group: str, name: str):
    cfg = compose([f"{group}=[{name}]" if registry.GROUPS[group].multi else f"{group}={name}"])
    node = cfg[group][name] if registry.GROUPS[group].multi else cfg[group]
    return OmegaConf.to_container(node, resolve=False)


def plain(value):
    """A signature's default as config holds it: tuples as lists, mappings (even read-only ones) as dicts."""
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    return value


@pytest.mark.parametrize(("group", "name"), builtin_options())
def test_every_key_of_a_composed_option_is_its_constructors_default(group, name):
    target = registry.option(group, name).load()
    node = composed(group, name)
    keys = {parameter.name: parameter.default for parameter in registry.parameters(target, group)}
    assert set(node) == {"type", *keys}, "the config has exactly the signature's keys"
    for key, default in keys.items():
        value = node[key]
        if isinstance(value, str) and value.startswith("${"):
            continue  # wiring, e.g. model.in_features: ${data.in_features}
        if (group, name, key) in DELTAS:
            assert value == DELTAS[group, name, key]
            continue
        assert default is not inspect.Parameter.empty, f"{group}.{key} has no default and no interpolation"
        assert value == plain(default), f"{group}={name}: {key} is {value!r} in config, {default!r} in {target.__qualname__}"


@pytest.mark.parametrize("name", sorted(available_losses()))
def test_every_loss_composes_with_its_functions_defaults(name):
    cfg = compose(["data=diabetes", "objective=regression", f"objective.loss={name}"])
    assert OmegaConf.to_container(cfg.objective.loss) == {"name": name, **available_losses()[name]}


def test_the_root_trainer_and_log_nodes_are_their_schemas_defaults():
    cfg = OmegaConf.to_container(compose([]), resolve=False)
    assert cfg["trainer"] == dataclasses.asdict(TrainerSettings())
    assert cfg["log"] == dataclasses.asdict(LogConfig())
    root = dataclasses.asdict(TrainConfig(trainer=TrainerSettings(), log=LogConfig()))
    for key in ("seed", "run_dir", "sink_timeout_s", "progress", "stage", "metrics_every", "encoder", "freeze_base"):
        assert cfg[key] == root[key], key


def test_the_packaged_yaml_writes_no_default_twice():
    """A YAML option file holds interpolations and the documented deltas only: never a copy of a default."""
    folder = resources.files("trainwire.configs")
    for group in [*registry.GROUPS, "objective/loss"]:
        for name in options(group):
            path = folder.joinpath(*group.split("/"), f"{name}.yaml")
            if not path.is_file():
                continue
            written = {key: value for key, value in (yaml.safe_load(path.read_text()) or {}).items() if key != "defaults"}
            for key, value in written.items():
                documented = (group, name, key) in DELTAS
                assert documented or (isinstance(value, str) and value.startswith("${")), f"{path}: {key}: {value!r}"


def test_the_defaults_the_issue_found_in_three_places_agree_with_the_cli():
    """mask_ratio, critic_steps, plateau patience, embedding, max_epochs: the values the CLI gave before."""
    cfg = compose(["experiment=gan"])
    assert cfg.step.critic_steps == 2
    assert compose(["objective=masked_reconstruction"]).objective.mask_ratio == 0.5
    assert compose(["lr=plateau"]).lr.patience == 5
    assert compose(["model=masked_autoencoder"]).model.embedding == 64
    assert compose(["model=predictor"]).model.embedding == 64
    assert compose([]).trainer.max_epochs == 60
    from trainwire.paradigms.pretraining import MaskedAutoencoder, MaskedReconstruction
    from trainwire.policies.lr import ReduceOnPlateau

    assert (ReduceOnPlateau().patience, MaskedReconstruction().mask_ratio, TrainerSettings().max_epochs) == (5, 0.5, 60)
    assert MaskedAutoencoder(8).encoder.arch["embedding"] == 64
