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
from trainwire import adversarial, boosting, distributed, gan, generative, gradients, lr, objectives, paradigms, pretraining, stopping
from trainwire.metric_schedule import ScheduledMetrics
from trainwire.checkpoints import LocalCheckpointStore
from trainwire.models import MLP
from trainwire.optim import optimizer_factory
from trainwire.progress import ProgressBar, progress_enabled
from trainwire.sinks import FanOut, JsonlSink, NullSink
from trainwire.sinks.isolation import GuardedFanOut, IsolatedSink, UnavailableSink
from trainwire.sinks.stages import PrefixedSink
from trainwire.cadence import Cadence
from trainwire.nonfinite import make_nonfinite
from trainwire.steps import SupervisedStep
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
                num_workers=node["num_workers"], train_samples=node.get("train_samples"),
                rank=strategy.rank, world_size=strategy.world_size)


def _run_dir(configured: str | None, strategy: distributed.Strategy) -> Path:
    # The CLI always passes Hydra's run directory; a Python caller who set none gets a fresh one,
    # named by rank 0 so that every process of a distributed run writes to the same one.
    return Path(configured) if configured else Path(strategy.broadcast(f"runs/{time.strftime('%Y%m%d-%H%M%S')}"))


def _checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def _wandb_sink(node: dict[str, Any], config: dict[str, Any], run_dir: Path) -> Any:
    from trainwire.sinks.wandb import WandbSink  # imports wandb: only when this sink is chosen

    return _build(WandbSink, {**node, "dir": node["dir"] or str(run_dir)}, config=config)


def _with_lr(factory: Any, lr: float | None) -> Any:
    """``factory`` with its lr replaced (through a param group, so a user's ``_target_`` optimizer works too)."""
    if lr is None:
        return factory
    return lambda params: factory([{"params": list(params), "lr": lr}])


def _gan_step(node: dict[str, Any], trainer: dict[str, Any], optimizer: Any, generator_lr: Any, critic_lr: Any,
              gradient_policy: Any) -> gan.GANStep:
    stage = None
    if node["stage"]:  # the classification stage is the ordinary Trainer, on the GAN's classifier
        settings = TrainerSettings(max_epochs=node["stage_epochs"], device=trainer["device"],
                                   precision=trainer["precision"], nonfinite=trainer["nonfinite"],
                                   max_nonfinite=trainer["max_nonfinite"])
        stage = Trainer(objective=objectives.Classification(), optimizer=optimizer, settings=settings)
    return gan.GANStep(
        generator_optimizer=_with_lr(optimizer, node["generator_lr"]), critic_optimizer=_with_lr(optimizer, node["critic_lr"]),
        generator_lr=generator_lr, critic_lr=critic_lr, gradient_policy=gradient_policy,
        critic_steps=node["critic_steps"], loss=node["loss"], gp_weight=node["gp_weight"],
        stage=stage, trigger=gan.AccuracyTrigger(node["goal"], node["tolerance"]),
    )


def _under(run_dir: Path, path: str) -> Path:
    return run_dir / path  # an absolute path stays as it is


def _tensorboard_sink(node: dict[str, Any], config: dict[str, Any], run_dir: Path) -> Any:
    from trainwire.sinks.tensorboard import TensorBoardSink  # imports tensorboard: only when chosen

    return TensorBoardSink(node["log_dir"] or run_dir / "tensorboard", config_yaml=_yaml(config),
                           flush_secs=node["flush_secs"])


def _mlflow_sink(node: dict[str, Any], config: dict[str, Any], run_dir: Path) -> Any:
    from trainwire.sinks.mlflow import MLflowSink, default_tracking_uri  # imports mlflow: only when chosen

    uri = node["tracking_uri"] or default_tracking_uri(run_dir)
    return MLflowSink(uri, experiment=node["experiment"], run_name=node["run_name"], config=config,
                      tags=node["tags"], artifact_location=None if node["tracking_uri"] else str(run_dir / "mlartifacts"))


_SINKS = {"wandb": _wandb_sink, "tensorboard": _tensorboard_sink, "mlflow": _mlflow_sink}


