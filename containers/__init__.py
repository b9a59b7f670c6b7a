"""The composition root (installed as ``trainwire.containers``): config in, ready Trainer out."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from dependency_injector import providers
from dependency_injector.containers import Container
from omegaconf import DictConfig
from structlog.contextvars import bound_contextvars

from trainwire import logs, registry
from trainwire.checkpointing import runfolder
from trainwire.config import (
    GROUPS,
    MULTI_SELECT,
    PROGRESS,
    LogConfig,
    given_keys_only,
    resolved,
)
from trainwire.errors import ConfigError
from trainwire.loop.signals import StopToken
from trainwire.loop.trainer import FitResult, TrainerSettings
from trainwire.runtime.process import SEEDING, run_scope

from .container import TrainerContainer, _yaml

__all__ = ["TrainerContainer", "build_container", "lr_preview", "run"]


def _keys(plain: dict[str, Any]) -> None:
    """Checks each node's keys against its schema, for keys that ``+key=value`` forced past Hydra's struct check."""
    for key, schema in (("trainer", TrainerSettings), ("log", LogConfig)):
        fields = [f.name for f in dataclasses.fields(schema)]
        for name in plain.get(key, {}):
            if name not in fields:
                raise registry.unknown_key(f"{key}.{name}", fields, key)
    for group in GROUPS:
        node = plain[group]
        for key, sub in (node.items() if group in MULTI_SELECT else [(None, node)]):
            name = f"{group}.{key}" if key else group
            if "_target_" in sub:
                registry.locate(sub["_target_"], name)  # imported now: a typo or a missing module fails before any work
            else:
                registry.check_keys(group, sub, name)


MAX_SEED = 2**62


def _monitors(plain: dict[str, Any], objective: Any) -> None:
    """A monitored ``val/`` metric must be one the objective reports (when it says which), else no epoch would tell."""
    import difflib

    from trainwire.policies.metric_schedule import ScheduledMetrics, stated_metrics

    names = stated_metrics(objective.objective if isinstance(objective, ScheduledMetrics) else objective)
    for group in ("stopping", "lr"):
        monitor = plain[group].get("monitor")
        if not names or not isinstance(monitor, str) or not monitor.startswith("val/") or monitor[4:] in names:
            continue
        nearest = difflib.get_close_matches(monitor[4:], names, n=1)
        hint = f" (did you mean {group}.monitor=val/{nearest[0]}?)" if nearest else ""
        raise ConfigError(f"{group}.monitor={monitor!r} is not a metric of objective={plain['objective'].get('type', 'custom')}"
                          f"{hint}; it reports: {', '.join('val/' + name for name in names)}")


def _nothing(**kwargs: Any) -> None:
    return None


def build_container(
    cfg: DictConfig | dict[str, Any], container_class: type[TrainerContainer] = TrainerContainer
) -> TrainerContainer:
    """Loads a composed config into a new container and checks every slot it chose.

    ``container_class`` may be a subclass of ``TrainerContainer`` that replaces some providers.
    Raises ConfigError (one line, naming the key and the value) before any work starts.
    """
    plain = given_keys_only(resolved(cfg) if isinstance(cfg, DictConfig) else dict(cfg))  # a _target_ replaces its slot
    plain.setdefault("sink", {})  # sink=[] removes the node
    for group in GROUPS:
        node = plain.get(group)
        if not isinstance(node, dict):
            raise ConfigError(f"{group} is missing from the config")
        for key, sub in (node.items() if group in MULTI_SELECT else [(None, node)]):
            name = f"{group}.{key}" if key else group
            if not isinstance(sub, dict):
                raise ConfigError(f"{name}={sub!r} must be a config node")
    seed = plain.get("seed", 0)
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:  # torch's generators take a signed 64-bit seed (+ epoch)
        raise ConfigError(f"seed={seed!r} must be an integer in [0, 2**62]")
    if not plain.get("sink_timeout_s", 1) > 0:
        raise ConfigError(f"sink_timeout_s={plain['sink_timeout_s']!r} must be > 0")
    every = plain.get("metrics_every") or {}
    for group in ("stopping", "lr"):
        monitor = plain[group].get("monitor") or ""
        if monitor.startswith("val/") and every.get(monitor[4:], 1) != 1:
            raise ConfigError(f"metrics_every.{monitor[4:]}={every[monitor[4:]]!r}: {group}.monitor={monitor!r} "
                              "needs it every epoch")
    for group in ("stopping", "lr"):
        monitor = plain[group].get("monitor") or ""
        if monitor.startswith("val/") and plain["data"].get("val_fraction", None) == 0:
            raise ConfigError(f"data.val_fraction=0 leaves no validation data, and {group}.monitor={monitor!r} needs it "
                              f"(set {group}.monitor to a train/ metric{', or stopping=none' if group == 'stopping' else ''})")
    if plain.get("progress", "auto") not in PROGRESS:
        raise ConfigError(f"progress={plain['progress']!r} is not one of {', '.join(PROGRESS)}")
    _keys(plain)  # also checks that each node's type is an option of its group
    container = container_class()
    container.config.from_dict(plain)
    # Build each cheap policy once now, so a bad value fails here rather than mid-run.
    for slot in (container.lr_policy, container.stopping_policy, container.gradient_policy,
                 container.optimizer, container.objective, container.settings, container.nonfinite,
                 container.checkpoint_policy, container.health):
        slot()
    _monitors(plain, container.objective())
    container.step().check(container.settings(), container.strategy())  # a setting the step cannot honour
    # The paradigm too, with neither a trainer nor a run folder built.
    with container.trainer.override(providers.Callable(_nothing)), container.run_dir.override(providers.Object(None)):
        container.paradigm()
    return container


def run(cfg: DictConfig | dict[str, Any] | Container, *, stop: StopToken | None = None) -> FitResult:
    """Trains as the CLI does: builds the container (unless given one), the data and the model, then fits.

    ``stop`` is a ``StopToken``: ``stop.stop()`` from any thread ends the run at its next optimizer
    step with ``last.pt`` written there (``TrainingInterrupted``; ``trainer.resume=auto`` continues).

    The model is built from ``seed``; the caller's random states (torch's, python's, NumPy's),
    environment and warnings filters are as they were when it returns, also when several runs go
    on at once in threads (``trainwire.runtime.process.run_scope``). Two runs started together in two
    threads produce what each produces alone, for data whose loaders have generators of their own
    (the bundled ones do) and models whose training draws no numbers from the global generator
    (dropout does, and so moves another run's initial weights: for exactness, one process per run) and with
    one intra-op thread (``torch.set_num_threads(1)``: two runs at once may otherwise get OpenMP
    teams of other sizes than one alone, and sum in another order). Its
    log records carry ``run_id``, the run directory's name.
    With ``trainer.strategy`` ddp or fsdp (under torchrun) it joins the process group first,
    and leaves it after a barrier when the run ends normally; a group it found is left open.
    """
    container = cfg if isinstance(cfg, Container) else build_container(cfg)
    strategy = container.strategy()
    strategy.start()  # before the data: the loaders are sharded by rank
    # One run in a folder (ADR 0023), claimed here only (ADR 0027): rank 0 locks it, refuses a fresh run over
    # another's and a resume under another config, before anything is written.
    lock = runfolder.claim(container.run_dir(), container.config.trainer.resume(),
                           _yaml(container.config())) if strategy.is_rank0 else None
    log = logs.get_logger()
    try:
        with run_scope(), bound_contextvars(run_id=container.run_dir().name):
            log.info("run_folder", run_dir=str(container.run_dir()))  # where the record goes: said first ...
            loaders = container.data()  # the bundled loaders draw from generators of their own
            container.test_data.override(providers.Object(loaders.test))
            paradigm = container.paradigm()  # the one loop's Trainer with the paradigm's step (trainwire.paradigms.base)
            with SEEDING:  # the initial weights, drawn from the global generator by this run alone
                torch.manual_seed(container.config.seed())
                model = container.model()
            try:
                result = paradigm.run(model, loaders.train, loaders.val, stop=stop)
            finally:
                log.info("run_end", run_dir=str(container.run_dir()))  # ... and last, however the run ended
    finally:
        if lock is not None:
            lock.release()  # the checkpoint store holds it on until it is closed or dropped
    # Not on an exception: a process that fails alone must exit (torchrun then stops the others),
    # not wait at a barrier the others never reach.
    strategy.teardown()
    return result


def lr_preview(cfg: DictConfig | dict[str, Any] | Container) -> tuple[list[float], int]:
    """The lr of every optimizer step the config would take, and the steps in an epoch; nothing is trained.

    The data are loaded only to count batches (the bundled sets load in milliseconds).
    """
    from trainwire.policies.lr import preview, steps_per_epoch

    container = cfg if isinstance(cfg, Container) else build_container(cfg)
    settings = container.settings()
    per_epoch = steps_per_epoch(len(container.data().train), settings.accumulate_steps)
    lrs = preview(container.lr_policy(), lr=container.config.optimizer().get("lr", 1.0), steps_per_epoch=per_epoch,
                  max_epochs=settings.max_epochs)
    return lrs, per_epoch
