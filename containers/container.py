"""The composition root: which strategy fills each slot of the Trainer, chosen by config.

Each slot builds the option its config group's node names (``lr.type: warmup_cosine``) from
``trainwire.registry``, which lists the built-in options and those of installed packages; a
node with a ``_target_`` instead builds the user's own class through Hydra's ``instantiate``.
What an option needs besides its config keys (the seed, the Trainer, the run directory) it
takes from the slot's context, by parameter name. Tests and users swap any slot with
``container.<slot>.override(...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dependency_injector import containers, providers

from trainwire import logs, registry
from trainwire.checkpointing.rundirs import new_run_dir
from trainwire.config import OWN_KEYS
from trainwire.data import as_loaders
from trainwire.errors import ConfigError
from trainwire.loop.settings import gradient_health
from trainwire.loop.trainer import Trainer, TrainerSettings
from trainwire.policies.metric_schedule import ScheduledMetrics
from trainwire.runtime import distributed
from trainwire.sinks import FanOut, JsonlSink, NullSink
from trainwire.sinks.isolation import GuardedFanOut, IsolatedSink, UnavailableSink
from trainwire.sinks.progress import ProgressBar, progress_enabled
from trainwire.sinks.stages import PrefixedSink


def _custom(group: str, node: dict[str, Any], key: str, context: dict[str, Callable[[], Any]]) -> Any:
    """The user's own ``_target_``, built by Hydra's ``instantiate`` with the context values its signature names.

    An optimizer target is built partially (its parameters come inside fit). A target that
    cannot be imported, or that rejects its arguments, is one ConfigError line naming the key.
    """
    import inspect

    from hydra.utils import instantiate

    target = registry.locate(node.get("_target_"), key)
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: it gets only what the node says
        parameters = {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    named = [name for name in OWN_KEYS.get(group, ()) if name not in parameters and not takes_any]
    spec = {name: value for name, value in node.items() if name != "type" and name not in named}
    if group == "optimizer":
        spec.setdefault("_partial_", True)
    supplied = {name: supply() for name, supply in context.items() if name in parameters or takes_any}
    try:
        built = instantiate(spec, **supplied)
    except Exception as error:  # Hydra wraps what the target raised; its cause is the one line worth saying
        cause = error.__cause__ or error
        if isinstance(cause, ConfigError):
            raise cause from error
        raise ConfigError(f"{key}._target_={node['_target_']!r} failed: {type(cause).__name__}: "
                          f"{(str(cause).strip().splitlines() or [''])[0]}") from cause
    port = registry.GROUPS[group].port if group in registry.GROUPS else None
    if port is not None and group != "optimizer":
        expected = registry.resolve(port)
        if not isinstance(built, expected):
            raise ConfigError(f"{key}._target_={node['_target_']!r} built a {type(built).__name__}, which is not a "
                              f"{expected.__module__}.{expected.__qualname__}")
    return built


def _build(group: str, node: dict[str, Any], key: str | None = None, **context: Callable[[], Any]) -> Any:
    if "_target_" in node:
        return _custom(group, node, key or group, context)
    return registry.build(group, node, context, key=key)


def _option(group: str, node: providers.Provider, **context: providers.Provider) -> providers.Factory:
    """The slot of ``group``. Context providers are handed over uncalled: an option calls only those it names."""
    return providers.Factory(_build, group, node, **{name: provider.provider for name, provider in context.items()})


def _itself(provider: Any) -> Any:
    return provider  # a provider handed over as it is, for an option that builds with it (stage_trainer)


def _settings(node: dict[str, Any]) -> TrainerSettings:
    return TrainerSettings(**node)


def _stage_trainer(objective: Any, *, max_epochs: int, settings: TrainerSettings, sink: Any, **parts: Any) -> Trainer:
    """A Trainer for a step's nested fit (the GAN's classification stage): every ``trainer.*`` setting of the
    run but its length, resume and first weights, the run's strategy, hooks and sinks (its metrics under
    ``stage/``), no checkpoints."""
    stage = dataclasses.replace(settings, max_epochs=max_epochs, resume=None, init_from=None)
    return Trainer(objective=objective, settings=stage, logger=_StageLog(logs.get_logger(stage="stage/")),
                   sink=PrefixedSink("stage/", sink, lifecycle=False), **parts)


class _StageLog:
    """A nested stage's logger: its records say ``stage=stage/``; the records that open and close a fit
    (``model``, ``train_end``) are at debug level, as the run around it says them (one ``train_end`` a run)."""

    OWN_RUNS = ("model", "train_end")

    def __init__(self, log: Any) -> None:
        self._log = log

    def info(self, event: str, **fields: Any) -> Any:
        return (self._log.debug if event in self.OWN_RUNS else self._log.info)(event, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def _run_dir(configured: str | None, strategy: distributed.Strategy) -> Path:
    # The CLI always passes Hydra's run directory; a Python caller who set none gets a fresh one,
    # made by rank 0 so that every process of a distributed run writes to the same one.
    return Path(configured) if configured else Path(strategy.broadcast(new_run_dir() if strategy.is_rank0 else None))


def _checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def _external_sinks(node: dict[str, Any] | None, config: dict[str, Any], run_dir: Path, timeout_s: float) -> Any:
    """One isolated sink per ``sink.<name>`` node; a sink whose library is missing becomes a failed one, not an error."""
    context = {"run_dir": lambda: run_dir, "config": lambda: config, "config_yaml": lambda: _yaml(config)}
    isolated = []
    for name, sub in (node or {}).items():
        try:
            sink = _build("sink", sub, f"sink.{name}", **context)
        except Exception as error:  # Hydra's instantiate wraps the ImportError of a user's sink
            missing = error if isinstance(error, ImportError) else error.__cause__
            if not isinstance(missing, ImportError):
                raise
            sink = UnavailableSink(name, missing)
        isolated.append(IsolatedSink(sink, name=name, timeout_s=timeout_s))
    return FanOut(*isolated) if isolated else NullSink()


def _yaml(config: dict[str, Any]) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(config))


def _local_sinks(record: Any, progress: str, max_epochs: int, stopping: dict[str, Any]) -> Any:
    """The run record, and the progress bar when it is on: local, cheap, called directly."""
    if not progress_enabled(progress):
        return record
    return FanOut(record, ProgressBar(max_epochs, monitor=stopping.get("monitor") or "val/loss"))


def _staged(sink: Any, stage: str | None) -> Any:
    return PrefixedSink(f"{stage.rstrip('/')}/", sink) if stage else sink


def _scheduled(objective: Any, every: dict[str, int] | None) -> Any:
    return ScheduledMetrics(objective, every) if every else objective


class TrainerContainer(containers.DeclarativeContainer):
    config = providers.Configuration(strict=True)

    strategy = providers.Singleton(_build, "strategy", config.strategy)
    run_dir = providers.Singleton(_run_dir, config.run_dir, strategy)

    lr_policy = _option("lr", config.lr)
    stopping_policy = _option("stopping", config.stopping)
    gradient_policy = _option("gradient", config.gradient)
    optimizer = _option("optimizer", config.optimizer)
    objective = providers.Factory(_scheduled, _option("objective", config.objective), config.metrics_every)
    model = _option("model", config.model)
    # Whatever the data option returns becomes Loaders by the data contract (trainwire.data.as_loaders).
    data = providers.Factory(
        as_loaders,
        _option("data", config.data, seed=config.seed, rank=strategy.provided.rank,
                world_size=strategy.provided.world_size),
        config.data, seed=config.seed, rank=strategy.provided.rank, world_size=strategy.provided.world_size)
    # The external sinks (sink=[wandb,tensorboard,mlflow]); whatever fills this slot is isolated (ADR 0010).
    metrics_sink = providers.Factory(_external_sinks, config.sink, config, run_dir, config.sink_timeout_s)
    run_record = providers.Factory(JsonlSink, run_dir=run_dir, config_yaml=providers.Callable(_yaml, config))
    checkpoint_store = _option("store", config.store, directory=providers.Callable(_checkpoint_dir, run_dir),
                               config_yaml=providers.Callable(_yaml, config))
    hooks = providers.List()
    # The data's test split, scored once with the best weights when training finishes (ADR 0034): ``run``
    # hands over the one it loaded, so the data are loaded once.
    test_data = providers.Object(None)
    settings = providers.Factory(_settings, config.trainer)

    # Everything the loop reports to: the local record (and progress bar) plus the isolated external sinks.
    # One per run: a step's nested stage reports to it too.
    sink = providers.Singleton(
        _staged,
        providers.Factory(
            GuardedFanOut,
            providers.Factory(_local_sinks, run_record, config.progress, config.trainer.max_epochs, config.stopping),
            metrics_sink,
            timeout_s=config.sink_timeout_s,
        ),
        config.stage,
    )

    nonfinite = _option("nonfinite", config.nonfinite)
    checkpoint_policy = _option("checkpoint", config.checkpoint)
    health = providers.Factory(gradient_health, settings)

    # A Trainer for a step's nested fit, built when the step first runs it (ADR 0025).
    stage_trainer = providers.Factory(
        _stage_trainer, settings=settings, sink=sink, optimizer=optimizer, gradient_policy=gradient_policy,
        nonfinite=nonfinite, health=health, strategy=strategy, hooks=hooks,
    )
    # What one batch does to the weights (ADR 0015): a step takes what it names of these.
    step = _option(
        "step", config.step, objective=objective, optimizer=optimizer, lr_policy=lr_policy,
        lr_policy_factory=providers.Callable(_itself, lr_policy.provider), gradient_policy=gradient_policy,
        stage_trainer=providers.Callable(_itself, stage_trainer.provider),
    )

    trainer = providers.Factory(
        Trainer,
        objective=objective,
        step=step,
        settings=settings,
        stopping_policy=stopping_policy,
        nonfinite=nonfinite,
        checkpoint_policy=checkpoint_policy,
        health=health,
        sink=sink,
        checkpoints=checkpoint_store,
        strategy=strategy,
        hooks=hooks,
        test_data=test_data,
    )
    # What happens around the loop: Supervised fits; Pretrain also saves the encoder under run_dir.
    paradigm = _option("paradigm", config.paradigm, trainer=trainer, run_dir=run_dir)