def _external_sinks(node: dict[str, Any] | None, config: dict[str, Any], run_dir: Path, timeout_s: float) -> Any:
    """One isolated sink per ``sink.<name>`` node; a sink whose library is missing becomes a failed one, not an error."""
    isolated = []
    for name, sub in (node or {}).items():
        try:
            sink = _custom(sub) if "_target_" in sub else _SINKS[sub["type"]](sub, config, run_dir)
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
    # The external sinks (sink=[wandb,tensorboard,mlflow]); whatever fills this slot is isolated (ADR 0010).
    metrics_sink = providers.Factory(_external_sinks, config.sink, config, run_dir, config.sink_timeout_s)
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
    objective = providers.Factory(
        _scheduled,
        _slot(
            config.objective,
            classification=providers.Factory(_build, objectives.Classification, config.objective),
            regression=providers.Factory(_build, objectives.Regression, config.objective),
            masked_reconstruction=providers.Factory(_build, pretraining.MaskedReconstruction, config.objective),
            nll=providers.Factory(_build, generative.NegativeLogLikelihood, config.objective),
            adversarial=providers.Factory(_build, adversarial.adversarial_classification, config.objective),
            gan=providers.Factory(_build, gan.GANEvaluation, config.objective),
        ),
        config.metrics_every,
    )
    model = _slot(
        config.model,
        mlp=providers.Factory(_build, MLP, config.model),
        masked_autoencoder=providers.Factory(_build, pretraining.MaskedAutoencoder, config.model),
        predictor=providers.Factory(_build, pretraining.Predictor.build, config.model),
        gaussian_density=providers.Factory(_build, generative.GaussianDensity, config.model),
        gan=providers.Factory(_build, gan.GAN, config.model),
        lightgbm=providers.Factory(_build, boosting.LightGBMModel, config.model),
    )
    data = _slot(
        config.data,
        digits=providers.Factory(_loaders, datasets.digits, config.data, config.seed, strategy),
        diabetes=providers.Factory(_loaders, datasets.diabetes, config.data, config.seed, strategy),
    )
    hooks = providers.List()
    settings = providers.Factory(_build, TrainerSettings, config.trainer)

    # Everything the loop reports to: the local record (and progress bar) plus the isolated external sinks.
    sink = providers.Factory(
        _staged,
        providers.Factory(
            GuardedFanOut,
            providers.Factory(_local_sinks, run_record, config.progress, config.trainer.max_epochs, config.stopping),
            metrics_sink,
            timeout_s=config.sink_timeout_s,
        ),
        config.stage,
    )

    # What one batch does to the weights: the paradigm's step (ADR 0015).
    step = _slot(
        config.paradigm,
        supervised=providers.Factory(SupervisedStep, objective, optimizer, lr_policy, gradient_policy),
        pretrain=providers.Factory(SupervisedStep, objective, optimizer, lr_policy, gradient_policy),
        # Two lr policies (one per network) from the lr group; the gradient policy applies to each.
        gan=providers.Factory(_gan_step, config.paradigm, config.trainer, optimizer, lr_policy, lr_policy,
                              gradient_policy),
        gbdt=providers.Factory(boosting.GBDTStep),  # one boosting round per epoch (ADR 0020)
    )
    nonfinite = providers.Factory(make_nonfinite, config.trainer.nonfinite, config.trainer.max_nonfinite)
    checkpoint_policy = providers.Factory(Cadence, config.trainer.checkpoint_every, config.trainer.checkpoint_every_n_steps)

    trainer = providers.Factory(
        Trainer,
        objective=objective,
        step=step,
        settings=settings,
        stopping_policy=stopping_policy,
        nonfinite=nonfinite,
        checkpoint_policy=checkpoint_policy,
        sink=sink,
        checkpoints=checkpoint_store,
        strategy=strategy,
        hooks=hooks,
    )
    paradigm = _slot(
        config.paradigm,
        supervised=providers.Factory(paradigms.Supervised, trainer),
        pretrain=providers.Factory(paradigms.Pretrain, trainer, providers.Callable(_under, run_dir, config.paradigm.save_to)),
        gan=providers.Factory(paradigms.Supervised, trainer),  # the loop is the same; the step is the GAN's
        gbdt=providers.Factory(paradigms.Supervised, trainer),  # ... or the boosting rounds'
    )
