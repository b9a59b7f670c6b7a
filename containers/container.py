"""The composition root: which strategy fills each slot of the Trainer, chosen by config.

Each slot is a ``Selector`` keyed on its config group's ``type``; a group node with a
``_target_`` instead builds the user's own class through Hydra's ``instantiate``. Tests and
users swap any slot with ``container.<slot>.override(...)``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dependency_injector import containers, providers

from trainwire import data as datasets
from trainwire import distributed, gradients, lr, objectives, stopping
from trainwire.checkpoints import LocalCheckpointStore
from trainwire.models import MLP
from trainwire.optim import optimizer_factory
from trainwire.sinks import FanOut, JsonlSink, NullSink
from trainwire.trainer import Trainer, TrainerSettings


def _choice(node: dict[str, Any]) -> str:
    return "custom" if "_target_" in node else node["type"]


def _custom(node: dict[str, Any]) -> Any:
    from hydra.utils import instantiate

    return instantiate({key: value for key, value in node.items() if key != "type"})


def _build(cls: type, node: dict[str, Any], **extra: Any) -> Any:
    return cls(**{key: value for key, value in node.items() if key != "type"}, **extra)


def _slot(node: providers.Provider, **builtins: providers.Provider) -> providers.Selector:
    return providers.Selector(providers.Callable(_choice, node), custom=providers.Factory(_custom, node), **builtins)


def _loaders(load: Any, node: dict[str, Any], seed: int, strategy: distributed.Strategy) -> datasets.Loaders:
    return load(batch_size=node["batch_size"], val_fraction=node["val_fraction"], seed=seed,
                num_workers=node["num_workers"], rank=strategy.rank, world_size=strategy.world_size)


def _run_dir(configured: str | None, strategy: distributed.Strategy) -> Path:
    # The CLI always passes Hydra's run directory; a Python caller who set none gets a fresh one,
    # named by rank 0 so that every process of a distributed run writes to the same one.
    return Path(configured) if configured else Path(strategy.broadcast(f"runs/{time.strftime('%Y%m%d-%H%M%S')}"))


def _checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def _wandb_sink(node: dict[str, Any], config: dict[str, Any], run_dir: Path) -> Any:
    from trainwire.sinks.wandb import WandbSink  # imports wandb: only when this sink is chosen

    return _build(WandbSink, {**node, "dir": node["dir"] or str(run_dir)}, config=config)


def _yaml(config: dict[str, Any]) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(config))


class TrainerContainer(containers.DeclarativeContainer):
    config = providers.Configuration(strict=True)

    strategy = providers.Singleton(distributed.make_strategy, config.trainer.strategy)
    run_dir = providers.Singleton(_run_dir, config.run_dir, strategy)

    lr_policy = _slot(
        config.lr,
        warmup_cosine=providers.Factory(_build, lr.WarmupCosine, config.lr),
        constant=providers.Factory(lr.Constant),
        cosine_restarts=providers.Factory(_build, lr.CosineWarmRestarts, config.lr),
        plateau=providers.Factory(_build, lr.ReduceOnPlateau, config.lr),
    )
    stopping_policy = _slot(
        config.stopping,
        patience=providers.Factory(_build, stopping.PatienceStopper, config.stopping),
        none=providers.Factory(stopping.NeverStop),
    )
    gradient_policy = _slot(
        config.gradient,
        norm_clip=providers.Factory(_build, gradients.NormClipper, config.gradient),
        value_clip=providers.Factory(_build, gradients.ValueClipper, config.gradient),
        none=providers.Factory(gradients.NoClip),
    )
    metrics_sink = _slot(
        config.sink,
        null=providers.Factory(NullSink),
        wandb=providers.Factory(_wandb_sink, config.sink, config, run_dir),
    )
    run_record = providers.Factory(JsonlSink, run_dir=run_dir, config_yaml=providers.Callable(_yaml, config))
    checkpoint_store = providers.Factory(
        LocalCheckpointStore, directory=providers.Callable(_checkpoint_dir, run_dir),
        keep_last=config.trainer.keep_last, config_yaml=providers.Callable(_yaml, config),
    )
    optimizer = _slot(
        config.optimizer,
        adamw=providers.Factory(_build, optimizer_factory, config.optimizer, type="adamw"),
        adam=providers.Factory(_build, optimizer_factory, config.optimizer, type="adam"),
        sgd=providers.Factory(_build, optimizer_factory, config.optimizer, type="sgd"),
    )
    objective = _slot(
        config.objective,
        classification=providers.Factory(_build, objectives.Classification, config.objective),
        regression=providers.Factory(objectives.Regression),
    )
    model = _slot(config.model, mlp=providers.Factory(_build, MLP, config.model))
    data = _slot(
        config.data,
        digits=providers.Factory(_loaders, datasets.digits, config.data, config.seed, strategy),
        diabetes=providers.Factory(_loaders, datasets.diabetes, config.data, config.seed, strategy),
    )
    hooks = providers.List()
    settings = providers.Factory(_build, TrainerSettings, config.trainer)

    trainer = providers.Factory(
        Trainer,
        objective=objective,
        optimizer=optimizer,
        settings=settings,
        lr_policy=lr_policy,
        stopping_policy=stopping_policy,
        gradient_policy=gradient_policy,
        sink=providers.Factory(FanOut, run_record, metrics_sink),
        checkpoints=checkpoint_store,
        strategy=strategy,
        hooks=hooks,
    )
