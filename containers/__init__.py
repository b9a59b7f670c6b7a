"""The composition root (installed as ``trainwire.containers``): config in, ready Trainer out."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from dependency_injector.containers import Container
from omegaconf import DictConfig, OmegaConf

from trainwire.config import GROUPS, SCHEMAS, LogConfig
from trainwire.errors import ConfigError
from trainwire.trainer import FitResult, TrainerSettings

from .container import TrainerContainer

__all__ = ["TrainerContainer", "build_container", "run"]


def _schema_nodes(plain: dict[str, Any]):
    """Each node whose schema is known, to catch keys that ``+key=value`` forced past Hydra's struct check."""
    yield "trainer", plain.get("trainer", {}), TrainerSettings
    yield "log", plain.get("log", {}), LogConfig
    for group in GROUPS:
        node = plain[group]
        if "_target_" not in node:
            yield group, node, SCHEMAS[group][node["type"]]


def build_container(
    cfg: DictConfig | dict[str, Any], container_class: type[TrainerContainer] = TrainerContainer
) -> TrainerContainer:
    """Loads a composed config into a new container and checks every slot it chose.

    ``container_class`` may be a subclass of ``TrainerContainer`` that replaces some providers.
    Raises ConfigError (one line, naming the key and the value) before any work starts.
    """
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for group in GROUPS:
        node = plain.get(group)
        if not isinstance(node, dict):
            raise ConfigError(f"{group} is missing from the config")
        if "_target_" not in node and node.get("type") not in SCHEMAS[group]:
            raise ConfigError(
                f"{group}.type={node.get('type')!r} is not an option; choose one of: {', '.join(SCHEMAS[group])}"
            )
    for key, node, schema in _schema_nodes(plain):
        unknown = sorted(set(node) - {f.name for f in dataclasses.fields(schema)})
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]} is not a key of {key}; its keys are: "
                              f"{', '.join(f.name for f in dataclasses.fields(schema))}")
    container = container_class()
    container.config.from_dict(plain)
    # Build each cheap policy once now, so a bad value fails here rather than mid-run.
    for slot in (container.lr_policy, container.stopping_policy, container.gradient_policy,
                 container.optimizer, container.objective, container.settings):
        slot()
    return container


def run(cfg: DictConfig | dict[str, Any] | Container) -> FitResult:
    """Trains as the CLI does: builds the container (unless given one), the data and the model, then fits.

    The run is seeded with ``seed`` inside a forked RNG, so the caller's random state is untouched.
    With ``trainer.strategy`` ddp or fsdp (under torchrun) it joins the process group first,
    and leaves it after a barrier when the run ends normally; a group it found is left open.
    """
    container = cfg if isinstance(cfg, Container) else build_container(cfg)
    strategy = container.strategy()
    strategy.start()  # before the data: the loaders are sharded by rank
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(container.config.seed())
        trainer = container.trainer()
        loaders = container.data()
        model = container.model()
        result = trainer.fit(model, loaders.train, loaders.val)
    # Not on an exception: a process that fails alone must exit (torchrun then stops the others),
    # not wait at a barrier the others never reach.
    strategy.teardown()
    return result
