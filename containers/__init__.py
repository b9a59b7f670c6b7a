"""The composition root (installed as ``trainwire.containers``): config in, ready Trainer out."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trainwire.config import GROUPS, SCHEMAS
from trainwire.errors import ConfigError
from trainwire.trainer import FitResult

from .container import TrainerContainer

__all__ = ["TrainerContainer", "build_container", "run"]


def build_container(cfg: DictConfig | dict[str, Any]) -> TrainerContainer:
    """Loads a composed config into a new container and checks every slot it chose.

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
    container = TrainerContainer()
    container.config.from_dict(plain)
    # Build each cheap policy once now, so a bad value fails here rather than mid-run.
    for slot in (container.lr_policy, container.stopping_policy, container.gradient_policy,
                 container.optimizer, container.objective, container.settings):
        slot()
    return container


def run(cfg: DictConfig | dict[str, Any] | TrainerContainer) -> FitResult:
    """Trains as the CLI does: builds the container (unless given one), the data and the model, then fits.

    The run is seeded with ``seed`` inside a forked RNG, so the caller's random state is untouched.
    """
    container = cfg if isinstance(cfg, TrainerContainer) else build_container(cfg)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(container.config.seed())
        trainer = container.trainer()
        loaders = container.data()
        model = container.model()
        return trainer.fit(model, loaders.train, loaders.val)
