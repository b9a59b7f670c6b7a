"""trainwire: a thin PyTorch trainer whose every decision is a swappable strategy.

Importing trainwire imports nothing heavy: each public name (``from trainwire import Trainer``)
imports its module, and torch, when it is first used (PEP 562). So ``trainwire`` on the command
line installs its Ctrl-C handler before torch loads (a second or more), and a Ctrl-C while it
starts is one line, not a traceback from inside ``import torch``. wandb, tensorboard and mlflow
are imported only when their sink is built; Hydra and dependency-injector only by the config and
container.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker and an IDE read; at run time the names come from __getattr__
    from trainwire.checkpointing.parts import Stateful
    from trainwire.checkpointing.store import CheckpointStore, LocalCheckpointStore
    from trainwire.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        NonFiniteError,
        TrainingInterrupted,
    )
    from trainwire.loop.hooks import Hook
    from trainwire.loop.signals import StopToken
    from trainwire.loop.steps import Step, StepContext, StepResult, SupervisedStep
    from trainwire.loop.trainer import FitResult, Trainer, TrainerSettings, TrainState
    from trainwire.policies.cadence import Cadence, CheckpointPolicy
    from trainwire.policies.gradients import (
        GradientPolicy,
        GradStats,
        NoClip,
        NormClipper,
        ValueClipper,
    )
    from trainwire.policies.lr import (
        Constant,
        CosineWarmRestarts,
        LRPolicy,
        ReduceOnPlateau,
        WarmupCosine,
    )
    from trainwire.policies.nonfinite import (
        IgnoreNonFinite,
        NonFinitePolicy,
        RaiseOnNonFinite,
        SkipNonFinite,
    )
    from trainwire.policies.objectives import Classification, Objective, Regression
    from trainwire.policies.stopping import (
        NeverStop,
        PatienceStopper,
        StoppingPolicy,
        TrialPruning,
        Verdict,
    )
    from trainwire.sinks import (
        FanOut,
        GuardedFanOut,
        IsolatedSink,
        JsonlSink,
        MetricsSink,
        NullSink,
    )
    from trainwire.sinks import MLflowSink, TensorBoardSink, WandbSink

# Each public name and the module it is defined in (or re-exported from).
_PUBLIC = {
    "DataError": "trainwire.errors",
    "Stateful": "trainwire.checkpointing.parts",
    "CheckpointStore": "trainwire.checkpointing.store",
    "LocalCheckpointStore": "trainwire.checkpointing.store",
    "CheckpointError": "trainwire.errors",
    "ConfigError": "trainwire.errors",
    "NonFiniteError": "trainwire.errors",
    "TrainingInterrupted": "trainwire.errors",
    "Hook": "trainwire.loop.hooks",
    "StopToken": "trainwire.loop.signals",
    "Step": "trainwire.loop.steps",
    "StepContext": "trainwire.loop.steps",
    "StepResult": "trainwire.loop.steps",
    "SupervisedStep": "trainwire.loop.steps",
    "FitResult": "trainwire.loop.trainer",
    "Trainer": "trainwire.loop.trainer",
    "TrainerSettings": "trainwire.loop.trainer",
    "TrainState": "trainwire.loop.trainer",
    "Cadence": "trainwire.policies.cadence",
    "CheckpointPolicy": "trainwire.policies.cadence",
    "GradientPolicy": "trainwire.policies.gradients",
    "GradStats": "trainwire.policies.gradients",
    "NoClip": "trainwire.policies.gradients",
    "NormClipper": "trainwire.policies.gradients",
    "ValueClipper": "trainwire.policies.gradients",
    "Constant": "trainwire.policies.lr",
    "CosineWarmRestarts": "trainwire.policies.lr",
    "LRPolicy": "trainwire.policies.lr",
    "ReduceOnPlateau": "trainwire.policies.lr",
    "WarmupCosine": "trainwire.policies.lr",
    "IgnoreNonFinite": "trainwire.policies.nonfinite",
    "NonFinitePolicy": "trainwire.policies.nonfinite",
    "RaiseOnNonFinite": "trainwire.policies.nonfinite",
    "SkipNonFinite": "trainwire.policies.nonfinite",
    "Classification": "trainwire.policies.objectives",
    "Objective": "trainwire.policies.objectives",
    "Regression": "trainwire.policies.objectives",
    "NeverStop": "trainwire.policies.stopping",
    "PatienceStopper": "trainwire.policies.stopping",
    "StoppingPolicy": "trainwire.policies.stopping",
    "TrialPruning": "trainwire.policies.stopping",
    "Verdict": "trainwire.policies.stopping",
    "FanOut": "trainwire.sinks",
    "GuardedFanOut": "trainwire.sinks",
    "IsolatedSink": "trainwire.sinks",
    "JsonlSink": "trainwire.sinks",
    "MetricsSink": "trainwire.sinks",
    "NullSink": "trainwire.sinks",
    "WandbSink": "trainwire.sinks",
    "TensorBoardSink": "trainwire.sinks",
    "MLflowSink": "trainwire.sinks",
}

__version__ = "0.1.0"

__all__ = [
    "Cadence", "CheckpointError", "CheckpointPolicy", "CheckpointStore", "Classification", "ConfigError", "Constant", "DataError", "CosineWarmRestarts", "FanOut",
    "FitResult", "GradStats", "GradientPolicy", "GuardedFanOut", "Hook", "IsolatedSink", "JsonlSink", "LRPolicy",
    "IgnoreNonFinite", "LocalCheckpointStore", "MLflowSink", "MetricsSink", "NeverStop", "NonFiniteError",
    "NonFinitePolicy", "NoClip", "NormClipper", "NullSink", "Objective", "PatienceStopper", "RaiseOnNonFinite",
    "ReduceOnPlateau", "Regression", "SkipNonFinite", "Stateful", "Step", "StepContext", "StepResult", "StopToken",
    "StoppingPolicy", "SupervisedStep", "TensorBoardSink",
    "TrainState", "Trainer", "TrainerSettings", "TrainingInterrupted", "TrialPruning", "ValueClipper",
    "Verdict", "WandbSink", "WarmupCosine",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once: later reads are plain attribute reads
        return value
    raise AttributeError(f"module 'trainwire' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
